"""Results of several runs: one table, and the plots the papers print.

* ``curves.png`` / ``.svg``: error against iterations of every run on one axis, training error
  thin and test error bold in the run's colour (the ResNet paper's Figure 4).
* ``error_vs_depth`` (or ``_params``) ``.png`` / ``.svg``: the final test error of each run
  against its depth or parameter count, one line per net (plain against residual, say).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from archdsl.errors import SpecError
from archdsl.workflow.runs import RUN_FILE, read_run
from archdsl.workflow.tables import Column


def find_runs(paths: Sequence[str | Path]) -> list[dict]:
    """The runs at ``paths``: run folders, or folders whose sub-folders are runs (a sweep)."""
    found = []
    for path in map(Path, paths):
        if (path / RUN_FILE).is_file():
            found.append(read_run(path))
        elif path.is_dir():
            inner = sorted(p for p in path.iterdir() if (p / RUN_FILE).is_file())
            if not inner:
                raise SpecError(f"{path}: no run folders in it (a run folder holds {RUN_FILE})")
            found.extend(read_run(p) for p in inner)
        else:
            raise SpecError(f"no run folder {str(path)!r}")
    return found


def _error(row: dict) -> float | None:
    return row.get("test_top1_error", row.get("train_error"))


def table_rows(runs: Sequence[dict]) -> list[dict]:
    """One row per run: variant, net, counts, best and final errors (in %), time."""
    out = []
    for run in runs:
        metrics = run["metrics"]
        tested = [r["test_top1_error"] for r in metrics if r.get("test_top1_error") is not None]
        last = metrics[-1] if metrics else {}
        percent = (lambda v: None if v is None else round(100 * v, 2))
        out.append({
            "variant": Path(run["dir"]).name,
            "net": run.get("net"),
            "depth": run.get("counts", {}).get("depth"),
            "param_count": run.get("counts", {}).get("param_count"),
            "mac_count": run.get("counts", {}).get("mac_count"),
            "iterations": run.get("completed_iterations", last.get("iteration")),
            "best_test_error": percent(min(tested) if tested else None),
            "final_test_error": percent(last.get("test_top1_error")),
            "final_train_error": percent(last.get("train_error")),
            "time_s": run.get("elapsed_s", last.get("elapsed_s")),
            "status": run.get("status"),
        })
    return out


COLUMNS = [Column("variant", "variant"), Column("net", "net"), Column("depth", "depth"),
           Column("param_count", "params"), Column("mac_count", "MACs"), Column("iterations", "iterations"),
           Column("best_test_error", "best test err %"), Column("final_test_error", "final test err %"),
           Column("final_train_error", "final train err %"),
           Column("time_s", "time s", lambda v: "" if v is None else f"{v:.1f}"), Column("status", "status")]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SpecError("the report's plots need matplotlib: pip install 'archdsl[train]'") from None
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "archdsl"  # the same runs give the same SVG bytes
    return plt


def _save(fig, out: Path, stem: str) -> list[Path]:
    from archdsl.workflow.runs import write_atomic_bytes

    paths = []
    for fmt in ("png", "svg"):
        path = out / f"{stem}.{fmt}"
        write_atomic_bytes(path, lambda f: fig.savefig(f, format=fmt, dpi=150, bbox_inches="tight",
                                                       metadata={"Date": None} if fmt == "svg" else None))
        paths.append(path)
    return paths


def plots(runs: Sequence[dict], out: Path, x: str = "depth") -> list[Path]:
    """Write the error curves and the error-against-``x`` plot (PNG and SVG) into ``out``.

    Args:
        runs: as :func:`find_runs` gives them.
        out: the folder to write into.
        x: ``depth`` or ``params`` (the parameter count, row key ``param_count``).
    """
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        rows = run["metrics"]
        if not rows:
            continue
        colour = colours[i % len(colours)]
        its = [r["iteration"] for r in rows]
        ax.plot(its, [100 * r["train_error"] for r in rows], color=colour, linewidth=0.8, linestyle="--")
        if any(r.get("test_top1_error") is not None for r in rows):
            ax.plot(its, [100 * r["test_top1_error"] for r in rows], color=colour, linewidth=2.2,
                    label=Path(run["dir"]).name)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_title("dashed: training error, bold: test error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written += _save(fig, out, "curves")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    rows = table_rows(runs)
    key = {"depth": "depth", "params": "param_count"}[x]
    for net in dict.fromkeys(r["net"] for r in rows):
        points = sorted((r[key], r["final_test_error"]) for r in rows
                        if r["net"] == net and r[key] is not None and r["final_test_error"] is not None)
        if points:
            ax.plot(*zip(*points), marker="o", label=net)
    ax.set_xlabel("depth (weighted layers)" if x == "depth" else "parameters")
    if x == "params":
        ax.set_xscale("log")
    ax.set_ylabel("final test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written += _save(fig, out, f"error_vs_{x}")
    plt.close(fig)
    return written
