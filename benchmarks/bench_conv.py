"""Per-layer benchmark of the fused Triton convolution (conv + bias + ReLU) on a CUDA GPU.

For every distinct convolution shape of VGG-16, AlexNet and ResNet-50 (v1: the stride sits
on the first 1x1 of a downsampling bottleneck) at batch 64, 224x224, bf16, channels_last,
it times

    Triton     archdsl's FusedConv2d (implicit-GEMM kernel, bias and ReLU fused, autotuned)
    cuDNN      F.relu(F.conv2d(x, w, b, ...)) in eager mode (cudnn.benchmark on)
    cuDNN conv F.conv2d(x, w) alone: kernel against kernel, without the fusion's gain
    compile    torch.compile of that same function (default mode)

and reports time and TFLOP/s (2 * MACs / time) with speed ratios, after checking each
shape's Triton output against F.conv2d in fp32 (a mismatch stops the run). Before that,
every autotune configuration is run once and checked (``validate_configs``), and the bf16
matmul ceiling (8192^3) is measured for scale.

    python benchmarks/bench_conv.py                    # all 34 distinct shapes
    python benchmarks/bench_conv.py --quick            # a handful of shapes
    python benchmarks/bench_conv.py --nets ResNet-50 --no-compile
    python benchmarks/bench_conv.py --smoke            # the whole script on the CPU (a check)

A full run is meant to fit in 10 minutes: no new shape is started after ``--budget-s``
(480 s by default); the ones left out are listed under the table.

The markdown table goes to ``$OUT/conv.md`` when ``OUT`` is set (rewritten after every
shape, so a run cut short still leaves its rows) and is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402  (benchmarks/common.py)

BATCH = 64
DTYPE = torch.bfloat16
DEVICE = "cuda"


@dataclass(frozen=True)
class ConvShape:
    c_in: int
    c_out: int
    hw: int  # input height = width
    k: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.padding - self.k) // self.stride + 1

    def macs(self, batch: int) -> int:
        return batch * self.out_hw**2 * self.c_out * (self.c_in // self.groups) * self.k * self.k

    def __str__(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (
            f"{self.c_in}->{self.c_out} {self.k}x{self.k}/{self.stride} p{self.padding}{g} "
            f"@{self.hw}->{self.out_hw}"
        )


def vgg16() -> list[tuple[str, ConvShape]]:
    layers, c_in, hw = [], 3, 224
    for stage, (width, n) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for i in range(1, n + 1):
            layers.append((f"conv{stage}_{i}", ConvShape(c_in, width, hw, 3, 1, 1)))
            c_in = width
        hw //= 2
    return layers


def alexnet() -> list[tuple[str, ConvShape]]:
    # The two-GPU original: conv2, conv4 and conv5 are grouped; 224 input, conv1 padding 2.
    return [
        ("conv1", ConvShape(3, 96, 224, 11, 4, 2)),  # -> 55, pool -> 27
        ("conv2", ConvShape(96, 256, 27, 5, 1, 2, groups=2)),  # pool -> 13
        ("conv3", ConvShape(256, 384, 13, 3, 1, 1)),
        ("conv4", ConvShape(384, 384, 13, 3, 1, 1, groups=2)),
        ("conv5", ConvShape(384, 256, 13, 3, 1, 1, groups=2)),
    ]


def resnet50() -> list[tuple[str, ConvShape]]:
    layers = [("conv1", ConvShape(3, 64, 224, 7, 2, 3))]
    c_in, hw = 64, 56  # after the 3x3/2 max-pool
    for stage, (width, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
    ):
        for b in range(blocks):
            s = stride if b == 0 else 1
            name = f"layer{stage}.{b}"
            layers.append((f"{name}.conv1", ConvShape(c_in, width, hw, 1, s, 0)))  # v1: stride here
            out_hw = (hw - 1) // s + 1
            layers.append((f"{name}.conv2", ConvShape(width, width, out_hw, 3, 1, 1)))
            layers.append((f"{name}.conv3", ConvShape(width, 4 * width, out_hw, 1, 1, 0)))
            if b == 0:
                layers.append((f"{name}.downsample", ConvShape(c_in, 4 * width, hw, 1, s, 0)))
            c_in, hw = 4 * width, out_hw
    return layers


def smoke() -> list[tuple[str, ConvShape]]:
    """Tiny layers of each kind (first layer, 3x3, grouped 5x5, strided 1x1) for --smoke."""
    return [
        ("first", ConvShape(3, 16, 5, 3, 1, 1)),
        ("3x3", ConvShape(16, 32, 5, 3, 1, 1)),
        ("grouped", ConvShape(32, 32, 4, 5, 1, 2, groups=2)),
        ("1x1/2", ConvShape(32, 16, 6, 1, 2, 0)),
    ]


NETS = {"VGG-16": vgg16, "AlexNet": alexnet, "ResNet-50": resnet50}

QUICK = {
    "VGG-16": {"conv1_1", "conv3_2"},
    "AlexNet": {"conv2"},
    "ResNet-50": {"layer1.0.conv3", "layer3.0.downsample"},
}


def distinct_shapes(layers):
    """[(shape, [layer names])] in first-appearance order."""
    by_shape: dict[ConvShape, list[str]] = {}
    for name, shape in layers:
        by_shape.setdefault(shape, []).append(name)
    return list(by_shape.items())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few representative shapes only")
    p.add_argument("--nets", default=",".join(NETS), help=f"comma-separated subset of {', '.join(NETS)}")
    p.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--no-validate", action="store_true", help="skip running every autotune config first")
    p.add_argument(
        "--no-cuda-graph", action="store_true",
        help="time plain calls (includes Python launch overhead) instead of CUDA-graph replays",
    )  # fmt: skip
    p.add_argument(
        "--budget-s", type=float, default=480.0,
        help="stop starting new shapes after this many seconds (the table is still written)",
    )  # fmt: skip
    common.add_smoke_flag(p)
    args = p.parse_args(argv)
    if args.smoke:
        NETS["smoke"] = smoke
        args.nets, args.batch, args.no_cuda_graph = "smoke", 1, True
    args.nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in args.nets if n not in NETS]
    if unknown:
        p.error(f"unknown net(s) {unknown}; choose from {list(NETS)}")
    return args


# ---------------------------------------------------------------------------------------------


def matmul_ceiling_tflops(cuda_graph: bool) -> float:
    n = 8192 if DEVICE == "cuda" else 256
    a = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    b = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    ms, _ = common.time_all({"matmul": lambda: a @ b}, DEVICE, cuda_graph)
    return 2 * n**3 / (ms["matmul"] * 1e-3) / 1e12


def validate_all_configs() -> None:
    """Run every autotune config of both kernels (and a grouped layer) and stop on a bad one."""
    from archdsl.codegen.triton import conv_check  # after common.start set the mode

    checks = [
        dict(
            batch=4, in_channels=64, out_channels=96, height=23, width=19, kernel_size=3, stride=1, padding=1
        ),
        dict(
            batch=4, in_channels=96, out_channels=128, height=15, width=15, kernel_size=5, padding=2, groups=2
        ),
        dict(
            batch=4, in_channels=3, out_channels=64, height=45, width=45, kernel_size=7, stride=2, padding=3
        ),
    ]
    failures = []
    for kw in checks:
        if DEVICE != "cuda":  # the interpreter: the same kinds of layer, smaller
            kw = dict(kw, batch=1, height=min(kw["height"], 5), width=min(kw["width"], 5),
                      in_channels=min(kw["in_channels"], 16), out_channels=min(kw["out_channels"], 16))
        for res in conv_check.validate_configs(**kw, dtype=DTYPE, device=DEVICE):
            status = "ok " if res.ok else "BAD"
            print(
                f"  {status} {res.kernel:27s} {res.config:70s} err={res.rel_err:.2e} {res.note}", flush=True
            )
            if not res.ok:
                failures.append((kw, res))
    if failures:
        lines = "\n".join(f"  {kw}: {r.kernel} {r.config}: {r.note}" for kw, r in failures)
        raise SystemExit(
            f"autotune configs give wrong results -- remove them before trusting timings:\n{lines}"
        )


def check_correct(y: torch.Tensor, x, w, b, shape: ConvShape, where: str) -> float:
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ref = F.relu(F.conv2d(x.float(), w.float(), b.float(), shape.stride, shape.padding, 1, shape.groups))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    if y.shape != ref.shape:
        raise SystemExit(f"MISMATCH {where}: output shape {tuple(y.shape)} != {tuple(ref.shape)}")
    if not torch.isfinite(y).all():
        raise SystemExit(
            f"MISMATCH {where}: output has {int((~torch.isfinite(y)).sum())} non-finite elements"
        )
    rel = float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    # bf16 output rounding alone gives ~2e-3.
    if rel > 1e-2:
        raise SystemExit(f"MISMATCH {where}: relative error {rel:.3e} vs F.conv2d (limit 1e-2)")
    return rel


def chosen_tile(conv, shape: ConvShape) -> str:
    """The config the autotuner picked for the last launch, e.g. 'small-C 128x64x32 w4 s3'."""
    from archdsl.codegen.triton import conv_kernels, conv_tuning  # after common.start set the mode

    small_c = conv_tuning.uses_small_c_kernel(shape.c_in // shape.groups)
    kernel = conv_kernels.conv2d_fwd_small_c_kernel if small_c else conv_kernels.conv2d_fwd_kernel
    best = getattr(kernel, "best_config", None)
    if best is None:
        return "-"
    k = best.kwargs
    tile = f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{best.num_warps} s{best.num_stages}"
    return f"small-C {tile}" if small_c else tile


@dataclass
class Row:
    net: str
    layers: list[str]
    shape: ConvShape
    gflop: float
    ms: dict  # impl -> ms (nan when not measured)
    tile: str
    err: float
    same_timing: bool  # timed the way the header says (False: graph capture failed)


def tflops(gflop: float, ms: float) -> float:
    return gflop / ms  # GFLOP / ms == TFLOP/s


def fmt(v: float, spec: str) -> str:
    return "-" if v != v else format(v, spec)  # nan -> "-"


def render(header: list[str], rows: list[Row], totals: dict, skipped: list[str]) -> str:
    out = list(header)
    out.append("")
    out.append(
        "| net | layers | shape (C_in->C_out kxk/stride pad groups @H_in->H_out) | GFLOP "
        "| Triton ms | Triton TFLOP/s | cuDNN ms | cuDNN TFLOP/s | cuDNN conv ms | cuDNN conv TFLOP/s "
        "| compile ms | compile TFLOP/s | cuDNN/Triton | cuDNN conv/Triton | compile/Triton | Triton tile "
        "| rel err |"
    )
    out.append("|" + "---|" * 17)
    for r in rows:
        t, c, k, cc = r.ms["triton"], r.ms["cudnn"], r.ms["compile"], r.ms["cudnn conv"]
        names = r.layers[0] if len(r.layers) == 1 else f"{r.layers[0]} (+{len(r.layers) - 1})"
        if not r.same_timing:
            names += " *"
        out.append(
            f"| {r.net} | {names} | {r.shape} | {r.gflop:.1f} "
            f"| {fmt(t, '.3f')} | {fmt(tflops(r.gflop, t), '.0f')} "
            f"| {fmt(c, '.3f')} | {fmt(tflops(r.gflop, c), '.0f')} "
            f"| {fmt(cc, '.3f')} | {fmt(tflops(r.gflop, cc), '.0f')} "
            f"| {fmt(k, '.3f')} | {fmt(tflops(r.gflop, k), '.0f')} "
            f"| {fmt(c / t, '.2f')} | {fmt(cc / t, '.2f')} | {fmt(k / t, '.2f')} | {r.tile} | {r.err:.1e} |"
        )
    if totals:
        out.append("")
        out.append("Whole-network convolution time (every layer, repeats counted; measured shapes only):")
        out.append("")
        out.append(
            "| net | layers measured | Triton ms | cuDNN ms | compile ms | cuDNN/Triton | compile/Triton |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for net, (n, t, c, k) in totals.items():
            out.append(
                f"| {net} | {n} | {t:.2f} | {c:.2f} | {fmt(k, '.2f')} | {c / t:.2f} | {fmt(k / t, '.2f')} |"
            )
    out.append("")
    out.append("Ratios are speed-ups of the Triton kernel (> 1: Triton faster). Times are medians.")
    if not all(r.same_timing for r in rows):
        out.append("*: CUDA-graph capture failed for this shape; all four timed with plain calls.")
    if skipped:
        out.append(f"Not measured (time budget): {', '.join(skipped)}")
    return "\n".join(out)


def eager_conv_relu(x, w, b, stride, padding, groups):
    """The cuDNN baseline (and what torch.compile compiles)."""
    return F.relu(F.conv2d(x, w, b, stride, padding, 1, groups))


def measure(conv, net: str, shape: ConvShape, names: list[str], args) -> Row:
    """Check one layer shape against F.conv2d, then time the three implementations."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(args.batch, shape.c_in, shape.hw, shape.hw, device=DEVICE, dtype=DTYPE, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    layer = conv.FusedConv2d(
        shape.c_in, shape.c_out, shape.k, shape.stride, shape.padding, shape.groups,
        relu=True, device=DEVICE, dtype=DTYPE,
    )  # fmt: skip
    w, b = layer.weight.detach(), layer.bias.detach()
    args_ = (x, w, b, shape.stride, shape.padding, shape.groups)

    with torch.no_grad():
        y = layer(x)  # autotunes on the first call
        tile = chosen_tile(conv, shape)
        err = check_correct(y, x, w, b, shape, f"{net} {names[0]} [{shape}]")
        del y
        fns = {"triton": functools.partial(layer, x), "cudnn": functools.partial(eager_conv_relu, *args_),
               "cudnn conv": functools.partial(F.conv2d, x, w, None, shape.stride, shape.padding, 1, shape.groups)}
        if not args.no_compile:
            torch._dynamo.reset()
            compiled = common.compiled(eager_conv_relu, DEVICE, dynamic=False)
            compiled(*args_)  # compile outside the timing
            fns["compile"] = functools.partial(compiled, *args_)
        ms, graphed = common.time_all(fns, DEVICE, not args.no_cuda_graph)
    ms.setdefault("compile", float("nan"))
    gflop = 2 * shape.macs(args.batch) / 1e9
    return Row(net, names, shape, gflop, ms, tile, err, graphed or args.no_cuda_graph)


