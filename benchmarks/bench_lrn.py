"""Benchmark of the Triton local response normalisation (forward and backward) on a CUDA GPU.

At AlexNet's two LRN shapes (128x96x55x55 after conv1, 128x256x27x27 after conv2) and VGG
A-LRN's (64x64x224x224), in fp32 and bf16, NCHW and channels_last, with the paper's
parameters (n=5, alpha=1e-4, beta=0.75, k=2), it times

    Triton     archdsl's lrn kernels (autotuned); the backward is the kernel alone
    eager      F.local_response_norm (alpha * n, since it averages), backward via autograd
    compile    torch.compile of that same function, backward via its compiled graph

as CUDA-graph replays (triton.testing.do_bench_cudagraph, median), so that the Python launch
path (tens of microseconds, about a kernel's time here) is not timed; ``--no-cuda-graph``
times plain calls with do_bench instead (L2 flushed before each call). It reports achieved
bandwidth counting each tensor once (forward: read x, write y; backward: read x and dL/dy,
write dL/dx) as a share of a plain device-to-device copy's, measured first. Before timing a
row the Triton result is checked against a float64 reference (relative error; a mismatch
stops the run), and unless --no-validate every autotune candidate for it is run and checked.

    python benchmarks/bench_lrn.py            # 24 rows, a few minutes on an H100
    python benchmarks/bench_lrn.py --quick    # AlexNet's first LRN shape only
    python benchmarks/bench_lrn.py --smoke    # the whole script on the CPU, tiny shape (a check)
    python benchmarks/bench_lrn.py --sass --quick --dtypes bf16   # no GPU: static SASS figures

``--sass`` needs no GPU: it compiles every autotune candidate of each row for sm_90 (the
H100) with the installed Triton, as ``archdsl kernels`` does, and reports per config the
registers per thread, spills, and the SASS the kernel issues per element (every kernel is
straight-line code, so its instruction count is what each thread executes), global loads and
stores per element and their widths. These are static figures, not speeds. ``--kernels
FILE`` takes the kernels from another version of ``codegen/triton/lrn.py`` (to compare).

No new row is started after ``--budget-s`` seconds (default 480, so a full run fits a
10-minute command); the rows left out are listed under the table.

The markdown table goes to ``$OUT/lrn.md`` when ``OUT`` is set (rewritten after every row,
so a run cut short still leaves its rows) and is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402  (benchmarks/common.py)

SHAPES = [
    ("AlexNet LRN1", (128, 96, 55, 55)),
    ("AlexNet LRN2", (128, 256, 27, 27)),
    ("VGG A-LRN", (64, 64, 224, 224)),
]
SMOKE_SHAPES = [("smoke", (2, 7, 5, 3))]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
# The AlexNet paper's parameters, summed window (mode="sum"); F.local_response_norm averages,
# so it gets alpha * SIZE.
SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0
# Relative-norm error allowed against float64: fp32 computes in fp32 (the GPU's exp2/log2 are
# approximations good to about 2**-22); bf16 rounds its inputs' gradient and its outputs.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
INPUT_SCALE = 10.0  # so that alpha * S is not negligible next to k in the check


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one shape (AlexNet LRN1) only")
    for name, choices in (("dtypes", DTYPES), ("layouts", LAYOUTS)):
        p.add_argument(f"--{name}", default=",".join(choices),
                       help=f"comma-separated subset of {', '.join(choices)}")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--no-validate", action="store_true", help="skip running every autotune candidate first")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="time plain calls (Python launch path included) instead of CUDA-graph replays")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="start no new row after this many seconds (the table is still written; 0: no limit)")
    p.add_argument("--sass", action="store_true",
                   help="no GPU: compile every candidate for sm_90 and report registers, spills and SASS per element")
    p.add_argument("--kernels", default=None,
                   help="with --sass: a file to take the LRN kernels from instead of codegen/triton/lrn.py")
    common.add_smoke_flag(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.dtypes = "fp32"  # the interpreter has no bfloat16
    for name, allowed in (("dtypes", DTYPES), ("layouts", LAYOUTS)):
        chosen = [v for v in getattr(args, name).split(",") if v]
        bad = [v for v in chosen if v not in allowed]
        if bad or not chosen:
            p.error(f"--{name}: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
        setattr(args, name, chosen)
    return args


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    return ((actual - expected).norm() / expected.norm()).item()


def copy_bandwidth_gbs(device="cuda", cuda_graph=True) -> float:
    """Device-to-device copy of 1 GiB, counting bytes read and written."""
    src = torch.empty(2**28 if device == "cuda" else 2**20, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = common.bench_ms(lambda: dst.copy_(src), device, cuda_graph)
    return 2 * src.numel() * src.element_size() / ms / 1e6


def reference(x: torch.Tensor, grad_y: torch.Tensor, lrn_reference):
    """float64 forward and input gradient of the explicit-window reference."""
    xd = x.detach().double().requires_grad_(True)
    yd = lrn_reference(xd, SIZE, ALPHA, BETA, K, mode="sum")
    (gd,) = torch.autograd.grad(yd, xd, grad_y.double())
    return yd.detach(), gd


def candidates(lrn_module, tuned, x: torch.Tensor):
    """The autotune candidates the kernel would try for x (same folding as the launcher)."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        named = {"C": c, "P": h * w, "stride_xc": h * w}
    else:  # channels_last: the batch folds into the pixel axis
        named = {"C": c, "P": n * h * w, "stride_xc": 1}
    return lrn_module._prune_configs(tuned.configs, named, SIZE=SIZE)


