"""archdsl sweep: the cost table of a sweep's variants, and summary --format."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import archdsl
from archdsl.cli import main
from archdsl.errors import SpecError
from archdsl.workflow import counts, sweep
from archdsl.workflow.tables import FORMATS, render

# ResNet paper (He et al. 2016), section 4.2, and its Table 6, which rounds the counts (0.27M, 0.46M,
# 0.66M, 0.85M, 1.7M): n -> (depth 6n+2, parameters).
CIFAR_RESNETS = {3: (20, 269_722), 5: (32, 464_154), 7: (44, 658_586), 9: (56, 853_018), 18: (110, 1_727_962)}


def run(*args):
    root = str(Path(archdsl.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "archdsl", *args], capture_output=True, text=True, env=env)


def test_sweep_csv_prints_the_papers_parameter_counts():
    result = run("sweep", "cifar_resnet", "--set", "n=3,5,7,9,18", "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["n"]) for r in rows] == [3, 5, 7, 9, 18]
    for row in rows:
        depth, params = CIFAR_RESNETS[int(row["n"])]
        assert int(row["param_count"]) == params
        assert int(row["depth"]) == depth
        assert row["output_shape"] == "10"


def test_grid_is_the_cartesian_product_first_name_slowest():
    assert sweep.grid([("n", "3,5"), ("shortcut", "A,B")]) == [
        {"n": 3, "shortcut": "A"}, {"n": 3, "shortcut": "B"}, {"n": 5, "shortcut": "A"}, {"n": 5, "shortcut": "B"}]
    with pytest.raises(SpecError, match="given twice"):
        sweep.grid([("n", "3"), ("n", "5")])
    with pytest.raises(SpecError, match="empty value"):
        sweep.grid([("n", "3,,5")])


def test_plain_twin_has_the_resnets_parameters_and_depth_ignores_projections():
    plain, resnet = archdsl.load("cifar_plain", n=5), archdsl.load("cifar_resnet", n=5)
    assert counts.variant_row(plain)["param_count"] == counts.variant_row(resnet)["param_count"] == 464_154
    # Option B adds three 1x1 projections beside the blocks: 21 weighted layers, depth still 18.
    assert counts.depth(archdsl.load("resnet18")) == 18
    assert counts.depth(archdsl.load("vgg_e")) == 19


def test_variant_row_counts_agree_with_the_graph():
    g = archdsl.load("cifar_resnet", n=3)
    row = counts.variant_row(g)
    assert row["mac_count"] == g.macs and row["param_count"] == g.params
    assert row["activation_count"] == sum(d["meta"]["activations"] for _, d in g.nodes(data=True))
    assert row["activation_mib"] == round(row["activation_count"] * 4 / 2**20, 2)
    assert row["receptive_field"] == g.nodes[g.graph["output"]]["meta"]["rf"]


def test_subtotals_add_up_to_the_totals():
    g = archdsl.load("cifar_resnet", n=3)
    totals = counts.subtotals(g)
    stages = [r for r in totals if r["level"] == "stage"]
    assert [r["scope"] for r in stages] == ["(net)", "basic_stage1", "basic_stage2", "basic_stage3"]
    assert sum(r["param_count"] for r in stages) == g.params
    assert sum(r["mac_count"] for r in stages) == g.macs
    assert sum(r["layers"] for r in stages) == 20
    blocks = [r for r in totals if r["level"] == "block" and r["scope"].startswith("basic_stage2.")]
    assert len(blocks) == 3
    assert sum(r["param_count"] for r in blocks) == next(r for r in stages if r["scope"] == "basic_stage2")["param_count"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_every_row(fmt):
    rows = [{"variant": "a_b", "n": 3, "param_count": 269_722, "output_shape": [64, 8, 8]},
            {"variant": "c&d", "n": 18, "param_count": 1_727_962, "output_shape": [10]}]
    text = render(rows, fmt)
    if fmt == "json":
        assert json.loads(text) == rows
    elif fmt == "csv":
        assert list(csv.reader(io.StringIO(text)))[1] == ["a_b", "3", "269722", "64x8x8"]
    else:
        shown = "269,722"
        assert shown in text and "1,727,962" in text and "64x8x8" in text
    if fmt == "latex":
        assert r"a\_b" in text and r"c\&d" in text and text.startswith(r"\begin{tabular}{lrrl}")
    if fmt == "md":
        assert text.splitlines()[1] == "| --- | ---: | ---: | --- |"


def test_summary_format_adds_subtotals(capsys):
    assert main(["summary", "cifar_resnet", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["param_count"] == 269_722
    stage3 = next(r for r in data["subtotals"] if r["scope"] == "basic_stage3")
    assert stage3["param_count"] == sum(r["param_count"] for r in data["subtotals"]
                                        if r["scope"].startswith("basic_stage3."))
    assert main(["summary", "cifar_resnet", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["level"] for r in rows} == {"layer", "stage", "block"}
    assert sum(int(r["param_count"]) for r in rows if r["level"] == "layer") == 269_722
    assert main(["summary", "cifar_resnet", "--format", "text"]) == 0
    assert "per stage and block" in capsys.readouterr().out


def test_sweep_jobs_writes_one_command_per_variant(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    assert main(["sweep", "cifar_plain", "--set", "n=1,2", "--jobs", str(jobs), "--data", "digits",
                 "--iterations", "5", "--out", str(tmp_path / "runs")]) == 0
    lines = [json.loads(line) for line in jobs.read_text().splitlines()]
    assert [j["arguments"] for j in lines] == [{"n": 1}, {"n": 2}]
    assert lines[0]["argv"][1:4] == ["-m", "archdsl", "train"]
    assert "--iterations" in lines[0]["argv"] and ["--set", "n=1"] == lines[0]["argv"][-2:]
    assert lines[1]["run_dir"] == str(tmp_path / "runs" / "cifar_plain-n2")
    assert "cifar_plain-n1" in capsys.readouterr().out  # the table comes first


def test_sweep_bad_value_points_at_the_spec():
    result = run("sweep", "cifar_resnet", "--set", "shortcut=A,Z")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error" in result.stderr


def test_sweep_train_runs_the_variants_one_after_another(tmp_path, capsys):
    from test_train import write_cifar  # generated batches in CIFAR's format

    out = tmp_path / "runs"
    cifar = str(write_cifar(tmp_path / "cifar"))
    assert main(["sweep", "cifar_plain", "--set", "n=1,2", "--train", "--data", cifar, "--iterations", "2",
                 "--batch-size", "16", "--eval-every", "2", "--no-progress", "--out", str(out)]) == 0
    for n in (1, 2):
        run = json.loads((out / f"cifar_plain-n{n}" / "run.json").read_text())
        assert run["status"] == "done" and run["arguments"]["n"] == n and run["counts"]["depth"] == 6 * n + 2
        assert run["data"]["name"] == "cifar10" and run["recipe"]["iterations"] == 2
    again = ["sweep", "cifar_plain", "--set", "n=1,2", "--train", "--data", cifar, "--iterations", "2",
             "--batch-size", "16", "--eval-every", "2", "--no-progress", "--out", str(out)]
    assert main(again) == 2  # a finished run is never overwritten
    assert main(again + ["--resume"]) == 0  # both have checkpoints: continued, nothing left to do


def test_import_and_parser_load_neither_torch_nor_matplotlib():
    code = ("import sys, archdsl, archdsl.cli, archdsl.workflow.sweep; archdsl.cli.parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'sklearn')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(archdsl.__file__).resolve().parent.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_sweep_jobs_name_absolute_paths(tmp_path, monkeypatch):
    """A scheduler may start a job in another folder: the spec file, the data folder and the
    run folder of each job line are absolute, and the job runs from anywhere."""
    from test_train import write_cifar

    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path / "cifar", n=16, test=8)
    (tmp_path / "mine.arch").write_text("net mine(n=1) : 3x32x32 { conv3-8/2 pad=1; gap; fc-10; softmax }")
    assert main(["sweep", "mine.arch", "--set", "n=1", "--jobs", "jobs.jsonl", "--data", "cifar", "--iterations", "1",
                 "--batch-size", "8", "--no-progress", "--out", "runs"]) == 0
    (job,) = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    argv = job["argv"]
    assert argv[4] == str(tmp_path / "mine.arch") and job["run_dir"] == str(tmp_path / "runs" / "mine-n1")
    assert argv[argv.index("--data") + 1] == str(tmp_path / "cifar")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = str(Path(archdsl.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "runs" / "mine-n1" / "run.json").read_text())["status"] == "done"


#: Keys the summary's JSON does not use: there a count is ``*_count`` and the net's parameter
#: values are ``arguments``; ``params`` alone could mean either.
AMBIGUOUS = {"params", "parameters", "macs", "flops", "activations"}


def test_machine_readable_outputs_spell_keys_as_the_summary_does(tmp_path, capsys):
    from archdsl.workflow import data, runs
    from archdsl.workflow.recipes import recipe
    from archdsl.workflow.train import Options, train

    assert main(["sweep", "cifar_resnet", "--set", "n=3,5", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["n"], r["param_count"]) for r in rows] == [(3, 269_722), (5, 464_154)]
    assert all(r["mac_count"] == archdsl.load("cifar_resnet", n=r["n"]).macs for r in rows)
    assert not AMBIGUOUS & set().union(*rows)
    assert main(["sweep", "cifar_resnet", "--set", "n=3", "--format", "csv"]) == 0
    header = next(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert {"param_count", "mac_count"} <= set(header) and not AMBIGUOUS & set(header)
    assert main(["sweep", "cifar_resnet", "--set", "n=3", "--format", "md"]) == 0
    assert "| params | MACs |" in capsys.readouterr().out  # people read the short headers

    jobs = tmp_path / "jobs.jsonl"
    assert main(["sweep", "cifar_plain", "--set", "n=1", "--jobs", str(jobs), "--data", "digits",
                 "--out", str(tmp_path / "runs")]) == 0
    (job,) = [json.loads(line) for line in jobs.read_text().splitlines()]
    assert job["arguments"] == {"n": 1} and not AMBIGUOUS & set(job)

    ds = data.in_memory("tiny", [str(i) for i in range(10)], data.synthetic(32, 10, 32, 0), None)
    train("cifar_plain", ds, tmp_path / "run", recipe=recipe("resnet-cifar", iterations=1, batch_size=16),
          params={"n": 1}, options=Options(progress=False))
    recorded = json.loads((tmp_path / "run" / runs.RUN_FILE).read_text())
    g = archdsl.load("cifar_plain", n=1)
    assert recorded["arguments"] == {"n": 1, "shortcut": "none", "classes": 10}
    assert recorded["counts"] == {"param_count": g.params, "mac_count": g.macs, "depth": 8}
    assert not AMBIGUOUS & (set(recorded) | set(recorded["counts"]))
