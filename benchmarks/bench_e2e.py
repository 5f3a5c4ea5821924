"""End-to-end inference throughput of whole networks built by archdsl, per backend.

For VGG-16 (``vgg_d``), ResNet-50 and AlexNet at batch 64, 224x224, bfloat16, channels_last,
in eval mode under ``torch.inference_mode``, it measures images/s of

    torch                archdsl's ``torch`` backend: PyTorch layers run eagerly (cuDNN)
    triton               archdsl's ``triton`` backend: conv -> BN -> ReLU chains fused into
                         one node (BN folded into the conv in eval mode), run by the Triton
                         implicit-GEMM kernel; LRN by the Triton LRN kernel
    compile              ``torch.compile`` of the torch-backend module (default mode)
    compile-max-autotune ``torch.compile(mode="max-autotune-no-cudagraphs")`` of the same

The ``torch`` and ``triton`` rows are measured twice: as plain calls, and as replays of a CUDA
graph that captured one forward (after the warm-up, on a static input buffer). A replay launches
every kernel of the net from one host call, so it shows what each backend's kernels take once
the Python launch path is gone; both are set beside ``torch.compile`` (its default mode, which
launches from Python too) in the same run. Without CUDA (``--smoke``) there are no graphs: those
cells read "n/a (no CUDA)".

And, for the LRN nets (AlexNet and VGG A-LRN, ``vgg_a_lrn``), a second table per backend with
one more variant, ``triton, LRN in PyTorch`` (the triton backend with its LRN layers switched
to PyTorch's), which separates what the LRN kernel gains from what the conv kernel gains.

Every module gets the same weights (the triton one loads the torch one's state_dict, BN
statistics randomised so the fold does something), and each output is checked against the
torch backend's before it is timed: a disagreement beyond bf16 tolerance stops the run. The
nets are built without their final softmax, so what is compared (and timed) ends at the
logits.

    python benchmarks/bench_e2e.py             # all nets and variants (torch.compile's
                                               # max-autotune takes minutes per net: what
                                               # does not fit --budget-s is listed, not run)
    python benchmarks/bench_e2e.py --quick     # ResNet-50 and AlexNet, no max-autotune
    python benchmarks/bench_e2e.py --smoke     # the whole script on the CPU, tiny nets (a check)

The markdown report goes to ``$OUT/e2e.md`` when ``OUT`` is set (``--out`` to choose a file),
rewritten after every measurement so a run cut short still leaves its rows, and is printed.
Needs a CUDA device; on a machine without one it says so and exits with status 2 (``--smoke``
runs on the CPU: a CIFAR ResNet (n=1) and a small LRN net at 16x16, fp32, no max-autotune).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402  (benchmarks/common.py)

BATCH = 64
SIZE = 224
DTYPE = torch.bfloat16

#: net name -> (bundled spec, spec parameters)
NETS = {
    "vgg16": ("vgg_d", {}),
    "resnet50": ("resnet50", {}),
    "alexnet": ("alexnet", {}),
}
LRN_NETS = {
    "alexnet": ("alexnet", {}),
    "vgg_a_lrn": ("vgg_a_lrn", {}),
}
QUICK_NETS = ("resnet50", "alexnet")
QUICK_LRN_NETS = ("alexnet",)
# --smoke: nets small enough for Triton's interpreter, with the same kinds of layer.
SMOKE_LRN_SPEC = """net smoke_lrn : 3x32x32 {
    conv5-16 pad=2; LRN; maxpool
    conv3-32 groups=2; LRN; maxpool
    fc-10; softmax
}
"""
SMOKE_NETS = {"cifar_resnet": ("cifar_resnet", {"n": 1})}
DEVICE = "cuda"

VARIANTS = ("torch", "triton", "compile", "compile-max-autotune")
#: the variants also timed as CUDA-graph replays (the torch.compile ones are not captured: their
#: default mode is what they are compared as)
GRAPH_VARIANTS = ("torch", "triton")
NO_CUDA = "n/a (no CUDA)"
LRN_VARIANTS = ("torch", "triton", "triton, LRN in PyTorch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"only {', '.join(QUICK_NETS)} (and {', '.join(QUICK_LRN_NETS)} for LRN), "
                        "no max-autotune")
    p.add_argument("--nets", help=f"comma-separated subset of {', '.join(NETS)}")
    p.add_argument("--lrn-nets", help=f"comma-separated subset of {', '.join(LRN_NETS)} ('' for none)")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--size", type=int, default=SIZE, help="input height = width")
    p.add_argument("--no-compile", action="store_true", help="skip both torch.compile variants")
    p.add_argument("--no-max-autotune", action="store_true", help="skip the max-autotune variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (autotuning happens here)")
    p.add_argument("--iters", type=int, default=10, help="calls per timed repetition")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (the median is reported)")
    p.add_argument("--out", help="markdown file to write (default $OUT/e2e.md when OUT is set)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="stop starting new measurements after this many seconds, so that a run fits a "
                        "10-minute command with its table written (default 480; 0: no limit)")
    common.add_smoke_flag(p)
    args = p.parse_args(argv)
    if args.smoke:
        smoke_spec = Path(tempfile.mkdtemp(prefix="bench_e2e-")) / "smoke_lrn.arch"
        smoke_spec.write_text(SMOKE_LRN_SPEC)
        NETS.clear()
        NETS.update(SMOKE_NETS)
        LRN_NETS.clear()
        LRN_NETS["smoke_lrn"] = (str(smoke_spec), {})
        args.nets = args.lrn_nets = None
        args.batch, args.size, args.no_max_autotune = 1, 8, True
        args.warmup, args.iters, args.reps = 0, 1, 1  # common.wall_ms makes its own untimed call

    def choose(text, table, quick):
        if text is None:
            return list(table if args.smoke else quick if args.quick else table)
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in table]
        if unknown:
            p.error(f"unknown net(s) {unknown}; choose from {list(table)}")
        return names

    args.nets = choose(args.nets, NETS, QUICK_NETS)
    args.lrn_nets = choose(args.lrn_nets, LRN_NETS, QUICK_LRN_NETS)
    variants = [v for v in VARIANTS
                if not (v.startswith("compile") and args.no_compile)
                and not (v == "compile-max-autotune" and (args.no_max_autotune or args.quick))]
    args.variants = variants
    if args.out is None and os.environ.get("OUT"):
        args.out = str(Path(os.environ["OUT"]) / "e2e.md")
    return args


# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    table: str  # "main" or "lrn"
    net: str
    variant: str
    ms: float  # median time per batch
    images_per_s: float
    err: float  # relative error of the logits against the torch backend's (nan for that one)
    note: str = ""
    graph_ms: float = float("nan")  # median time per batch of a CUDA-graph replay
    graph_images_per_s: float = float("nan")
    graph_note: str = ""  # why there is no graph_ms (no CUDA, capture failed, time budget)


def randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def prepare(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(device=DEVICE, dtype=DTYPE, memory_format=torch.channels_last).eval()


def time_ms(fn, x, args) -> float:
    """Median over ``reps`` of the mean time of ``iters`` back-to-back calls, CUDA events."""
    with torch.inference_mode():
        for _ in range(args.warmup):
            fn(x)
        if DEVICE != "cuda":
            return common.wall_ms(lambda: fn(x), args.reps)
        torch.cuda.synchronize()
        times = []
        for _ in range(args.reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                fn(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / args.iters)
    return statistics.median(times)


def capture(fn, x, args):
    """A CUDA graph of one ``fn`` call and its static input and output, or a reason why none.

    ``fn`` is called ``args.warmup`` (at least 3) times on a side stream first, as
    ``torch.cuda.graphs`` asks: autotuning, cuDNN's algorithm search and lazy allocations happen
    there, not in the capture. Replays read the input from the static buffer, so a new batch is
    a ``copy_`` into it.
    """
    if DEVICE != "cuda":
        return NO_CUDA
    static_x = x.clone()
    try:
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(args.warmup, 3)):
                    fn(static_x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_y = fn(static_x)
    except Exception as exc:  # what a backend does on the host may not be capturable
        torch.cuda.synchronize()
        return f"capture failed ({type(exc).__name__})"
    return graph, static_x, static_y


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def fused_summary(spec: str, params: dict, size: int) -> str:
    from archdsl.passes.fuse import fusion_summary
    from archdsl.pipeline import load, lower_graph

    return fusion_summary(lower_graph(load(spec, input=(3, size, size), **params), backend="triton"))


def build_variants(spec: str, params: dict, variants, args):
    """name -> callable, all with the torch-backend module's weights."""
    import archdsl

    from archdsl.passes.logits import drop_output_softmax

    # Without the final softmax: the outputs compared are the logits. (A softmax of random-weight
    # logits is often saturated to one-hot, which would hide a disagreement.)
    graph = drop_output_softmax(archdsl.load(spec, input=(3, args.size, args.size), **params))
    torch.manual_seed(0)
    ref = archdsl.compile(graph)
    randomise_bn(ref)
    state = ref.state_dict()
    ref = prepare(ref)
    fns = {}
    for v in variants:
        if v == "torch":
            fns[v] = ref
        elif v.startswith("triton"):
            tri = archdsl.compile(graph, backend="triton")
            if tri.backend != "triton":
                raise SystemExit("bench_e2e.py: the triton backend fell back to PyTorch ops (see the warning)")
            tri.load_state_dict(state, strict=True)
            if v == "triton, LRN in PyTorch":
                for m in tri.modules():
                    if hasattr(m, "backend") and type(m).__name__ == "LocalResponseNorm":
                        m.backend = "torch"
            fns[v] = prepare(tri)
        elif v == "compile":
            torch._dynamo.reset()
            fns[v] = common.compiled(ref, DEVICE)
        elif v == "compile-max-autotune":
            torch._dynamo.reset()
            fns[v] = common.compiled(ref, DEVICE, mode="max-autotune-no-cudagraphs")
        else:
            raise AssertionError(v)
    return fns


