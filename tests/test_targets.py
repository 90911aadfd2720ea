"""Device targets: the built-in JSON files, aliases, user files and validation."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.errors import EdgepruneError
from edgeprune.targets import OPT_LEVELS, Target, list_targets, load_target, target_aliases

REPO = Path(__file__).resolve().parents[1]
BUILTIN = ["arm-cortex-a53", "arm-cortex-a72", "arm-cortex-a76", "x86-avx2", "x86-avx512"]
GOOD = {"name": "my-board", "description": "a test board", "threads": 2, "inter_op_threads": 1, "round_to": 16,
        "opset": 17, "graph_optimization": "extended", "int8": False, "input_shape": [1, 3, 96, 96],
        "memory_arena": False}


def write(tmp_path: Path, data, name: str = "board.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_builtin_targets_are_listed_and_valid():
    targets = list_targets()
    assert [t.name for t in targets] == BUILTIN
    for t in targets:
        assert t.threads >= 1 and t.round_to >= 1 and t.opset >= 13 and t.graph_optimization in OPT_LEVELS
        assert t.description and t.input_shape is None
        assert load_target(t.name) == t


def test_arm_is_an_alias_with_a_reason():
    assert target_aliases() == {"arm": "arm-cortex-a72"}
    assert load_target("arm") == load_target("arm-cortex-a72")
    raw = json.loads((REPO / "edgeprune" / "targets" / "arm.json").read_text())
    assert len(raw["comment"]) > 40


def test_targets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_target("x86-avx2").threads = 8


def test_user_file_by_path(tmp_path):
    path = write(tmp_path, GOOD)
    target = load_target(path)
    assert target == load_target(str(path))
    assert target == Target(**{**GOOD, "input_shape": (1, 3, 96, 96)})


def test_user_file_name_defaults_to_the_file_stem(tmp_path):
    data = {k: v for k, v in GOOD.items() if k not in ("name", "description")}
    assert load_target(write(tmp_path, data, "jetson.json")).name == "jetson"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(EdgepruneError) as caught:
        load_target("cortex-m4")
    message = str(caught.value)
    assert message.startswith("unknown target 'cortex-m4'; known targets: arm, arm-cortex-a53")
    assert "\n" not in message


@pytest.mark.parametrize("data, expected", [
    ("{not json", "is not valid JSON"),
    ([1, 2], "must hold a JSON object"),
    ({k: v for k, v in GOOD.items() if k != "threads"}, "missing field(s) threads"),
    ({**GOOD, "thread": 2}, "unknown field(s) thread"),
    ({**GOOD, "threads": "4"}, "'threads' must be an integer in [0, 1024], got '4'"),
    ({**GOOD, "threads": True}, "'threads' must be an integer"),
    ({**GOOD, "round_to": 0}, "'round_to' must be an integer in [1, 1024], got 0"),
    ({**GOOD, "opset": 3}, "'opset' must be an integer in [7, 99]"),
    ({**GOOD, "graph_optimization": "max"}, "'graph_optimization' must be one of disable, basic, extended, all"),
    ({**GOOD, "int8": "yes"}, "'int8' must be true or false"),
    ({**GOOD, "input_shape": [1, -3, 32]}, "'input_shape' must be null or a list"),
    ({**GOOD, "runtime": "tflite"}, "'runtime' must be a runtime name (onnxruntime, executorch, ncnn), got 'tflite'"),
    ({**GOOD, "round_to_by_runtime": {"ncnn": 0}}, "'round_to_by_runtime' must be an object mapping runtime names"),
    ({**GOOD, "round_to_by_runtime": {"mnn": 4}}, "'round_to_by_runtime' must be an object"),
    ({"alias_of": "arm-cortex-a72", "threads": 2}, "an alias holds only 'alias_of'"),
    ({"alias_of": "nowhere"}, "an alias holds only 'alias_of' (a built-in target)"),
])
def test_invalid_file_gives_one_clear_line(tmp_path, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(EdgepruneError) as caught:
        load_target(path)
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_a_target_names_its_runtime_and_an_alignment_per_runtime(tmp_path):
    target = load_target(write(tmp_path, {**GOOD, "runtime": "ncnn", "round_to_by_runtime": {"ncnn": 4}}))
    assert target.runtime == "ncnn"
    assert target.round_to_for("ncnn") == 4 and target.round_to_for("executorch") == target.round_to == 16
    plain = load_target(write(tmp_path, GOOD, "plain.json"))  # both fields are optional
    assert plain.runtime == "onnxruntime" and plain.round_to_by_runtime == {}


def test_missing_user_file(tmp_path):
    with pytest.raises(EdgepruneError, match="does not exist"):
        load_target(tmp_path / "nope.json")


def test_user_alias_file_resolves(tmp_path):
    assert load_target(write(tmp_path, {"alias_of": "arm-cortex-a76"})).name == "arm-cortex-a76"


def test_import_pulls_in_neither_torch_nor_onnx():
    code = "import sys, edgeprune.targets, edgeprune.profile; print(sorted({'torch', 'onnx'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_targets_table_and_json():
    import edgeprune.cli.bench  # noqa: F401  (registers the commands if the CLI does not yet)
    from edgeprune.cli import main

    table = CliRunner().invoke(main, ["targets"])
    assert table.exit_code == 0, table.output
    assert all(name in table.output for name in BUILTIN) and "arm: alias of arm-cortex-a72" in table.output
    data = json.loads(CliRunner().invoke(main, ["targets", "--json"]).output)
    assert [t["name"] for t in data["targets"]] == BUILTIN and data["aliases"] == {"arm": "arm-cortex-a72"}
