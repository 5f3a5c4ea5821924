"""What the benchmark scripts share: the device they run on, ``--smoke``, and the report file.

On the GPU machine a script runs on ``cuda`` and times compiled Triton kernels. ``--smoke``
runs the same script, every code path of it, once on the CPU: Triton's interpreter for the
kernels, fp32 (the interpreter has no bfloat16), tiny shapes, and a wall clock instead of CUDA
timing. It proves the script works end to end (CI runs it, so the scripts cannot rot between
GPU sessions); its numbers mean nothing and are labelled so.

Every script writes its markdown table with :func:`write_table`: to ``$OUT/<name>.md`` when
``OUT`` is set, after every row, so a run cut short still leaves the rows it measured.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

SMOKE_NOTE = "SMOKE RUN on the CPU (Triton interpreter, tiny shapes): the numbers mean nothing"


def write_table(text: str, name: str, path: str | os.PathLike | None = None) -> str:
    """Write a script's markdown report and return it (scripts print what it returns last).

    It goes to ``path`` if given, else to ``$OUT/<name>`` when ``OUT`` is set, else nowhere.
    Scripts call it after every row: a step killed by its timeout or stopped by a failed check
    still leaves its rows. The file ends in exactly one newline.
    """
    if path is None and os.environ.get("OUT"):
        path = Path(os.environ["OUT"], name)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text if text.endswith("\n") else text + "\n")
    return text


def add_smoke_flag(parser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="run every code path once on the CPU under Triton's interpreter, tiny "
                             "shapes, fp32 (checks the script; the numbers mean nothing)")


def start(script: str, smoke: bool, dtype: torch.dtype = torch.bfloat16) -> tuple[str, torch.dtype] | None:
    """The device and dtype to run with, or None after saying why the script cannot run here.

    With ``smoke``: the CPU and float32 (the interpreter has no bfloat16), and Triton's
    interpreter turned on, so this must come before any kernel module is imported (the kernels
    are decorated for one mode or the other at import).
    """
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        return "cpu", torch.float32
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(f"{script}: unset TRITON_INTERPRET; the benchmark times compiled kernels "
              "(--smoke runs it under the interpreter)", file=sys.stderr)
        return None
    if not torch.cuda.is_available():
        print(f"{script} needs a CUDA device (none found); run it on the GPU machine, "
              "or use --smoke to check it on the CPU", file=sys.stderr)
        return None
    return "cuda", dtype


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def empty_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def device_line(device: str) -> str:
    if device != "cuda":
        return f"- device: {SMOKE_NOTE}"
    props = torch.cuda.get_device_properties(0)
    return f"- device: {props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"


def wall_ms(fn, reps: int = 1) -> float:
    """Median wall-clock time of ``reps`` calls of ``fn`` in ms (smoke runs only: the number
    means nothing, so one call is enough to show the path runs)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_ms(fn, device: str, cuda_graph: bool = True) -> float:
    """Median time of ``fn`` in ms (a smoke run: wall clock).

    With ``cuda_graph`` the calls are captured in a CUDA graph and replayed, which measures
    GPU time alone: a kernel of a few tens of microseconds takes about as long as a
    Python-level launch, and eager timing would compare launch paths, not kernels.
    """
    if device != "cuda":
        return wall_ms(fn)
    import triton.testing

    if cuda_graph:
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def time_all(fns: dict, device: str, cuda_graph: bool = True) -> tuple[dict, bool]:
    """Time every function the same way; eager timing for all if a graph capture fails.
    Returns the times and whether they are graph replays."""
    if cuda_graph and device == "cuda":
        try:
            return {name: bench_ms(fn, device, True) for name, fn in fns.items()}, True
        except Exception as exc:  # capture is fragile across versions; timing must go on
            torch.cuda.synchronize()
            print(f"  CUDA-graph capture failed ({type(exc).__name__}: {exc}); timing eagerly", flush=True)
    return {name: bench_ms(fn, device, False) for name, fn in fns.items()}, False


def compiled(fn, device: str, **kwargs):
    """``torch.compile(fn, **kwargs)``; in a smoke run with dynamo's eager backend: the run
    checks that the function traces, not Inductor's CPU code generation, which is not what
    the GPU runs and takes minutes on a busy CPU."""
    if device != "cuda":
        return torch.compile(fn, backend="eager", dynamic=kwargs.get("dynamic"))
    return torch.compile(fn, **kwargs)
