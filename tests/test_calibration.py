"""Data sources: CIFAR (real on-disk format), folders, npz, mnist5k; splits, loaders, ORT reader."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from edgeprune.calibration import (
    OrtCalibrationReader,
    Preprocess,
    clear_cache,
    data_statistics,
    has_test_split,
    list_sources,
    load_data,
    make_loader,
    sample,
)
from edgeprune.errors import EdgepruneError

PER_BATCH = 12


def _cifar_dict(n: int, seed: int, label_key: bytes, classes: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _dump(obj: object, path: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    """A CIFAR-10 copy in the real format: 5 training batches and a test batch, inside a parent."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _dump(_cifar_dict(PER_BATCH, i, b"labels", 10), folder / f"data_batch_{i}")
    _dump(_cifar_dict(PER_BATCH, 99, b"labels", 10), folder / "test_batch")
    clear_cache()
    return tmp_path


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _dump(_cifar_dict(40, 1, b"fine_labels", 100) | {b"coarse_labels": [0] * 40}, folder / "train")
    _dump(_cifar_dict(10, 2, b"fine_labels", 100) | {b"coarse_labels": [0] * 10}, folder / "test")
    clear_cache()
    return folder


# --- CIFAR --------------------------------------------------------------------------------------

def test_cifar10_reads_the_python_format(cifar10_root: Path) -> None:
    train = load_data(f"cifar10:{cifar10_root}", split="train", val_fraction=0.2)
    val = load_data(f"cifar10:{cifar10_root}", split="val", val_fraction=0.2)
    test = load_data(f"cifar10:{cifar10_root}", split="test")
    assert (len(train), len(val), len(test)) == (48, 12, PER_BATCH)
    assert train.x.shape[1:] == (3, 32, 32) and train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.num_classes <= 10 and train.preprocess == Preprocess()
    first = _cifar_dict(PER_BATCH, 1, b"labels", 10)
    cifar = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    everything = load_data(f"cifar10:{cifar10_root}", split="all", preprocess=cifar)
    pixels = everything.x[0] * np.array(cifar.std)[:, None, None] + np.array(cifar.mean)[:, None, None]
    np.testing.assert_allclose(pixels, first[b"data"][0].reshape(3, 32, 32) / 255.0, atol=1e-5)
    assert everything.y[:PER_BATCH].tolist() == first[b"labels"]


def test_cifar10_accepts_the_batches_folder_itself(cifar10_root: Path) -> None:
    direct = load_data(f"cifar10:{cifar10_root / 'cifar-10-batches-py'}", split="test")
    assert len(direct) == PER_BATCH and has_test_split(f"cifar10:{cifar10_root}")


def test_cifar100_uses_fine_labels(cifar100_dir: Path) -> None:
    test = load_data(f"cifar100:{cifar100_dir}", split="test")
    assert test.y.tolist() == _cifar_dict(10, 2, b"fine_labels", 100)[b"fine_labels"]
    assert len(load_data(f"cifar100:{cifar100_dir.parent}", split="all")) == 50


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_refuses_code(cifar10_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_3"
    _dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Exploit(marker)]}, batch)
    with pytest.raises(EdgepruneError, match="refusing to load"):
        load_data(f"cifar10:{cifar10_root}")
    assert not marker.exists()


@pytest.mark.parametrize("content, match", [
    (b"\x80\x02}q\x00(X\x04\x00", "not a readable CIFAR pickle"),
    (pickle.dumps([1, 2, 3], protocol=2), "expected a pickled dict"),
    (pickle.dumps({b"labels": [1]}, protocol=2), "no 'data' entry"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2), "uint8 N x 3072"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2), "1 labels for 2 images"),
])
def test_cifar_bad_batches_give_clear_errors(cifar10_root: Path, content: bytes, match: str) -> None:
    (cifar10_root / "cifar-10-batches-py" / "data_batch_2").write_bytes(content)
    with pytest.raises(EdgepruneError, match=match):
        load_data(f"cifar10:{cifar10_root}")


def test_cifar_missing_files(tmp_path: Path) -> None:
    with pytest.raises(EdgepruneError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(EdgepruneError, match="holds no cifar10 data"):
        load_data(f"cifar10:{tmp_path}")


# --- folders of images --------------------------------------------------------------------------

def _write_pngs(root: Path, classes: dict[str, tuple[int, int, int]], count: int, size: int = 8) -> None:
    from PIL import Image

    for name, colour in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (size, size), colour).save(root / name / f"{i}.png")


