"""Sweeps: the cartesian product of ``--set`` values, the cost table of its variants, and the
variants' training runs (one after another here, or as a job list for a cluster scheduler)."""

from __future__ import annotations

import itertools
import json
import shlex
import sys
from pathlib import Path
from typing import Iterable, Sequence

from archdsl.errors import SpecError
from archdsl.frontend.values import Value, describe, parse_cli_value
from archdsl.ir import ArchGraph
from archdsl.limits import DEFAULT, Limits
from archdsl.workflow.counts import variant_row
from archdsl.workflow.tables import Column


def grid(settings: Iterable[tuple[str, str]]) -> list[dict[str, Value]]:
    """Every combination of the comma-separated values, the first name varying slowest.

    Args:
        settings: ``(name, "3,5,7")`` pairs, as ``--set n=3,5,7`` gives them.

    Raises:
        SpecError: a name given twice, or an empty value.
    """
    names: list[str] = []
    choices: list[list[Value]] = []
    for name, text in settings:
        if name in names:
            raise SpecError(f"--set {name}: given twice; list its values once, comma-separated")
        values = [parse_cli_value(v) for v in text.split(",")]
        if any(v == "" for v in values):
            raise SpecError(f"--set {name}={text}: an empty value in the list")
        names.append(name)
        choices.append(values)
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def cli_text(value: Value) -> str:
    """A value as ``--set`` reads it back: ``3``, ``0.5``, ``true``, ``A``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else describe(value)


def variant_name(spec: str | Path, values: dict[str, Value]) -> str:
    """A name for one variant that is also a safe folder name: ``cifar_resnet-n3-shortcutA``."""
    stem = Path(str(spec)).stem
    parts = [stem] + [f"{k}{cli_text(v)}" for k, v in values.items()]
    return "-".join("".join(ch if ch.isalnum() or ch in "._" else "_" for ch in p) for p in parts)


def variants(spec: str | Path, settings: Iterable[tuple[str, str]], *, net: str | None = None,
             input=None, limits: Limits = DEFAULT) -> list[tuple[dict[str, Value], ArchGraph]]:
    """The checked graph of every variant of the sweep, in grid order."""
    from archdsl.pipeline import load

    return [(values, load(spec, net=net, input=input, limits=limits, params=values))
            for values in grid(settings)]


def table_rows(spec: str | Path, built: Sequence[tuple[dict[str, Value], ArchGraph]]) -> list[dict]:
    return [{"variant": variant_name(spec, values), **variant_row(graph)} for values, graph in built]


def columns(names: Sequence[str]) -> list[Column]:
    """The sweep table's columns: the variant, the swept parameters, then the costs."""
    return [Column("variant", "variant"), *(Column(n, n) for n in names),
            Column("depth", "depth"), Column("param_count", "params"), Column("mac_count", "MACs"),
            Column("activation_mib", "act. MiB/sample", lambda v: f"{v:.2f}"),
            Column("receptive_field", "RF"), Column("output_shape", "output")]


def train_commands(spec: str | Path, values_list: Sequence[dict[str, Value]], train_args: Sequence[str],
                   out: str | Path) -> list[dict]:
    """One job per variant: the ``archdsl train`` command line that runs it, and its run folder.

    The commands call the same Python as this process (``python -m archdsl``), so a scheduler
    on a machine with the same environment runs exactly what ``sweep --train`` would. Paths
    (a spec file, the run folder) are absolute: a scheduler may start a job in another folder.
    A job's ``arguments`` are the variant's values of the net's parameters (as in the summary's
    JSON), not a parameter count."""
    jobs = []
    spec_arg = str(Path(spec).resolve()) if Path(spec).is_file() else str(spec)  # else a bundled name
    for values in values_list:
        name = variant_name(spec, values)
        run_dir = str((Path(out) / name).resolve())
        argv = [sys.executable, "-m", "archdsl", "train", spec_arg, *train_args, "--out", run_dir]
        for k, v in values.items():
            argv += ["--set", f"{k}={cli_text(v)}"]
        jobs.append({"name": name, "arguments": values, "run_dir": run_dir, "argv": argv,
                     "command": shlex.join(argv)})
    return jobs


def job_lines(jobs: Sequence[dict]) -> str:
    """JSON lines, one job per line (submitit or a Slurm array reads one line per task)."""
    return "".join(json.dumps(job) + "\n" for job in jobs)
