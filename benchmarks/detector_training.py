"""Training a YOLO-style detector on the digits detection set (edgeprune.calibration.digits_detection).

Used by ``benchmarks/detectors.py --train``. Imports only torch, NumPy and two edgeprune modules
(the set's generator and edgeprune.train.detection's loss), so it runs on a GPU machine that has
no ONNX tooling: every image is letterboxed once into a ``size`` x ``size`` canvas (grey 114 around
it, pixels / 255: the model's input is what ``edgeprune``'s default preprocessing gives) and the
whole set stays on the device; each batch is augmented there (the image moved to a random place
at a random scale and aspect, or stretched over the canvas as a plain resize would; colour
channels shuffled and scaled), so a model trained here works whether its user letterboxes or
resizes. AdamW, linear warm-up then cosine, an exponential moving average of the weights (the
average is what is saved), bfloat16 autocast on CUDA.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.calibration.digits_detection import DetectionSet
from edgeprune.train.detection import DetectionLoss, box_iou, pad_targets

PAD = 114


@dataclass(frozen=True)
class Letterboxed:
    """A set on one canvas size: ``pixels`` N x 3 x S x S uint8, ``frames`` N x 4 (where each
    image lies, x1 y1 x2 y2), ``targets`` N x M x 5 (class, box in canvas pixels; class -1: none)."""

    pixels: torch.Tensor
    frames: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.pixels)

    def to(self, device: str | torch.device) -> Letterboxed:
        return Letterboxed(self.pixels.to(device), self.frames.to(device), self.targets.to(device))


def letterbox(data: DetectionSet, size: int) -> Letterboxed:
    """Each image scaled to fit ``size`` x ``size`` (aspect kept), centred on grey."""
    pixels = torch.full((len(data), 3, size, size), PAD, dtype=torch.uint8)
    frames = torch.zeros(len(data), 4)
    boxes = []
    for i, (image, box) in enumerate(zip(data.images, data.boxes)):
        h, w = image.shape[:2]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), (nh, nw), mode="bilinear",
                                antialias=True, align_corners=False)
        pixels[i, :, top:top + nh, left:left + nw] = resized[0].round().clamp(0, 255).to(torch.uint8)
        frames[i] = torch.tensor([left, top, left + nw, top + nh], dtype=torch.float32)
        gain = torch.tensor([nw / w, nh / h, nw / w, nh / h])
        boxes.append(torch.from_numpy(box) * gain + torch.tensor([left, top, left, top], dtype=torch.float32))
    return Letterboxed(pixels, frames, pad_targets(boxes, [torch.from_numpy(c) for c in data.classes]))


def inputs(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255


def _placements(frames: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Where each image goes (x1 y1 x2 y2 on the canvas): a quarter as letterboxed, a quarter
    stretched over the canvas, half at 55-100 % of its letterboxed size, aspect within +-25 %."""
    n, device = len(frames), frames.device
    u = lambda: torch.rand(n, generator=generator, device=device)  # noqa: E731
    mode, scale, aspect = u(), 0.55 + 0.45 * u(), torch.exp((u() - 0.5) * 0.5)
    w, h = frames[:, 2] - frames[:, 0], frames[:, 3] - frames[:, 1]
    tw, th = (w * scale * aspect).clamp(max=size), (h * scale / aspect).clamp(max=size)
    x1, y1 = u() * (size - tw), u() * (size - th)
    moved = torch.stack((x1, y1, x1 + tw, y1 + th), 1)
    whole = torch.tensor([0.0, 0.0, size, size], device=device).expand(n, 4)
    out = torch.where((mode < 0.25)[:, None], frames, moved)
    return torch.where(((mode >= 0.25) & (mode < 0.5))[:, None], whole, out)


