"""The prune / info / zoo commands, and their answers to bad input (one line, exit code 2)."""
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from conftest import assert_one_line_error as assert_one_line_cli_error
from edgeprune.cli import main

USER_MODEL = '''
import torch
from torch import nn

def small():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y

def branchy():
    return Branchy()

def broken():
    model = small()
    model.load_state_dict({"0.weight": torch.zeros(1)})  # the user's own weight loading fails
    return model

class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
    def forward(self, image, mask):
        return self.conv(image) * mask

def two_inputs():
    return TwoInputs()
'''


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_prune_then_info_round_trip(tmp_path):
    out = tmp_path / "p.pt"
    proc = run("prune", "resnet20-cifar", "--criterion", "fpgm", "--flops-cut", "0.5", "--round-to", "4", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert abs(summary["macs_cut"] - 0.5) <= 0.01
    info = json.loads(run("info", str(out), "--json").stdout)
    assert info["macs"] == summary["macs_after"] and info["params"] == summary["params_after"]
    assert torch.load(out, weights_only=True)["spec"] == "resnet20-cifar"


def test_info_table_and_zoo():
    proc = CliRunner().invoke(main, ["info", "vgg16-cifar"])  # in this process: the round trip above starts one
    assert proc.exit_code == 0 and "313.46 M MACs" in proc.stdout
    zoo = json.loads(CliRunner().invoke(main, ["zoo", "--json"]).stdout)
    assert {"vgg16-cifar", "resnet56-cifar", "mobilenetv1-cifar"} <= {e["name"] for e in zoo}


def test_user_file_model(tmp_path):
    (tmp_path / "mine.py").write_text(USER_MODEL)
    proc = run("prune", f"{tmp_path}/mine.py:small", "--ratio", "0.5", "-o", str(tmp_path / "s.pt"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["macs_after"] < json.loads(proc.stdout)["macs_before"]


@pytest.mark.parametrize("args, fragment", [
    (["info", "no-such-model"], "unknown model 'no-such-model'"),
    (["info", "missing.pt"], "file not found: missing.pt"),
    (["prune", "resnet20-cifar", "--criterion", "nope", "--ratio", "0.3", "-o", "OUT"], "unknown criterion 'nope'"),
    (["prune", "resnet20-cifar", "--ratio", "1.2", "-o", "OUT"], "ratio must be in [0, 1)"),
    (["prune", "resnet20-cifar", "--ratio", "-0.1", "-o", "OUT"], "ratio must be in [0, 1)"),
    (["prune", "resnet20-cifar", "--flops-cut", "1", "-o", "OUT"], "flops cut must be in [0, 1)"),
    (["prune", "torchvision:nonet", "--ratio", "0.3", "-o", "OUT"], "unknown torchvision classification model"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, monkeypatch, args, fragment):
    """In this process (a process of its own per case cost seconds each); the tests below that run
    ``python -m edgeprune`` check that a real process ends the same way."""
    args = [str(tmp_path / "out.pt") if a == "OUT" else a for a in args]
    monkeypatch.chdir(tmp_path)
    assert_one_line_cli_error(CliRunner().invoke(main, args), fragment)
    assert not (tmp_path / "out.pt").exists()


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    assert_one_line_error(run("info", str(bad)), "cannot read")


class Evil:
    """Any class: a weights-only load must refuse to build it."""


def test_pickled_class_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "edgeprune-checkpoint/1", "obj": Evil()}, path)
    assert_one_line_error(run("info", str(path)), "weights-only")


def test_an_exception_in_the_users_factory_is_one_line_naming_it(tmp_path):
    (tmp_path / "mine.py").write_text(USER_MODEL)
    result = CliRunner().invoke(main, ["info", f"{tmp_path}/mine.py:broken"])
    assert_one_line_cli_error(result, f"{tmp_path}/mine.py:broken: broken() raised RuntimeError: Error(s) in loading "
                                      "state_dict for Sequential:")


def test_an_integer_npz_is_refused_in_one_line(tmp_path):
    import numpy as np
    np.savez(tmp_path / "ints.npz", x=np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32)))  # int64 pixels
    result = CliRunner().invoke(main, ["prune", "resnet20-cifar", "--criterion", "hrank", "--ratio", "0.3", "--calib",
                                       str(tmp_path / "ints.npz"), "-o", str(tmp_path / "p.pt")])
    assert_one_line_cli_error(result, "'x' is int64 (values 0 to 255); store pixels as uint8")
    assert not (tmp_path / "p.pt").exists()


def test_untraceable_user_model(tmp_path):
    (tmp_path / "mine.py").write_text(USER_MODEL)
    proc = run("prune", f"{tmp_path}/mine.py:branchy", "--ratio", "0.5", "-o", str(tmp_path / "b.pt"))
    # the operation that failed, and the user's line that asked for it
    assert_one_line_error(proc, "cannot trace Branchy: is_nonzero reads a tensor's values in Python")
    assert "mine.py:14 `return y if y.sum() > 0 else -y`" in proc.stderr
    assert not (tmp_path / "b.pt").exists()


@pytest.mark.parametrize("command", [["info"], ["prune", "--ratio", "0.5", "-o", "b.pt"], ["export", "-o", "b.onnx"],
                                     ["prune", "--ratio", "0.5", "--input-shape", "1x3x16x16", "-o", "b.pt"]])
def test_a_model_with_two_inputs_is_one_line(tmp_path, monkeypatch, command):
    (tmp_path / "mine.py").write_text(USER_MODEL)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [command[0], f"{tmp_path}/mine.py:two_inputs", *command[1:]])
    assert_one_line_cli_error(result, "edgeprune takes one image input; TwoInputs.forward takes 2 (image, mask)")
    assert not list(tmp_path.glob("b.*"))