def test_folder_reads_one_class_per_subfolder(tmp_path: Path) -> None:
    _write_pngs(tmp_path, {"cat": (255, 0, 0), "dog": (0, 0, 255)}, 3)
    data = load_data(f"folder:{tmp_path}", split="all")
    assert data.x.shape == (6, 3, 8, 8) and data.y.tolist() == [0, 0, 0, 1, 1, 1] and data.num_classes == 2
    assert data.x[0, 0].mean() > data.x[0, 2].mean()  # cat is red


def test_folder_grey_images_resize_and_test_split(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", {"a": (10, 10, 10), "b": (200, 200, 200)}, 4, size=10)
    _write_pngs(tmp_path / "test", {"a": (10, 10, 10), "b": (200, 200, 200)}, 2, size=10)
    test = load_data(f"folder:{tmp_path}", split="test", size=6)
    assert test.x.shape == (4, 1, 6, 6) and test.y.tolist() == [0, 0, 1, 1]


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgepruneError, match="no images found"):
        load_data(f"folder:{tmp_path / 'empty'}")
    _write_pngs(tmp_path / "mixed", {"a": (1, 2, 3)}, 1, size=8)
    _write_pngs(tmp_path / "mixed2", {"a": (1, 2, 3)}, 1, size=9)
    (tmp_path / "mixed2" / "a" / "0.png").rename(tmp_path / "mixed" / "a" / "1.png")
    with pytest.raises(EdgepruneError, match="different sizes"):
        load_data(f"folder:{tmp_path / 'mixed'}")
    (tmp_path / "mixed" / "a" / "2.png").write_bytes(b"not a png")
    with pytest.raises(EdgepruneError, match="cannot read image"):
        load_data(f"folder:{tmp_path / 'mixed'}", size=8)


# --- npz ----------------------------------------------------------------------------------------

def test_npz_uint8_and_float_with_and_without_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u8.npz", x=rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), y=np.arange(20) % 4)
    np.savez(tmp_path / "f.npz", x=rng.random((20, 1, 8, 8)).astype(np.float32))
    labelled = load_data(str(tmp_path / "u8.npz"), split="all")
    unlabelled = load_data(str(tmp_path / "f.npz"), split="train", val_fraction=0.25)
    assert labelled.num_classes == 4 and labelled.y.tolist() == (np.arange(20) % 4).tolist()
    assert labelled.preprocess is not None and 0 <= labelled.x.min() and labelled.x.max() <= 1  # pixels / 255
    assert len(unlabelled) == 15 and unlabelled.y is None and unlabelled.num_classes == 0
    assert unlabelled.preprocess is None  # float arrays are model inputs, used as given


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((4, 8, 8), np.uint8)}, "must be 4-D"),
    ({"x": np.zeros((4, 1, 8, 8), np.uint8), "y": np.zeros(3)}, "3 labels for 4 images"),
    ({"x": np.zeros((4, 8, 8, 3), np.uint8)}, "channels-last"),
    ({"images": np.zeros((4, 1, 8, 8), np.uint8)}, "no array 'x'"),
    ({"x": np.zeros((0, 1, 8, 8), np.uint8)}, "holds no images"),
    ({"x": np.full((4, 1, 8, 8), 200, np.int64)}, r"'x' is int64 \(values 200 to 200\); store pixels as uint8"),
    ({"x": np.zeros((4, 1, 8, 8), np.bool_)}, "'x' is bool; store pixels as uint8 .* or the model's inputs as float32"),
])
def test_npz_shape_errors(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EdgepruneError, match=match):
        load_data(str(tmp_path / "bad.npz"))