def augment(batch: Letterboxed, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs and targets of a randomly moved, scaled and recoloured copy of ``batch``."""
    size = batch.pixels.shape[-1]
    frames, placed = batch.frames, _placements(batch.frames, size, generator)
    gain = (frames[:, 2:] - frames[:, :2]) / (placed[:, 2:] - placed[:, :2])   # source pixels per output pixel
    shift = frames[:, :2] - placed[:, :2] * gain
    theta = torch.zeros(len(frames), 2, 3, device=frames.device)
    theta[:, 0, 0], theta[:, 1, 1] = gain[:, 0], gain[:, 1]
    theta[:, :, 2] = gain - 1 + 2 * shift / size  # output -> input, both in grid_sample's [-1, 1]
    grid = F.affine_grid(theta, list(batch.pixels.shape), align_corners=False)
    grey = PAD / 255
    x = F.grid_sample(inputs(batch.pixels) - grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + grey
    n = len(x)
    order = torch.argsort(torch.rand(n, 3, generator=generator, device=x.device), 1)
    keep = (torch.rand(n, generator=generator, device=x.device) < 0.5)[:, None].expand(n, 3)
    order = torch.where(keep, torch.arange(3, device=x.device).expand(n, 3), order)
    x = x.gather(1, order[:, :, None, None].expand_as(x))
    x = (x * (0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=generator, device=x.device))).clamp(0, 1)
    targets = batch.targets.clone()
    scale = (1 / gain).repeat(1, 2)[:, None]
    origin = placed[:, :2].repeat(1, 2)[:, None] - frames[:, :2].repeat(1, 2)[:, None] * scale
    targets[..., 1:] = torch.where(targets[..., :1] >= 0, targets[..., 1:] * scale + origin, targets[..., 1:])
    return x, targets


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    ema_decay: float = 0.998
    seed: int = 0
    device: str = "cpu"


class WeightAverage:
    """An exponential moving average of a model's weights and buffers; its decay rises from 0
    (a copy) towards ``decay`` over the first tenth of training."""

    def __init__(self, model: nn.Module, decay: float, ramp_steps: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.ramp, self.steps = decay, max(ramp_steps, 1.0), 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = self.decay * (1 - math.exp(-self.steps / self.ramp))
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        mine = [a for a, _ in pairs if a.dtype.is_floating_point]
        theirs = [b.detach() for a, b in pairs if a.dtype.is_floating_point]
        torch._foreach_lerp_(mine, theirs, 1 - d)  # one fused update, not one per tensor
        for a, b in pairs:
            if not a.dtype.is_floating_point:
                a.copy_(b)


def init_detect_biases(detect: nn.Module, size: int) -> None:
    """Class logits start at about 5 objects per image spread over each level's cells, box
    logits level: the usual start of YOLO heads, so early class loss is not swamped by negatives."""
    for box, cls, stride in zip(detect.cv2, detect.cv3, detect.stride.tolist()):
        box[-1].bias.data.fill_(1.0)
        cls[-1].bias.data.fill_(math.log(5 / detect.nc / (size / stride) ** 2))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.999))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


@torch.no_grad()
def recall(model: nn.Module, data: Letterboxed, batch_size: int = 64, threshold: float = 0.25) -> dict[str, float]:
    """A quick progress check, not mAP: the fraction of true boxes that some prediction of the
    right class with score >= ``threshold`` overlaps with IoU >= 0.5, and predictions above the
    threshold per image (no NMS: many per object is normal)."""
    model.eval()
    found = total = predicted = 0
    for start in range(0, len(data), batch_size):
        out = model(inputs(data.pixels[start:start + batch_size]))[0].float()       # B, 4 + nc, A
        xywh, scores = out[:, :4].transpose(1, 2), out[:, 4:].transpose(1, 2)
        boxes = torch.cat((xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2), -1)
        targets = data.targets[start:start + batch_size]
        valid = targets[..., 0] >= 0
        labels = targets[..., 0].long().clamp(min=0)
        iou = box_iou(targets[..., None, 1:], boxes[:, None])                      # B M A
        score = scores.gather(2, labels[:, None, :].expand(-1, scores.shape[1], -1)).transpose(1, 2)
        hit = ((iou >= 0.5) & (score >= threshold)).any(-1) & valid
        found += int(hit.sum())
        total += int(valid.sum())
        predicted += int((scores.amax(-1) >= threshold).sum())
    return {"recall50": found / max(total, 1), "predictions_per_image": predicted / max(len(data), 1)}


def train(model: nn.Module, data: Letterboxed, val: Letterboxed | None, config: TrainConfig,
          log: Callable[[str], None] = print, on_epoch: Callable[[nn.Module, list[dict]], None] | None = None,
          seconds: float | None = None) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` (its Detect head last in ``model.model``) on ``data``; returns the weight
    average and the per-epoch history (mean loss and its terms, val recall, seconds).
    ``on_epoch(average, history)`` after each epoch (e.g. save it: a run cut short keeps its
    last epoch); with ``seconds``, training stops early when another epoch would not fit."""
    began = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    size = data.pixels.shape[-1]
    model.to(device).train()
    data = data.to(device)
    val = val.to(device) if val is not None else None
    steps_per_epoch = max(1, len(data) // config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer, loss_fn = _optimizer(model, config), DetectionLoss()
    average = WeightAverage(model, config.ema_decay, total / 10)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    history, step = [], 0
    for epoch in range(1, config.epochs + 1):
        start, sums = time.perf_counter(), {}
        order = torch.randperm(len(data), generator=generator, device=device)
        for i in range(steps_per_epoch):
            index = order[i * config.batch_size:(i + 1) * config.batch_size]
            x, targets = augment(Letterboxed(data.pixels[index], data.frames[index], data.targets[index]), generator)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, total, int(config.warmup_epochs * steps_per_epoch))
            with autocast:
                maps = model(x)
            loss, parts = loss_fn(maps, targets, (size, size))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            average.update(model)
            step += 1
            for name, value in {"loss": loss.item(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value / steps_per_epoch
        record = {"epoch": epoch, **sums, "seconds": time.perf_counter() - start}
        if val is not None:
            record.update(recall(average.model, val))
        history.append(record)
        log("epoch %d/%d  " % (epoch, config.epochs) + "  ".join(
            f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
        if on_epoch is not None:
            on_epoch(average.model, history)
        elapsed = time.perf_counter() - began
        if seconds is not None and epoch < config.epochs and elapsed * (epoch + 1) / epoch > seconds:
            log(f"stopped after epoch {epoch}: another would pass the {seconds:.0f} s limit")
            break
    return average.model.cpu().eval(), history


def summary(config: TrainConfig, history: list[dict]) -> dict:
    return {"config": asdict(config), "history": history, "seconds": sum(r["seconds"] for r in history),
            "final": history[-1] if history else None}


__all__ = ["Letterboxed", "TrainConfig", "WeightAverage", "augment", "init_detect_biases", "inputs", "letterbox", "recall",
           "summary", "train"]
