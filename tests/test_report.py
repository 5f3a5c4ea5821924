"""archdsl report: the results table and plots of several runs."""

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest

from archdsl.cli import main
from archdsl.workflow import data, report, runs
from archdsl.workflow.recipes import recipe
from archdsl.workflow.train import Options, train


def fake_run(folder, net, depth, params, errors, counts=("param_count", "mac_count")):
    """A run folder as train writes it, with the given (train, test) errors per evaluation;
    ``counts`` names the count keys (``("params", "macs")`` as runs were once written)."""
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.RUN_FILE, {"net": net, "counts": {"depth": depth, counts[0]: params, counts[1]: 1},
                                             "status": "done", "elapsed_s": 12.5,
                                             "completed_iterations": 10 * len(errors)})
    rows = [{"iteration": 10 * (i + 1), "train_error": tr, "test_top1_error": te, "train_loss": 1.0}
            for i, (tr, te) in enumerate(errors)]
    (folder / runs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep_dir(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "plain-n3", "cifar_plain", 20, 269_722, [(0.5, 0.6), (0.3, 0.35), (0.25, 0.4)])
    fake_run(root / "plain-n5", "cifar_plain", 32, 464_154, [(0.6, 0.7), (0.4, 0.45)])
    fake_run(root / "resnet-n3", "cifar_resnet", 20, 269_722, [(0.4, 0.5), (0.2, 0.3)])
    return root


def test_table_has_best_and_final_errors(sweep_dir):
    rows = report.table_rows(report.find_runs([sweep_dir]))
    assert [r["variant"] for r in rows] == ["plain-n3", "plain-n5", "resnet-n3"]
    first = rows[0]
    assert (first["best_test_error"], first["final_test_error"], first["final_train_error"]) == (35.0, 40.0, 25.0)
    assert (first["depth"], first["param_count"], first["iterations"], first["time_s"]) == (20, 269_722, 30, 12.5)


def test_cli_writes_table_and_plots(sweep_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(sweep_dir), "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["final_test_error"] for r in rows] == ["40.0", "45.0", "30.0"]
    for stem in ("curves", "error_vs_depth"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = ET.parse(out / f"{stem}.svg").getroot()
        assert svg.tag.endswith("svg")
    # Figure 4's style: per run a thin dashed training curve and a bold test curve.
    lines = [p for p in ET.parse(out / "curves.svg").getroot().iter() if p.get("id", "").startswith("line2d")]
    assert len(lines) >= 6
    assert "| plain-n3 |" in (out / "results.md").read_text()
    first = (out / "curves.svg").read_bytes()
    assert main(["report", str(sweep_dir), "--out", str(out), "--x", "params"]) == 0
    assert (out / "curves.svg").read_bytes() == first  # the same runs, the same picture
    assert (out / "error_vs_params.png").is_file()


def test_report_of_a_real_run(tmp_path, capsys):
    pixels = data.synthetic(64, 10, 32, 0)
    ds = data.in_memory("tiny", [str(i) for i in range(10)], pixels, data.synthetic(32, 10, 32, 1))
    train("cifar_plain", ds, tmp_path / "run", recipe=recipe("resnet-cifar", iterations=4, batch_size=16),
          params={"n": 1}, options=Options(progress=False, eval_every=2))
    assert main(["report", str(tmp_path / "run"), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["net"] == "cifar_plain" and row["depth"] == 8 and row["iterations"] == 4
    assert row["status"] == "done" and 0 <= row["final_test_error"] <= 100


def test_missing_runs_exit_2(tmp_path):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["report", str(tmp_path)]) == 2


def test_runs_written_with_the_old_keys_are_read(tmp_path):
    """Runs written before run.json spelt its keys as the summary's JSON does (``params`` for
    the net's arguments, ``counts.params`` / ``counts.macs``) still tabulate and plot."""
    root = tmp_path / "runs"
    fake_run(root / "old-n3", "cifar_plain", 20, 269_722, [(0.3, 0.4)], counts=("params", "macs"))
    fake_run(root / "new-n5", "cifar_plain", 32, 464_154, [(0.4, 0.5)])
    old = json.loads((root / "old-n3" / runs.RUN_FILE).read_text())
    runs.write_json(root / "old-n3" / runs.RUN_FILE, {**old, "params": {"n": 3}})
    found = report.find_runs([root])
    assert found[1]["arguments"] == {"n": 3} and "params" not in found[1]
    assert found[1]["counts"] == {"depth": 20, "param_count": 269_722, "mac_count": 1}
    rows = report.table_rows(found)
    assert [(r["variant"], r["param_count"], r["mac_count"]) for r in rows] == [
        ("new-n5", 464_154, 1), ("old-n3", 269_722, 1)]
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out), "--x", "params", "--format", "csv"]) == 0
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "param_count" in header and "mac_count" in header and "params" not in header
    assert (out / "error_vs_params.svg").is_file()


def test_the_committed_ablation_runs_are_read(capsys):
    """docs/results/ablation/runs were written with the old keys; report reads their counts."""
    import archdsl
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "docs" / "results" / "ablation" / "runs"
    assert main(["report", str(folder), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4
    for row in rows:
        net, n = row["variant"].rsplit("-n", 1)
        g = archdsl.load(net, n=int(n))
        assert (row["param_count"], row["mac_count"]) == (g.params, g.macs)
