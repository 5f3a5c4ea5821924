"""Every benchmark script runs to its table.

The GPU benchmarks run on the GPU machine only when a task is lent one, so between those runs
nothing would notice a script broken by a change to the package. Here ``gpu_check.sh --smoke``
runs each of them end to end (the CPU, Triton's interpreter, tiny shapes; see
benchmarks/common.py), in one process chain, as the GPU check would: the same correctness
checks against references (every tile config validated too), the same baselines (torch.compile
through dynamo's eager backend: Inductor's CPU code is not what the GPU runs), the same
tables. Their timings mean nothing and are not looked at; the checks inside each script are
what can fail. bench_dense.py runs on the CPU as it is, at a reduced width.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OUT"] = str(out)
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, cwd=out, timeout=900)


def _table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows]


SMOKE = [
    # script, gpu_check step, table file, rows (header rows included), a cell every data row holds
    ("bench_tiles.py", "tiles", "tiles.md", 1 + 2 * (3 + 1), "smoke_"),  # 2 layers: 3 baselines, 1 tile
    ("bench_e2e.py", "e2e", "e2e.md", 2 + 3 + 3, None),  # 3 variants of each of two nets
    ("bench_lrn.py", "lrn", "lrn.md", 1 + 4, "fp32"),  # one shape x NCHW/NHWC x fwd/bwd
    ("bench_conv.py", "conv", "conv.md", 1 + 4 + 2, "smoke"),  # 4 layers, then the whole-net total
]


def test_gpu_check_runs_every_benchmark_end_to_end_in_smoke_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OUT"] = str(tmp_path)
    # This interpreter, not whichever `python` is first on PATH (a venv run without activating
    # it): else the script finds no archdsl there and tries to install this checkout into it.
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for script, step, table, n_rows, cell in SMOKE:
        assert f"== {step}: exit 0" in proc.stdout, (script, proc.stdout)
        text = (tmp_path / table).read_text()
        assert "SMOKE RUN" in text  # never mistaken for a measurement
        rows = _table_rows(text)
        assert len(rows) == n_rows, text
        if cell is not None:
            assert all(cell in row[0] or cell in row for row in rows[1:] if row[0] not in ("net", "shape")), text
        assert text.strip() in (tmp_path / f"{step}.log").read_text()  # the table is printed last
    # Without CUDA there are no graphs: the CUDA-graph cells of the rows that have them say so.
    rows = _table_rows((tmp_path / "e2e.md").read_text())
    graph_cells = [i for i, name in enumerate(rows[0]) if name.startswith("CUDA graph")]
    assert len(graph_cells) == 3, rows[0]
    for row in rows[1:4]:  # the whole-network table: torch, triton, compile
        assert [row[i] for i in graph_cells] == (["n/a (no CUDA)"] * 3 if row[1] in ("torch", "triton")
                                                 else ["-"] * 3), row


def _load_benchmark(name: str, monkeypatch):
    """A benchmark script as a module; it imports common.py as a script would, from its folder."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_e2e_table_sets_cuda_graph_replays_beside_torch_compile(monkeypatch):
    e2e = _load_benchmark("bench_e2e", monkeypatch)
    results = [
        e2e.Result("main", "net", "torch", 20.0, 3200.0, float("nan"), graph_ms=10.0, graph_images_per_s=6400.0),
        e2e.Result("main", "net", "triton", 16.0, 4000.0, 1e-3, graph_note="capture failed (RuntimeError)"),
        e2e.Result("main", "net", "compile", 15.0, 64 / 0.015, 1e-3),
    ]
    rows = _table_rows(e2e.render([], results, {}))
    cols = rows[0]
    by_variant = {row[1]: dict(zip(cols, row)) for row in rows[1:]}
    torch_row, triton_row, compile_row = by_variant["torch"], by_variant["triton"], by_variant["compile"]
    assert torch_row["vs compile"] == "0.75"  # 15 ms / 20 ms
    assert torch_row["CUDA graph: ms / batch"] == "10.00"
    assert torch_row["CUDA graph: images/s"] == "6400"
    assert torch_row["CUDA graph: vs compile"] == "1.50"  # 15 ms / 10 ms
    assert triton_row["vs compile"] == "0.94"
    assert all(triton_row[c] == "capture failed (RuntimeError)" for c in cols if c.startswith("CUDA graph"))
    assert compile_row["vs compile"] == "1.00"
    assert all(compile_row[c] == "-" for c in cols if c.startswith("CUDA graph"))


def test_gpu_benchmarks_refuse_to_time_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the scripts would run for real")
    for script, *_ in SMOKE:
        proc = _run(script, out=tmp_path)
        assert proc.returncode == 2, (script, proc.stderr)
        assert "CUDA device" in proc.stderr and "--smoke" in proc.stderr and "Traceback" not in proc.stderr


def test_dense_benchmark_runs_on_the_cpu(tmp_path):
    proc = _run("bench_dense.py", "--width-div", "32", "--scales", "256", "--images", "1", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _table_rows((tmp_path / "dense.md").read_text())
    assert [row[0] for row in rows] == ["method", "dense", "multi-crop"]


def test_emitted_size_table(tmp_path):
    """The emitted-source table: a depth change is a repeat count, so ResNet-110 and ResNet-1202
    emit files of the same length, and every row's file is shorter than one line per layer
    would make it for the deep nets."""
    result = _run("emitted_size.py", out=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r[0]: r for r in _table_rows((tmp_path / "emitted_size.md").read_text())[1:]}
    assert rows["cifar_resnet n=18"][2] == rows["cifar_resnet n=200"][2]
    for name in ("cifar_resnet n=200", "resnet152", "densenet121"):
        assert int(rows[name][2]) < int(rows[name][1].replace(",", "")), rows[name]