def test_npz_unreadable_and_missing(tmp_path: Path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(EdgepruneError, match="cannot read"):
        load_data(str(tmp_path / "broken.npz"))
    with pytest.raises(EdgepruneError, match="not found"):
        load_data(str(tmp_path / "missing.npz"))


# --- mnist5k, splits, conversion ----------------------------------------------------------------

def test_mnist5k_is_real_and_split_deterministically() -> None:
    train, val = load_data("mnist5k", split="train"), load_data("mnist5k", split="val")
    assert (len(train), len(val), train.x.shape[1:]) == (4500, 500, (1, 32, 32))
    assert sorted(set(val.y.tolist())) == list(range(10))
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0  # pixels / 255 unless told otherwise
    again = load_data("mnist5k", split="val")
    np.testing.assert_array_equal(val.x, again.x)
    other = load_data("mnist5k", split="val", seed=1)
    assert not np.array_equal(val.y, other.y)
    seen = {row.tobytes() for row in train.x[:, :, 2:30, 2:30]}
    assert sum(row.tobytes() in seen for row in val.x[:, :, 2:30, 2:30]) <= 2  # MNIST has rare duplicates


def test_no_test_split_says_use_val() -> None:
    with pytest.raises(EdgepruneError, match="no test split; use split 'val'"):
        load_data("mnist5k", split="test")


def test_channels_and_size_conversion(cifar10_root: Path) -> None:
    rgb = load_data("mnist5k", split="val", channels=3, size=(24, 20), limit=10)
    assert rgb.x.shape == (10, 3, 24, 20)
    np.testing.assert_array_equal(rgb.x[:, 0], rgb.x[:, 2])
    grey = load_data(f"cifar10:{cifar10_root}", split="test", channels=1)
    assert grey.x.shape == (PER_BATCH, 1, 32, 32)
    with pytest.raises(EdgepruneError, match="cannot convert 3-channel"):
        load_data(f"cifar10:{cifar10_root}", channels=2)


def test_limit_and_sample_are_deterministic_subsets() -> None:
    val = load_data("mnist5k", split="val")
    a, b = sample(val, 64, seed=3), sample(val, 64, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    assert len(sample(val, 10_000)) == 500 and not np.array_equal(a.y, sample(val, 64, seed=4).y)
    limited = load_data("mnist5k", split="val", limit=64)
    rows = {row.tobytes() for row in val.x}
    assert len(limited) == 64 and all(row.tobytes() in rows for row in limited.x)


def test_unknown_source_lists_the_kinds() -> None:
    with pytest.raises(EdgepruneError, match="known kinds: cifar10:DIR") as err:
        load_data("imagenet:/data")
    assert "mnist5k" in str(err.value) and len(list_sources()) >= 5
    with pytest.raises(EdgepruneError, match="unknown split"):
        load_data("mnist5k", split="holdout")


# --- loaders and the onnxruntime reader ---------------------------------------------------------

def test_make_loader_batches_and_augments_deterministically() -> None:
    val = load_data("mnist5k", split="val", limit=100)
    plain = [y for _, y in make_loader(val, 32, shuffle=False)]
    assert [len(y) for y in plain] == [32, 32, 32, 4] and plain[0].tolist() == val.y[:32].tolist()
    first = [(x, y) for x, y in make_loader(val, 32, shuffle=True, augment="crop+flip", seed=5)]
    second = [(x, y) for x, y in make_loader(val, 32, shuffle=True, augment="crop+flip", seed=5)]
    assert all((x1 == x2).all() and (y1 == y2).all() for (x1, y1), (x2, y2) in zip(first, second))
    with pytest.raises(EdgepruneError, match="unknown augmentation"):
        make_loader(val, 8, shuffle=False, augment="rotate")


def test_crop_pads_with_black(tmp_path: Path) -> None:
    bright = np.random.default_rng(0).integers(128, 256, (64, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "bright.npz", x=bright, y=np.zeros(64, np.int64))
    preprocess = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    data = load_data(str(tmp_path / "bright.npz"), split="all", preprocess=preprocess)
    x, _ = next(iter(make_loader(data, 64, shuffle=False, augment="crop")))
    black = np.array([-m / s for m, s in zip(preprocess.mean, preprocess.std)], np.float32)
    assert tuple(x.shape) == (64, 3, 8, 8) and not np.allclose(x.numpy(), data.x)
    padded = np.isclose(x.numpy(), black[None, :, None, None], atol=1e-5)
    assert padded.any() and x.numpy().min() >= black.min() - 1e-5


def test_unlabelled_batches_have_no_y(tmp_path: Path) -> None:
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((5, 1, 4, 4), np.uint8))
    x, y = next(iter(make_loader(load_data(str(tmp_path / "nolabels.npz"), split="all"), 5, shuffle=False)))
    assert y is None and tuple(x.shape) == (5, 1, 4, 4)


def test_ort_reader_feeds_batches_and_quantises() -> None:
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    calib = sample(load_data("mnist5k", split="train"), 10)
    reader = OrtCalibrationReader(calib, "input", batch_size=4)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 3
    assert [f["input"].shape for f in reader] == [(4, 1, 32, 32), (4, 1, 32, 32), (2, 1, 32, 32)]
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], calib.x[:4])
    reader.set_range(1, 2)
    assert len(reader) == 1 and reader.get_next()["input"].shape[0] == 4 and reader.get_next() is None

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3, 3], np.random.default_rng(0).random(36).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["out"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 32, 32])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/f.onnx")
        reader.set_range(0, 3)
        quantize_static(f"{tmp}/f.onnx", f"{tmp}/q.onnx", reader, quant_format=QuantFormat.QDQ)
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(f"{tmp}/q.onnx").graph.node)


# --- preprocessing: the model's, not the data's -------------------------------------------------

