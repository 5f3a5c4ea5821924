"""How fast the resource limits refuse, and what a small spec can make within them.

Each case is a hostile or oversized spec. It runs twice, side by side in one process: under
the previous defaults (no token limit, 100,000 nodes, 2,000,000 steps) and under today's
(``archdsl.limits.DEFAULT``); the table gives the CPU time of each, their ratio, what refused
the spec, and the work done (tokens parsed, expansion steps, nodes made). The ``build`` rows
time the whole of ``archdsl build`` (load, lower, emit the module source) and give the bytes
emitted (``--backend triton``: the source that calls the Triton kernels); the ``compile``
rows give the CPU time and peak memory of ``archdsl.compile`` in a child process. The ``draw``
rows time ``archdsl.draw.render(graph, "svg")`` of a chain of nested residual units in a child
process: every unit drawn open (as before ``DRAWN_DEPTH``, stopped after ``DRAW_TIMEOUT``
seconds) against today's picture, which opens the outermost 16 (the spec is loaded with
``max_nesting`` raised to the ceiling, 200, past 62).

    python benchmarks/bench_limits.py            # prints a markdown table
    python benchmarks/bench_limits.py --quick    # the same cases once each, no compile rows
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import archdsl  # noqa: E402
from archdsl.limits import DEFAULT, Limits, counting  # noqa: E402

#: The defaults before max_tokens existed and max_nodes/max_steps were lowered.
PREVIOUS = Limits(max_tokens=10 ** 9, max_nodes=100_000, max_steps=2_000_000, max_output_bytes=10 ** 12)

CASES = [
    ("240 KB of {1+1+...}", "net a : 3x8x8 { conv3-{1" + "+1" * 120_000 + "} }"),
    ("240 KB of statements", "net a : 3x8x8 {\n" + "conv3-4\n" * 30_000 + "}\n"),
    ("100,000 nested '('", "net a : 3x8x8 { conv3-{" + "(" * 100_000 + "4" + ")" * 100_000 + "} }"),
    ("max_nodes bomb (block x10000 of x10000)", "block a() { conv3-4 x10000 }\nnet n : 3x8x8 { a() x10000 }"),
    ("max_steps bomb (empty blocks)", "block a() { relu x0 }\nblock b() { a() x10000 }\nblock c() { b() x10000 }\n"
                                      "net n : 3x8x8 { c() x10000; relu }"),
    ("32 bytes: conv3-4 x10000", "net a : 3x8x8 { conv3-4 x10000 }"),
    ("54 bytes: 80,000 nodes", "block a() { conv3-4 x9999 }\nnet n : 3x8x8 { a() x4 }"),
    ("32 bytes within the limits: conv3-4 x4999", "net a : 3x8x8 { conv3-4 x4999 }"),
    ("digits in a layer name (4301)", "net a : 3x8x8 { conv" + "9" * 4301 + "-4 }"),
    ("ResNet-1202 (cifar_resnet n=200), for scale", None),
]
#: The cases that build and compile within the previous defaults; the last of them, within
#: today's too: the most a 32-byte spec can make (9,999 nodes, one under max_nodes).
SMALL_BUT_COSTLY = (5, 6, 7)


def cpu(fn) -> tuple[float, object]:
    start = time.process_time()
    try:
        result = fn()
    except archdsl.SpecError as err:
        result = err
    return time.process_time() - start, result


def outcome(result) -> str:
    if isinstance(result, archdsl.SpecError):
        limit = next((w for w in result.message.replace("(", " ").replace(")", " ").split() if w.startswith("max_")),
                     None)
        return f"refused: {limit}" if limit else "refused: " + result.message[:30]
    if isinstance(result, archdsl.ArchGraph):
        return f"ok, {len(result):,} nodes"
    return "ok"


def load_case(text: str | None, limits: Limits):
    if text is None:
        return lambda: archdsl.load("cifar_resnet", n=200, limits=limits)
    return lambda: archdsl.loads(text, limits=limits)


def build_case(text: str | None, limits: Limits, backend: str = "torch"):
    from archdsl.codegen.torch_source import emit_source
    from archdsl.pipeline import lower_graph

    def run():
        graph = load_case(text, limits)()
        source = emit_source(lower_graph(graph, backend), backend)
        if len(source) > limits.max_output_bytes:
            raise archdsl.SpecError(f"{len(source)} bytes (limit max_output_bytes)")
        return source
    return run


#: Nesting depths of the draw rows, and how long a child drawing every unit open may take.
DRAW_DEPTHS = (62, 100, 198)
DRAW_TIMEOUT = 300


def nested_units(n: int) -> str:
    return "net deep : 3x8x8 { conv3-4; " + "residual { " * n + "conv3-4" + " }" * n + " }"


def draw_cpu(n: int, drawn_depth: int | None) -> str:
    """CPU seconds to lay out and render the picture of ``nested_units(n)``, in a child process."""
    code = ("import sys, time\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "import archdsl, archdsl.draw as draw\n"
            "from archdsl.limits import Limits\n"
            f"graph = archdsl.loads({nested_units(n)!r}, limits=Limits(max_nesting=200, max_call_depth=200))\n"
            + (f"draw.DRAWN_DEPTH = {drawn_depth}\n" if drawn_depth else "")
            + "start = time.process_time()\n"
            "draw.render(graph, 'svg')\n"
            "print(f'{time.process_time() - start:.2f}', len(draw.cut(graph).boxes))\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=DRAW_TIMEOUT).stdout.split()
    except subprocess.TimeoutExpired:
        return f"stopped after {DRAW_TIMEOUT} s (wall clock)"
    return f"{out[0]} s ({out[1]} boxes)"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def compile_peak(text: str, limits: Limits) -> str:
    """The outcome, CPU time and peak resident memory (MB) of a child process that compiles the spec."""
    script = (
        "import sys, time, archdsl\n"
        f"limits = archdsl.Limits(**{limits.__dict__!r})\n"
        "start = time.process_time()\n"
        "try:\n"
        "    archdsl.compile(archdsl.loads(sys.stdin.read(), limits=limits)); what = 'ok'\n"
        "except archdsl.SpecError as err:\n"
        "    what = 'refused'\n"
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would be the parent's
        "peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(what, int(peak) // 1024, f'{time.process_time() - start:.2f}')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], input=text, capture_output=True, text=True, env=env)
    what, mb, seconds = (done.stdout.split() + ["error", "?", "?"])[:3]
    return f"{seconds} s ({what}), {mb} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one run per case, no compile-memory rows")
    args = ap.parse_args()

    import torch

    print(f"Device: {platform.machine()} CPU, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; Python {platform.python_version()}, torch {torch.__version__}, "
          f"archdsl {archdsl.__version__}. Date: {datetime.date.today()}. CPU time (process_time), "
          f"best of {1 if args.quick else 3}.")
    print("Command: `python benchmarks/bench_limits.py" + (" --quick`" if args.quick else "`"))
    print()
    print("| case | previous defaults | today's defaults | previous / today | today: tokens, steps, nodes |")
    print("| --- | --- | --- | ---: | --- |")
    repeat = 1 if args.quick else 3
    for name, text in CASES:
        if name.startswith("54 bytes") and args.quick:
            continue
        row = []
        for limits in (PREVIOUS, DEFAULT):
            best, result = min((cpu(load_case(text, limits)) for _ in range(repeat)), key=lambda r: r[0])
            row.append((best, outcome(result)))
        with counting() as work:
            cpu(load_case(text, DEFAULT))
        (t0, o0), (t1, o1) = row
        print(f"| load: {name} | {t0:.3f} s ({o0}) | {t1:.3f} s ({o1}) | {t0 / max(t1, 1e-4):.1f}x | "
              f"{work.tokens:,}, {work.steps:,}, {work.nodes:,} |")
    builds = [(name, text, "torch") for name, text in [CASES[i] for i in SMALL_BUT_COSTLY] + [CASES[-1]]]
    if not args.quick:
        builds += [(name, text, "triton") for name, text in [CASES[i] for i in SMALL_BUT_COSTLY]]
    for name, text, backend in builds:
        row = []
        for limits in (PREVIOUS, DEFAULT):  # once each: the previous defaults take many seconds here
            best, result = cpu(build_case(text, limits, backend))
            size = f"{_size(len(result))} emitted" if isinstance(result, str) else outcome(result)
            row.append((best, size))
        (t0, o0), (t1, o1) = row
        flag = " --backend triton" if backend == "triton" else ""
        print(f"| build{flag}: {name} | {t0:.3f} s ({o0}) | {t1:.3f} s ({o1}) | {t0 / max(t1, 1e-4):.1f}x | |")
    if not args.quick:
        for name, text in [CASES[i] for i in SMALL_BUT_COSTLY]:
            print(f"| compile: {name}, CPU time and peak memory | {compile_peak(text, PREVIOUS)} | "
                  f"{compile_peak(text, DEFAULT)} | | |")
    for n in DRAW_DEPTHS if not args.quick else DRAW_DEPTHS[:1]:
        print(f"| draw svg: {n} nested residual units, every unit open vs the outermost 16 | "
              f"{draw_cpu(n, 10 ** 6)} | {draw_cpu(n, None)} | | |")


if __name__ == "__main__":
    main()