def describe(config) -> str:
    if config is None:
        return "-"
    return f"{config.kwargs['BLOCK_C']}x{config.kwargs['BLOCK_P']} w{config.num_warps}"


def render(header: list[str], rows: list[list[str]], skipped: list[str]) -> str:
    lines = header + ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if skipped:
        lines += ["", f"Not measured (time budget): {', '.join(skipped)}"]
    return "\n".join(lines) + "\n"


COLUMNS = [
    "shape", "dtype", "layout", "pass", "Triton ms", "GB/s", "% of copy", "tile",
    "eager ms", "eager / Triton", "compile ms", "compile / Triton", "rel. error",
]


_SASS_MEMORY = re.compile(r"\b(LDG|STG)(\.E)?(?:\.(U8|S8|U16|S16|64|128))?\b")
_WIDTHS = {None: 4, "U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}


def sass_figures(sass: str) -> tuple[int, dict[str, int]]:
    """(instructions, {"LDG.128": count, ...}) of a kernel's nvdisasm listing, NOPs left out;
    global accesses are keyed by their width in bytes."""
    from archdsl.codegen.triton import aot

    instructions, memory = 0, {}
    for line in sass.splitlines():
        match = aot._SASS_LINE.match(line)
        if match is None or not match.group(2) or re.search(r"\bNOP\b", match.group(2)):
            continue
        instructions += 1
        access = _SASS_MEMORY.search(match.group(2))
        if access:
            key = f"{access.group(1)}.{_WIDTHS[access.group(3)]}B"
            memory[key] = memory.get(key, 0) + 1
    return instructions, memory


def sass_report(args) -> int:
    """--sass: compile each row's autotune candidates for sm_90 and print their static figures."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("bench_lrn.py --sass: unset TRITON_INTERPRET (it compiles for sm_90)", file=sys.stderr)
        return 2
    import importlib.util

    import triton

    from archdsl.codegen.triton import aot

    if args.kernels:
        spec = importlib.util.spec_from_file_location("lrn_kernels", args.kernels)
        lrn_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lrn_module)
    else:
        from archdsl.codegen.triton import lrn as lrn_module
    triton_, GPUTarget, ASTSource, make_backend, create_function_from_signature = aot._triton()
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    shapes = SHAPES[:1] if args.quick else SHAPES
    print(f"# LRN kernels compiled for sm_90 (static figures, not speeds)\n\n"
          f"- triton {triton.__version__}, kernels from {args.kernels or 'codegen/triton/lrn.py'}\n"
          f"- LRN n={SIZE}, beta={BETA}; per element = per thread / elements per thread "
          f"(BLOCK_C x BLOCK_P / threads, padded channels included)\n")
    cols = ["shape", "dtype", "layout", "pass", "tile", "regs", "spill B", "elems/thread",
            "SASS/elem", "global accesses/elem (width: count)"]
    print("| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|")
    for name, shape in shapes:
        for dtype_name in args.dtypes:
            for layout_name in args.layouts:
                x = torch.empty(shape, dtype=DTYPES[dtype_name], device="meta")
                x = x.contiguous(memory_format=LAYOUTS[layout_name])
                for direction in ("fwd", "bwd"):
                    grad = None if direction == "fwd" else torch.empty_like(x)
                    _, tuned, fn, _, launch, meta = lrn_module.launch_args(x, SIZE, ALPHA, BETA, K, grad_y=grad)
                    named = dict(zip(fn.arg_names, launch))
                    binder = create_function_from_signature(fn.signature, fn.params, backend)
                    for cfg in tuned.early_config_prune(tuned.configs, named, **meta):
                        kwargs = dict(meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                        bound, specialization, options = binder(*launch, **kwargs)
                        options, signature, constexprs, attrs = fn._pack_args(
                            backend, kwargs, bound, specialization, options)
                        binary = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                                options=options.__dict__)
                        registers, spill = aot._resource_usage(binary.asm["cubin"])
                        sass = aot._run_tool("nvdisasm", ["-c"], binary.asm["cubin"]) or ""
                        instructions, memory = sass_figures(sass)
                        per_thread = cfg.kwargs["BLOCK_C"] * cfg.kwargs["BLOCK_P"] / (32 * cfg.num_warps)
                        accesses = ", ".join(f"{k}: {v / per_thread:.2f}" for k, v in sorted(memory.items()))
                        print(f"| {name} {'x'.join(map(str, shape))} | {dtype_name} | {layout_name} | {direction} | "
                              f"{describe(cfg)} | {registers} | {spill} | {per_thread:g} | "
                              f"{instructions / per_thread:.1f} | {accesses} |", flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sass:
        return sass_report(args)
    started = common.start("bench_lrn.py", args.smoke)
    if started is None:
        return 2
    device = started[0]  # the dtypes are the rows' (--smoke: fp32 only)

    import triton

    from archdsl.codegen.triton import lrn as lrn_module
    from archdsl.codegen.triton.lrn import lrn_reference

    shapes = SMOKE_SHAPES if args.smoke else SHAPES[:1] if args.quick else SHAPES
    graph = not args.no_cuda_graph
    copy_gbs = copy_bandwidth_gbs(device, graph)
    header = [
        "# LRN (Triton) vs F.local_response_norm",
        "",
        common.device_line(device),
        f"- torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- LRN n={SIZE}, alpha={ALPHA} (summed window), beta={BETA}, k={K}; inputs N(0, {INPUT_SCALE}^2)",
        f"- device-to-device copy: {copy_gbs:.0f} GB/s (bytes read + written); "
        + ("times are wall-clock medians" if device != "cuda"
           else "times are medians of CUDA-graph replays (no launch path timed)" if graph
           else "times are medians of triton.testing.do_bench with the L2 flushed (launch path included)"),
        "- GB/s counts each tensor once: forward reads x and writes y, backward reads x and dL/dy "
        "and writes dL/dx; 'eager / Triton' and 'compile / Triton' are speed-ups (higher is better); "
        "a pass marked * could not be captured in a CUDA graph and was timed with plain calls",
        "",
    ]
    rows: list[list[str]] = []
    skipped: list[str] = []

    def write_table() -> str:
        return common.write_table(render(header, rows, skipped), "lrn.md")

    def fail(message: str) -> int:
        write_table()
        print(f"\nFAILED: {message}", file=sys.stderr)
        return 1

    def torch_lrn(x):
        return F.local_response_norm(x, SIZE, alpha=ALPHA * SIZE, beta=BETA, k=K)

    alpha = ALPHA  # mode="sum": the kernels take alpha as is
    started = time.time()
    for name, shape in shapes:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            gen = torch.Generator(device=device).manual_seed(0)
            x_nchw = (torch.randn(shape, device=device, generator=gen) * INPUT_SCALE).to(dtype)
            g_nchw = torch.randn(shape, device=device, generator=gen).to(dtype)
            y_ref, dx_ref = reference(x_nchw, g_nchw, lrn_reference)
            numel, elem = x_nchw.numel(), x_nchw.element_size()

            for layout_name in args.layouts:
                fmt = LAYOUTS[layout_name]
                x = x_nchw.contiguous(memory_format=fmt)
                g = g_nchw.contiguous(memory_format=fmt)
                label = f"{name} {'x'.join(map(str, shape))}"
                where = f"{label} {dtype_name} {layout_name}"

                for direction in ("fwd", "bwd"):
                    if args.budget_s and time.time() - started > args.budget_s:
                        skipped.append(f"{where} {direction}")
                        continue
                    tuned = lrn_module._lrn_fwd_tuned if direction == "fwd" else lrn_module._lrn_bwd_tuned
                    if direction == "fwd":
                        run = lambda block=None: lrn_module._lrn_forward(x, SIZE, alpha, BETA, K, block=block)
                        expected, nbytes = y_ref, 2 * numel * elem
                    else:
                        run = lambda block=None: lrn_module._lrn_backward(
                            x, g, SIZE, alpha, BETA, K, block=block)
                        expected, nbytes = dx_ref, 3 * numel * elem

                    if not args.no_validate:
                        for cfg in candidates(lrn_module, tuned, x):
                            block = (cfg.kwargs["BLOCK_C"], cfg.kwargs["BLOCK_P"], cfg.num_warps)
                            err = relative_error(run(block), expected)
                            if not err <= TOLERANCE[dtype]:
                                return fail(f"{where} {direction} tile {describe(cfg)}: "
                                            f"relative error {err:.3g}")

                    result = run()
                    err = relative_error(result, expected)
                    if not err <= TOLERANCE[dtype]:
                        return fail(f"{where} {direction}: relative error {err:.3g} > {TOLERANCE[dtype]:.0e}")
                    if not result.is_contiguous(memory_format=fmt):
                        return fail(f"{where} {direction}: result not in the input's memory format")
                    del result
                    tile = describe(getattr(tuned, "best_config", None))

                    # Baselines. Backward: the autograd graph of one forward, replayed.
                    torch._dynamo.reset()
                    compiled_lrn = None if args.no_compile else common.compiled(torch_lrn, device, dynamic=False)
                    fns = {"triton": run}
                    if direction == "fwd":
                        fns["eager"] = lambda: torch_lrn(x)
                        if compiled_lrn:
                            compiled_lrn(x)  # compile outside the timing
                            fns["compile"] = lambda: compiled_lrn(x)
                    else:
                        xr = x.detach().requires_grad_(True)
                        y_eager = torch_lrn(xr)
                        fns["eager"] = lambda: torch.autograd.grad(y_eager, xr, g, retain_graph=True)
                        if compiled_lrn:
                            y_comp = compiled_lrn(xr)
                            fns["compile"] = lambda: torch.autograd.grad(y_comp, xr, g, retain_graph=True)
                    times, graphed = common.time_all(fns, device, graph)
                    ms, eager_ms, compile_ms = times["triton"], times["eager"], times.get("compile")
                    del fns
                    if direction == "bwd":
                        del y_eager, xr
                        if compiled_lrn:
                            del y_comp
                    common.empty_cache(device)

                    gbs = nbytes / ms / 1e6
                    rows.append([
                        label, dtype_name, layout_name, direction + ("" if graphed or device != "cuda" else " *"),
                        f"{ms:.3f}", f"{gbs:.0f}",
                        f"{100 * gbs / copy_gbs:.0f}%", tile, f"{eager_ms:.3f}", f"{eager_ms / ms:.2f}x",
                        "-" if compile_ms is None else f"{compile_ms:.3f}",
                        "-" if compile_ms is None else f"{compile_ms / ms:.2f}x",
                        f"{err:.1e}",
                    ])
                    write_table()
                    print(f"[{time.time() - started:6.0f}s] {where} {direction}: {ms:.3f} ms, {gbs:.0f} GB/s "
                          f"({100 * gbs / copy_gbs:.0f}% of copy), eager {eager_ms / ms:.2f}x",
                          file=sys.stderr, flush=True)
            del x_nchw, g_nchw, y_ref, dx_ref
            common.empty_cache(device)

    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