def test_npz_of_model_inputs_reaches_the_model_unchanged(tmp_path: Path) -> None:
    x = (np.random.default_rng(0).integers(0, 256, (30, 3, 12, 12)) - 127.5) / 128  # mean about 0, std about 0.58
    np.savez(tmp_path / "inputs.npz", x=x.astype(np.float32))
    data = load_data(str(tmp_path / "inputs.npz"), split="all", channels=3, size=12,
                     preprocess=Preprocess(mean=(0.5,), std=(0.2,)))
    np.testing.assert_array_equal(data.x, x.astype(np.float32))
    with pytest.raises(EdgepruneError, match="model inputs of 3x12x12 .* the model takes 3x16x16"):
        load_data(str(tmp_path / "inputs.npz"), channels=3, size=16)


def test_images_get_the_given_preprocessing(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "pixels.npz", x=pixels)
    on_255 = Preprocess(mean=(127.5,), std=(128.0,), pixel_range="0-255")
    data = load_data(str(tmp_path / "pixels.npz"), split="all", preprocess=on_255)
    np.testing.assert_allclose(data.x, (pixels - 127.5) / 128, atol=1e-6)
    bgr = load_data(str(tmp_path / "pixels.npz"), split="all", preprocess=Preprocess(channel_order="bgr"))
    np.testing.assert_allclose(bgr.x[:, 0], pixels[:, 2] / 255.0, atol=1e-6)


def test_data_statistics_only_when_asked(cifar10_root: Path) -> None:
    spec = f"cifar10:{cifar10_root}"
    stats = data_statistics(spec, channels=3, size=32)
    assert stats.source == f"statistics of {spec}" and len(stats.mean) == 3
    data = load_data(spec, split="train", preprocess=stats)
    assert abs(float(data.x.mean())) < 0.1 and abs(float(data.x.std()) - 1) < 0.1
    plain = load_data(spec, split="train")
    assert float(plain.x.min()) >= 0 and abs(float(plain.x.std()) - 1) > 0.5


def test_resize_then_centre_crop(tmp_path: Path) -> None:
    x = np.zeros((2, 1, 20, 40), np.uint8)
    x[:, :, :, 8:32] = 255  # a white band, wider than the centre crop
    np.savez(tmp_path / "wide.npz", x=x)
    cropped = load_data(str(tmp_path / "wide.npz"), split="all", size=10, preprocess=Preprocess(resize=10))
    assert cropped.x.shape == (2, 1, 10, 10) and cropped.x.min() > 0.99  # only the band is left


def test_a_folder_image_is_resized_and_cropped_once(tmp_path: Path) -> None:
    """80 x 100 (w x h), its left 40 columns white: shorter side to 73 puts the edge at 36.5, the
    centre crop to 64 starts at column 4, so the edge lands at 32.5. The reader fits folder images
    as it reads them; fitting them again zoomed twice (edge at about 33.1)."""
    from PIL import Image

    (tmp_path / "a").mkdir()
    pixels = np.zeros((100, 80, 3), np.uint8)
    pixels[:, :40] = 255
    Image.fromarray(pixels).save(tmp_path / "a" / "i.png")
    row = load_data(f"folder:{tmp_path}", split="all", size=64, preprocess=Preprocess(resize=73)).x[0, 0, 50]
    assert row[:32].min() == 1 and row[32] == pytest.approx(0.5, abs=0.02) and row[33:].max() == 0


def test_flat_and_nested_folders_are_unlabelled_sources(tmp_path: Path) -> None:
    from PIL import Image

    for i, where in enumerate(["flat", "flat", "nested/2024/01", "nested/2024/02"]):
        folder = tmp_path / where
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9 + i, 7), (i * 40, 0, 0)).save(folder / f"{i}.jpg")
    flat = load_data(f"folder:{tmp_path / 'flat'}", split="all", size=8)
    nested = load_data(f"folder:{tmp_path / 'nested'}", split="all", size=8)
    assert flat.x.shape == (2, 3, 8, 8) and flat.y is None and flat.num_classes == 0
    assert nested.x.shape == (2, 3, 8, 8) and nested.y is None
    assert len(load_data(f"images:{tmp_path}", split="all", size=8)) == 4


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_the_data_is_refused(tmp_path: Path, value: float) -> None:
    x = np.zeros((6, 1, 4, 4), np.float32)
    x[2, 0, 1, 1] = value
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(EdgepruneError, match="1 values in 1 of 6 images are NaN or Inf"):
        load_data(str(tmp_path / "bad.npz"), split="all")


def test_preprocess_round_trips_and_rejects_nonsense() -> None:
    p = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="bgr", resize=256)
    assert Preprocess.from_dict(p.to_dict()) == p
    with pytest.raises(EdgepruneError, match="std positive"):
        Preprocess(std=(0.0,))
    with pytest.raises(EdgepruneError, match="3 mean values for a 1-channel input"):
        p.affine(1)
