"""Every kept tile config of the conv kernel on VGG-16's main layers, next to cuDNN and cuBLAS.

For VGG-16's conv1_2, conv3_2, conv4_2 and conv5_2 (3x3, pad 1) at batch 64, bf16,
channels_last, it runs each tile config the autotuner would try (its prune applied to the
layer) and times it as a CUDA-graph replay next to

    cuDNN conv       F.conv2d(x, w) alone: kernel against kernel
    cuDNN conv+b+r   F.relu(F.conv2d(x, w, b)): what the fused kernel replaces
    cuBLAS GEMM      an [M, K] x [K, N] matmul of the layer's implicit-GEMM sizes
                     (M = N * H * W, N = C_out, K = 9 * C_in): the tensor cores' ceiling
                     for this shape, with no im2col addressing to do

Each config's output is checked against F.conv2d first (a mismatch stops the run). The tile
with the best time is what the autotuner would pick; the others show how much the choice
matters and whether a pruned-in tile is ever the slow outlier.

    python benchmarks/bench_tiles.py           # on the GPU machine (about 3 minutes cold)
    python benchmarks/bench_tiles.py --smoke   # the whole script on the CPU, tiny layers

The markdown table goes to ``$OUT/tiles.md`` when ``OUT`` is set (rewritten after every row)
and is printed last. No new layer is started after ``--budget-s`` seconds.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402  (benchmarks/common.py)

# name, C_in, C_out, H = W (3x3, stride 1, pad 1)
LAYERS = [("conv1_2", 64, 64, 224), ("conv3_2", 256, 256, 56), ("conv4_2", 512, 512, 28),
          ("conv5_2", 512, 512, 14)]
SMOKE_LAYERS = [("smoke_a", 16, 16, 6), ("smoke_b", 32, 32, 3)]
BATCH = 64
COLUMNS = ["layer", "implementation", "tile", "ms", "TFLOP/s", "vs cuDNN conv", "vs cuDNN conv+b+r",
           "vs cuBLAS GEMM", "rel err"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default=",".join(name for name, *_ in LAYERS),
                   help="comma-separated subset of " + ", ".join(name for name, *_ in LAYERS))
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--budget-s", type=float, default=240.0, help="start no new layer after this many seconds")
    common.add_smoke_flag(p)
    args = p.parse_args(argv)
    known = {name: (name, *rest) for name, *rest in LAYERS}
    if args.smoke:
        args.layers, args.batch = SMOKE_LAYERS, 1
    else:
        chosen = [n for n in args.layers.split(",") if n]
        if not chosen or any(n not in known for n in chosen):
            p.error(f"--layers: choose from {', '.join(known)}")
        args.layers = [known[n] for n in chosen]
    return args


def kept_configs(x, w_packed, bias, out):
    """The tile configs the autotuner would time for this launch (its own prune applied)."""
    from archdsl.codegen.triton import conv
    from archdsl.codegen.triton.aot import jit_function

    kernel, _, launch, flags = conv.launch_args(x, w_packed, bias, None, out, (3, 3), (1, 1), (1, 1), 1, True)
    named = dict(zip(jit_function(kernel).arg_names, launch))
    return kernel.early_config_prune(kernel.configs, named, **flags)


def describe(config) -> str:
    k = config.kwargs
    grid = " persistent" if k.get("PERSISTENT") else ""  # one program per SM looping over the tiles
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{config.num_warps} s{config.num_stages}{grid}"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = common.start("bench_tiles.py", args.smoke)
    if started is None:
        return 2
    device, dtype = started
    import triton

    from archdsl.codegen.triton import conv

    torch.backends.cudnn.benchmark = True
    header = [
        "# Conv tile configs on VGG-16 layers vs cuDNN and cuBLAS",
        "",
        common.device_line(device),
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
        f"triton {triton.__version__}; {dtype}, batch {args.batch}, channels_last, 3x3 pad 1",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        "- times: medians of CUDA-graph replays; TFLOP/s = 2 * MACs / time; 'vs X' = X's time / the "
        "row's time (> 1: the row is faster)",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    rows: list[str] = []
    skipped: list[str] = []

    def write_table() -> str:
        text = "\n".join(header + rows + ([f"\nNot measured (time budget): {', '.join(skipped)}"] if skipped else []))
        return common.write_table(text, "tiles.md")

    t_start = time.time()
    for name, c_in, c_out, hw in args.layers:
        if time.time() - t_start > args.budget_s:
            skipped.append(name)
            continue
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, c_in, hw, hw, generator=gen).to(device, dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = (torch.randn(c_out, c_in, 3, 3, generator=gen) * (9 * c_in) ** -0.5).to(device, dtype)
        b = torch.randn(c_out, generator=gen).to(device, dtype)
        m, n, k = args.batch * hw * hw, c_out, 9 * c_in
        a_mat = torch.randn(m, k, generator=gen).to(device, dtype)
        b_mat = torch.randn(k, n, generator=gen).to(device, dtype)
        ref = F.relu(F.conv2d(x.double(), w.double(), b.double(), 1, 1))
        w_packed = conv.pack_weight(w)
        out = torch.empty(ref.shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        baselines = {
            "cuDNN conv": lambda: F.conv2d(x, w, None, 1, 1),
            "cuDNN conv+b+r": lambda: F.relu(F.conv2d(x, w, b, 1, 1)),
            "cuBLAS GEMM": lambda: a_mat @ b_mat,
        }
        base_ms, _ = common.time_all(baselines, device)
        gflop = 2 * m * n * k / 1e9

        def row(impl, tile, ms, err):
            ratios = [f"{base_ms[key] / ms:.2f}" for key in baselines]
            rows.append(f"| {name} | {impl} | {tile} | {ms:.3f} | {gflop / ms:.0f} | " + " | ".join(ratios)
                        + f" | {err} |")
            write_table()

        for impl, ms in base_ms.items():
            row(impl, "-", ms, "-")
        with torch.no_grad():
            for config in kept_configs(x, w_packed, b, out):
                def run(config=config):
                    return conv._forward(x, w, b, 1, 1, 1, True, w_packed=w_packed, out=out, config=config)

                y = run().double()
                err = float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref))
                if not err < 1e-2:
                    write_table()
                    print(f"bench_tiles.py: {name} {describe(config)}: relative error {err:.3g} vs F.conv2d",
                          file=sys.stderr)
                    return 1
                ms, _ = common.time_all({"tile": run}, device)
                row("Triton", describe(config), ms["tile"], f"{err:.1e}")
                print(f"[{time.time() - t_start:5.0f}s] {name} {describe(config)}: {ms['tile']:.3f} ms "
                      f"({gflop / ms['tile']:.0f} TFLOP/s); cuDNN conv {base_ms['cuDNN conv']:.3f} ms",
                      file=sys.stderr, flush=True)
        del x, w, b, a_mat, b_mat, ref, out, w_packed
        common.empty_cache(device)
    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