def main(argv=None) -> int:
    global DEVICE, DTYPE
    args = parse_args(argv)
    started = common.start("bench_conv.py", args.smoke, DTYPE)
    if started is None:
        return 2
    DEVICE, DTYPE = started

    import triton

    from archdsl.codegen.triton import conv

    t_start = time.time()
    torch.backends.cudnn.benchmark = True
    header = [
        "# Fused conv + bias + ReLU: Triton vs cuDNN vs torch.compile",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        common.device_line(DEVICE),
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
        f"triton {triton.__version__}",
        f"- batch {args.batch}, {str(DTYPE).replace('torch.', '')}, channels_last"
        + ("" if args.smoke else ", 224x224 networks"),
        "- timing: "
        + (
            "wall-clock medians" if DEVICE != "cuda"
            else "median of plain calls (triton.testing.do_bench, L2 flushed; includes launch overhead)"
            if args.no_cuda_graph
            else "median of CUDA-graph replays (triton.testing.do_bench_cudagraph; GPU time only)"
        ),
    ]
    for line in header:
        print(line)

    ceiling = matmul_ceiling_tflops(not args.no_cuda_graph)
    line = f"- {str(DTYPE).replace('torch.', '')} matmul ceiling (torch.matmul): {ceiling:.0f} TFLOP/s"
    header.append(line)
    print(line, flush=True)

    if not args.no_validate:
        print("\nRunning every autotune config against F.conv2d:", flush=True)
        t0 = time.time()
        validate_all_configs()
        print(f"all configs ok ({time.time() - t0:.0f}s)\n", flush=True)

    rows: list[Row] = []
    totals: dict = {}
    skipped: list[str] = []

    def write_table() -> str:
        return common.write_table(render(header, rows, totals, skipped), "conv.md")

    for net in args.nets:
        for shape, names in distinct_shapes(NETS[net]()):
            if args.quick and not set(names) & QUICK[net]:
                continue
            if time.time() - t_start > args.budget_s:
                skipped.append(f"{net} {names[0]}")
                continue
            t0 = time.time()
            row = measure(conv, net, shape, names, args)
            rows.append(row)
            n, t, c, k = totals.get(net, (0, 0.0, 0.0, 0.0))
            reps = len(names)
            ms = row.ms
            totals[net] = (
                n + reps,
                t + reps * ms["triton"],
                c + reps * ms["cudnn"],
                k + reps * ms["compile"],
            )
            print(
                f"{net} {names[0]} [{shape}]: Triton {ms['triton']:.3f} ms "
                f"({tflops(row.gflop, ms['triton']):.0f} TFLOP/s, {row.tile}), "
                f"cuDNN {ms['cudnn']:.3f} ms, compile {fmt(ms['compile'], '.3f')} ms, err {row.err:.1e}  "
                f"[{time.time() - t0:.1f}s, total {time.time() - t_start:.0f}s]",
                flush=True,
            )
            write_table()

    print()
    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