def measure_net(table: str, net: str, spec: str, params: dict, variants, args, emit, deadline) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    x = x.to(device=DEVICE, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
    fns = build_variants(spec, params, variants, args)
    with torch.inference_mode():
        reference = fns["torch"](x).float()
    for variant, fn in fns.items():
        if deadline and time.time() > deadline:
            emit(Result(table, net, variant, float("nan"), float("nan"), float("nan"), "not run (time budget)"))
            continue
        t0 = time.time()
        with torch.inference_mode():
            y = fn(x).float()  # compiles / autotunes on the first call
        setup_s = time.time() - t0
        err = rel_err(y, reference) if variant != "torch" else float("nan")
        # bf16 activations and weights (the folded ones rounded once more): a few 1e-3 expected
        if variant != "torch" and not err < 5e-2:
            raise SystemExit(f"bench_e2e.py: {net} [{variant}] disagrees with the torch backend: "
                             f"relative error of the logits {err:.3g}")
        ms = time_ms(fn, x, args)
        result = Result(table, net, variant, ms, args.batch / (ms / 1e3), err,
                        f"first call {setup_s:.0f} s" if setup_s >= 1 else "")
        print(f"  {net:10s} {variant:24s} {ms:8.2f} ms  {args.batch / (ms / 1e3):9.0f} img/s", flush=True)
        if table == "main" and variant in GRAPH_VARIANTS:
            measure_graph(result, fn, x, reference, args, deadline)
        emit(result)
    del fns
    common.empty_cache(DEVICE)


def measure_graph(result: Result, fn, x, reference, args, deadline) -> None:
    """Time ``fn`` as CUDA-graph replays into ``result.graph_ms`` (or say why not in
    ``result.graph_note``), after checking the replayed logits as the plain call's were."""
    if deadline and time.time() > deadline:
        result.graph_note = "not run (time budget)"
        return
    captured = capture(fn, x, args)
    if isinstance(captured, str):
        result.graph_note = captured
        return
    graph, static_x, static_y = captured
    static_x.copy_(x)
    graph.replay()
    err = rel_err(static_y.float(), reference)
    if result.variant != "torch" and not err < 5e-2:
        raise SystemExit(f"bench_e2e.py: {result.net} [{result.variant}, CUDA graph] disagrees with the torch "
                         f"backend: relative error of the logits {err:.3g}")
    result.graph_ms = time_ms(lambda _x: graph.replay(), static_x, args)
    result.graph_images_per_s = args.batch / (result.graph_ms / 1e3)
    print(f"  {result.net:10s} {result.variant + ', CUDA graph':24s} {result.graph_ms:8.2f} ms  "
          f"{result.graph_images_per_s:9.0f} img/s", flush=True)


def fmt(v: float, spec: str) -> str:
    return "-" if v != v else format(v, spec)


def render(header: list[str], results: list[Result], fused: dict[str, str]) -> str:
    out = list(header)
    for table, title, variants in (
        ("main", "## Whole networks", VARIANTS),
        ("lrn", "## LRN networks (AlexNet, VGG A-LRN) per backend", LRN_VARIANTS),
    ):
        rows = [r for r in results if r.table == table]
        if not rows:
            continue
        base = {r.net: r.images_per_s for r in rows if r.variant == "torch"}
        graphs = table == "main"
        columns = ["net", "variant", "ms / batch", "images/s", "vs torch"]
        if graphs:
            columns += ["vs compile", "CUDA graph: ms / batch", "CUDA graph: images/s", "CUDA graph: vs compile"]
        columns += ["rel. err of logits", "note"]
        out += ["", title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        compile_ms = {r.net: r.ms for r in rows if r.variant == "compile"}
        for r in rows:
            speed = r.images_per_s / base[r.net] if r.net in base else float("nan")
            cells = [r.net, r.variant, fmt(r.ms, ".2f"), fmt(r.images_per_s, ".0f"), fmt(speed, ".2f")]
            if graphs:
                versus = compile_ms.get(r.net, float("nan"))
                cells.append(fmt(versus / r.ms, ".2f") if r.variant != "compile" else "1.00")
                if r.variant not in GRAPH_VARIANTS:
                    cells += ["-", "-", "-"]
                elif r.graph_ms == r.graph_ms:
                    cells += [fmt(r.graph_ms, ".2f"), fmt(r.graph_images_per_s, ".0f"),
                              fmt(versus / r.graph_ms, ".2f")]
                else:
                    cells += [r.graph_note or "-"] * 3
            cells += [fmt(r.err, ".2g"), r.note]
            out.append("| " + " | ".join(cells) + " |")
    if fused:
        out += ["", "Fused by the triton backend: "
                + "; ".join(f"{net}: {text}" for net, text in fused.items())]
    out += ["", "vs torch: throughput relative to archdsl's torch backend (eager PyTorch, cuDNN); > 1 is faster. "
            "vs compile: the same relative to torch.compile (default mode) of the torch backend's module. "
            "CUDA graph: the row's module captured in a CUDA graph after its warm-up and replayed "
            "(the torch.compile rows are not captured)."]
    return "\n".join(out)


def main(argv=None) -> int:
    global DEVICE, DTYPE
    args = parse_args(argv)
    started = common.start("bench_e2e.py", args.smoke, DTYPE)
    if started is None:
        return 2
    DEVICE, DTYPE = started

    import triton

    torch.backends.cudnn.benchmark = True
    header = [
        "# End-to-end inference throughput: archdsl backends vs eager PyTorch vs torch.compile",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        common.device_line(DEVICE),
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
        f"triton {triton.__version__}",
        f"- batch {args.batch}, {args.size}x{args.size}, {str(DTYPE).replace('torch.', '')}, channels_last, "
        "eval mode, torch.inference_mode",
        f"- timing: median over {args.reps} repetitions of {args.iters} back-to-back calls (CUDA events), "
        f"after {args.warmup} warm-up calls (Triton autotuning, torch.compile compilation); "
        "CUDA graph columns: the same timing of graph replays, the input in the graph's static buffer",
    ]
    results: list[Result] = []
    fused: dict[str, str] = {}

    def emit(result: Result) -> None:
        results.append(result)
        common.write_table(render(header, results, fused), "e2e.md", args.out)

    deadline = time.time() + args.budget_s if args.budget_s else 0.0
    for net in args.nets:
        spec, params = NETS[net]
        fused[net] = fused_summary(spec, params, args.size)
        print(f"{net}: {fused[net]}", flush=True)
        measure_net("main", net, spec, params, args.variants, args, emit, deadline)
    for net in args.lrn_nets:
        spec, params = LRN_NETS[net]
        fused.setdefault(net, fused_summary(spec, params, args.size))
        print(f"{net} (LRN): {fused[net]}", flush=True)
        measure_net("lrn", net, spec, params, LRN_VARIANTS, args, emit, deadline)

    text = common.write_table(render(header, results, fused), "e2e.md", args.out)
    print()
    print(text)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
