"""The command line as a user meets it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.cli import main

REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd=None):
    # The package as imported by this test run, whether installed or from the source tree.
    root = str(Path(archdsl.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "archdsl", *args], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_build_writes_a_module_and_prints_the_summary(tmp_path):
    result = run("build", str(REPO / "specs" / "vgg_e.arch"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "143,667,240" in result.stdout and "19,632,062,464" in result.stdout
    assert "FLOPs = 2 x MACs" in result.stdout
    out = tmp_path / "build" / "vgg_e.py"
    assert out.is_file()
    namespace = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)
    with torch.device("meta"):
        model = namespace["VggE"]()
    assert sum(p.numel() for p in model.parameters()) == 143_667_240


def test_spec_error_exits_2_without_traceback(tmp_path):
    spec = tmp_path / "bad.arch"
    spec.write_text("net bad : 3x32x32 {\n  conv3-64\n  fc-10 in=100\n}\n")
    result = run("check", str(spec))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{spec}:3:3: error: fc-10 expects 100 input features, but receives 65536")
    assert "    fc-10 in=100\n" in result.stderr and "^" in result.stderr


def test_set_and_input_override(capsys):
    assert main(["summary", "cifar_resnet", "--set", "n=18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 1_727_962 and data["parameters"]["n"] == 18
    assert main(["summary", "vgg_d", "--input", "3x384x384", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [3, 384, 384]
    fc1 = next(row for row in data["layers"] if row["name"] == "fc1")
    assert fc1["params"] == 512 * 12 * 12 * 4096 + 4096


def test_summary_json_fields(capsys):
    assert main(["summary", "resnet18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"name", "params", "macs", "flops", "input_shape", "output_shape", "layers"} <= set(data)
    assert data["name"] == "resnet18" and data["output_shape"] == [1000]
    assert data["flops"] == 2 * data["macs"]
    assert sum(row["params"] for row in data["layers"]) == data["params"]
    assert sum(row["macs"] for row in data["layers"]) == data["macs"]


def test_list_shows_every_bundled_spec(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for spec in archdsl.list_specs():
        assert spec.name in out


def test_unknown_set_name_and_bad_value(capsys):
    assert main(["check", "cifar_resnet", "--set", "depth=3"]) == 2
    assert "has no parameter 'depth'" in capsys.readouterr().err
    assert main(["check", "resnet18", "--set", "shortcut=D"]) == 2
    assert "expected shortcut to be one of A, B, C, P, preact, none, identity, found 'D'" in capsys.readouterr().err


def test_missing_spec_file(capsys):
    assert main(["check", "nope.arch"]) == 2
    assert "no spec file 'nope.arch'" in capsys.readouterr().err


def test_failed_build_leaves_existing_output(tmp_path, capsys):
    out = tmp_path / "model.py"
    out.write_text("# keep me\n")
    spec = tmp_path / "bad.arch"
    spec.write_text("net bad : 3x8x8 { conv3-8; maxpool16 }\n")
    assert main(["build", str(spec), "-o", str(out)]) == 2
    assert out.read_text() == "# keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arch", "model.py"]


@pytest.mark.parametrize("command", ["check", "summary"])
def test_commands_take_bundled_names(command, capsys):
    assert main([command, "alexnet", "--set", "groups=1"]) == 0
    assert "62,378,344" in capsys.readouterr().out
