"""A run folder: what was trained (the canonical spec with its parameter values, and its hash),
how (the recipe, seed, versions, command), what came out (metrics per evaluation, checkpoints).

    run.json        spec name, arguments (the net's parameter values), counts (param_count,
                    mac_count, depth), spec hash, recipe, seed, data, versions, status
    spec.arch       the spec in the canonical layout (``archdsl fmt``), self-contained: the
                    blocks of its imports first, then the net with the run's parameter values
                    as its defaults, so ``archdsl check spec.arch`` builds exactly this variant
    metrics.jsonl   one JSON object per evaluation
    checkpoint.pt   model, optimiser, schedule, RNG states, position (written atomically)
    model.pt        the final weights, a plain state dict (``archdsl eval --weights``)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any, Callable

from archdsl.errors import SpecError
from archdsl.frontend import ast
from archdsl.frontend.loader import load_program, read_source
from archdsl.frontend.parser import parse
from archdsl.frontend.printer import format_spec
from archdsl.frontend.values import Value
from archdsl.limits import DEFAULT, Limits
from archdsl.registry import resolve_spec

RUN_FILE, SPEC_FILE, METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE = (
    "run.json", "spec.arch", "metrics.jsonl", "checkpoint.pt", "model.pt")


def _literal(value: Value, span) -> ast.Expr:
    if isinstance(value, bool):
        return ast.Word("true" if value else "false", span)
    if isinstance(value, (int, float)):
        return ast.Num(value, span)
    text = str(value)
    return ast.Word(text, span) if text.isidentifier() else ast.Str(text, span)


def canonical_spec(spec: str | Path, params: dict[str, Value], *, net: str | None = None,
                   limits: Limits = DEFAULT) -> str:
    """The spec as one self-contained file in the canonical layout, with ``params`` written in
    as the net's parameter defaults (the printer of ``archdsl fmt``)."""
    path = resolve_spec(spec)
    text = read_source(path, limits)
    program = load_program(text, str(path), limits, path.parent)
    chosen = program.net(net)
    unknown = set(params) - {p.name for p in chosen.params}
    if unknown:
        raise SpecError(f"net {chosen.name!r} has no parameter {', '.join(sorted(unknown))}", chosen.span)
    new_params = tuple(dataclasses.replace(p, default=_literal(params[p.name], p.span)) if p.name in params else p
                       for p in chosen.params)
    entry = dataclasses.replace(program.entry, imports=(), nets=(dataclasses.replace(chosen, params=new_params),))
    parts = []
    for file in program.files[1:]:  # imported libraries: blocks only
        library = parse(read_source(Path(file), limits), file, limits)
        parts.append(format_spec(dataclasses.replace(library, imports=())))
    parts.append(format_spec(entry))
    return "\n".join(p.strip("\n") + "\n" for p in parts if p.strip())


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def versions() -> dict[str, str]:
    import torch

    from archdsl import __version__

    out = {"archdsl": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["device"] = torch.cuda.get_device_name()
    return out


# -- atomic files -------------------------------------------------------------------------------
def write_atomic_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``:
    readers (and a run killed meanwhile) see the old file or the new one, never half of one.
    Only a regular file is replaced (``sweep --jobs /dev/null`` run as root is refused); see
    :func:`archdsl.arguments.write_atomic`, which this is."""
    from archdsl.arguments import write_atomic

    write_atomic(path, write)


def write_text(path: Path, text: str) -> None:
    write_atomic_bytes(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    write_atomic_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, read with ``weights_only=True``: tensors and plain data, never code."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, without a traceback
        raise SpecError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None


# -- reading runs -------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_run(run_dir: str | Path) -> dict:
    """``run.json`` of a run folder, with its ``metrics`` rows and ``dir`` added."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise SpecError(f"{run_dir} is not a run folder (no {RUN_FILE})")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpecError(f"cannot read {path}: {err}") from None
    _rename_old_keys(run)
    run["metrics"] = read_metrics(run_dir)
    run["dir"] = str(run_dir)
    return run


def _rename_old_keys(run: dict) -> None:
    """Runs written before the keys were spelt as in the summary's JSON said ``params`` for the
    net's arguments and ``counts.params`` / ``counts.macs`` for the counts; read them as
    ``arguments``, ``counts.param_count`` and ``counts.mac_count``."""
    if "params" in run and "arguments" not in run:
        run["arguments"] = run.pop("params")
    counts = run.get("counts")
    if isinstance(counts, dict):
        for old, new in (("params", "param_count"), ("macs", "mac_count")):
            if old in counts and new not in counts:
                counts[new] = counts.pop(old)


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
