"""The command line as a user meets it."""

import json
import os
import re
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
    out = tmp_path / "archdsl-out" / "vgg_e.py"  # not build/, which is setuptools' own
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
    assert data["param_count"] == 1_727_962 and data["arguments"]["n"] == 18
    assert main(["summary", "vgg_d", "--input", "3x384x384", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [3, 384, 384]
    fc1 = next(row for row in data["layers"] if row["name"] == "fc1")
    assert fc1["param_count"] == 512 * 12 * 12 * 4096 + 4096


def test_summary_json_fields(capsys):
    assert main(["summary", "resnet18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"name", "param_count", "mac_count", "flop_count", "activation_count", "arguments",
            "input_shape", "output_shape", "layers", "files"} <= set(data)
    assert not {"params", "parameters", "macs", "flops"} & set(data)  # one spelling: *_count
    assert data["name"] == "resnet18" and data["output_shape"] == [1000]
    assert data["flop_count"] == 2 * data["mac_count"]
    assert sum(row["param_count"] for row in data["layers"]) == data["param_count"]
    assert sum(row["mac_count"] for row in data["layers"]) == data["mac_count"]
    assert data["arguments"] == {"classes": 1000, "shortcut": "B"}


def test_summary_json_names_the_file_of_every_layer(capsys):
    """resnet18's blocks come from lib/resnet.arch: their lines are that file's."""
    assert main(["summary", "resnet18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    library = [f for f in data["files"] if f.endswith("resnet.arch") and "lib" in f]
    assert data["files"][0] == data["file"] and len(library) == 1
    by_file = {row["file"] for row in data["layers"]}
    assert by_file == set(data["files"])
    for row in data["layers"]:
        lines = Path(row["file"]).read_text().splitlines()
        assert 1 <= row["line"] <= len(lines) and row["column"] >= 1
    conv = next(row for row in data["layers"] if row["file"] == library[0] and row["op"] == "conv")
    assert "conv" in Path(conv["file"]).read_text().splitlines()[conv["line"] - 1]


def test_list_shows_every_bundled_spec(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for spec in archdsl.list_specs():
        assert spec.name in out


def test_list_shows_parameter_counts_and_arguments(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["spec", "parameters"] and set(out[1]) == {"-", " "}  # header, rule
    lines = {line.split()[0]: line for line in out}
    assert "60,965,224" in lines["alexnet"] and "groups=2" in lines["alexnet"]
    assert "269,722" in lines["cifar_resnet"] and "n=3" in lines["cifar_resnet"]
    assert "shortcut=A" in lines["cifar_resnet"]
    assert "143,667,240" in lines["vgg_e"]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"archdsl {archdsl.__version__}"


def test_every_option_has_help_and_every_command_an_example():
    from archdsl.cli import COMMANDS, parser

    top = parser()
    subparsers = next(a for a in top._actions if a.choices and "build" in a.choices).choices
    assert set(subparsers) == set(COMMANDS)
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"archdsl {name} {action.option_strings or action.dest} has no help"
        assert f"archdsl {name}" in sub.format_help().split("example:")[1]


def test_output_folder_gets_the_net_file_and_is_checked_first(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    assert main(["build", "vgg_a", "-o", str(folder)]) == 0
    assert (folder / "vgg_a.py").is_file()
    assert main(["build", "vgg_a", "--dense", "-o", str(tmp_path / "new") + "/"]) == 0
    assert (tmp_path / "new" / "vgg_a_dense.py").is_file()
    capsys.readouterr()
    # a file where a folder would go: refused before any summary is printed
    (tmp_path / "plain").write_text("")
    assert main(["build", "vgg_a", "-o", str(tmp_path / "plain" / "x.py")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "not a directory" in err.lower()


def test_fmt_in_place_refuses_a_bundled_spec(capsys):
    from archdsl.frontend.loader import SPECS_DIR

    before = (SPECS_DIR / "vgg_a.arch").read_bytes()
    assert main(["fmt", "-i", "vgg_a"]) == 2
    assert "bundled spec" in capsys.readouterr().err
    assert main(["fmt", "-i", str(SPECS_DIR / "vgg_a.arch")]) == 2
    assert (SPECS_DIR / "vgg_a.arch").read_bytes() == before
    assert main(["fmt", "vgg_a"]) == 0  # printing one is fine


def test_kernels_shows_progress_on_stderr(capsys, monkeypatch):
    """One line per config as it starts compiling (the compiler itself is replaced: compiling
    for sm_90 takes minutes, and the kernel tests cover it)."""
    from archdsl.codegen.triton import aot

    def report(graph, *, arch, dtype, batch, training, progress=None):
        for config in ("64x64 w4 s3", "128x64 w8 s3"):
            if progress:
                progress(aot.Compiled("conv2d", dtype, config, ["conv1"]))
        return aot.Report(graph.name, arch, dtype, batch, training, [], [], 0.0, "test")

    monkeypatch.setattr(aot, "report", report)
    assert main(["kernels", "cifar_resnet", "--dtype", "fp32"]) == 0
    err = capsys.readouterr().err
    assert re.findall(r"^\[(\d)\] compiling conv2d fp32 (.*) for sm_90 \(conv1\)$", err, re.M) == [
        ("1", "64x64 w4 s3"), ("2", "128x64 w8 s3")]
    assert main(["kernels", "cifar_resnet", "--dtype", "fp32", "-q"]) == 0
    assert "compiling" not in capsys.readouterr().err


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


def test_a_spec_warning_prints_as_a_spec_error_does(tmp_path, capsys):
    import warnings

    spec = tmp_path / "v.arch"
    spec.write_text("net v : 3x32x32 {\n  conv3-8; maxpool\n  fc-10\n}\n")
    shown = warnings.showwarning
    assert main(["check", str(spec), "--input", "3x64x64"]) == 0
    err = capsys.readouterr().err
    assert f"{spec}:3:3: warning: fc-10 receives 8192 features (8x32x32) at input 3x64x64" in err
    assert "    fc-10\n" in err and "^" in err  # the line and its caret, as an error shows them
    assert "SpecWarning" not in err and "expand.py" not in err
    assert warnings.showwarning is shown  # restored
