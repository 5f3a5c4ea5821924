"""What the triton backend's kernels cost on sm_90, compiled offline (no GPU needed).

For each seed net and operand type, every kernel launch of the triton backend is compiled for
the target with the installed Triton, one binary per tile config that the autotuner would keep
(``archdsl kernels``, :mod:`archdsl.codegen.triton.aot`). The table gives per net: launches,
binaries compiled, the range of registers per thread and of shared memory, spills, whether
every conv uses Hopper's wgmma, and the byte widths of the general conv kernel's
global->shared copies and of the conv kernels' stores (16: whole vectors). It says nothing
about speed; it is the part of the GPU picture that any machine can reproduce.

    python benchmarks/kernel_resources.py                 # sm_90, all cases below
    python benchmarks/kernel_resources.py --arch 80

Run with TRITON_INTERPRET unset. The markdown table goes to ``$OUT/kernel_resources.md`` when
``OUT`` is set, and is printed last.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [
    ("vgg_d", "bf16", False),
    ("vgg_d", "fp32", False),
    ("alexnet", "bf16", False),
    ("alexnet", "bf16", True),
    ("vgg_a_lrn", "bf16", True),
    ("resnet50", "bf16", False),
    ("resnet50", "bf16", True),
    ("resnet50", "fp16", False),
    ("resnet50", "fp32", False),
]


def _widths(lists) -> str:
    return ",".join(map(str, sorted({w for widths in lists for w in widths}))) or "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    from archdsl.codegen.triton import support

    if support.INTERPRET:
        p.error("run with TRITON_INTERPRET unset: compiling needs Triton's compiler")

    # A cache of its own, so that the compile times are those of a cold start.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="archdsl-aot-")
    import torch
    import triton

    import archdsl
    import common  # benchmarks/common.py (it imports torch: after the cache is chosen)
    from archdsl.codegen.triton import aot
    from archdsl.pipeline import lower_graph

    rows = []
    for spec, dtype, training in CASES:
        rep = aot.report(lower_graph(archdsl.load(spec), "triton"), arch=args.arch, dtype=dtype, batch=args.batch, training=training)
        convs = [r for r in rep.rows if r.kernel.startswith("conv2d")]
        regs = [r.registers for r in rep.rows]
        smem = [r.shared for r in rep.rows]
        rows.append((
            spec, dtype, "training" if training else "eval", str(len(rep.launches)), str(len(rep.rows)),
            f"{min(regs)}-{max(regs)}", f"{min(smem) // 1024}-{max(smem) // 1024}",
            str(sum(r.spill > 0 for r in rep.rows)),
            "all" if all(r.wgmma for r in convs) else f"{sum(r.wgmma for r in convs)}/{len(convs)}",
            _widths(r.async_copies for r in convs if r.kernel == "conv2d_fwd_kernel"),
            _widths(r.stores for r in convs),
            str(len(rep.problems())), f"{rep.seconds:.1f}",
        ))
        print(f"{spec} {dtype} {'training' if training else 'eval'}: {len(rep.rows)} configs, "
              f"{len(rep.problems())} problems", file=sys.stderr, flush=True)

    cols = ("net", "dtype", "pass", "launches", "configs compiled", "registers", "smem KB",
            "configs that spill", "conv wgmma", "conv operand copies B", "conv stores B", "problems",
            "compile s")
    lines = [
        f"Offline compile for sm_{args.arch}: triton {triton.__version__}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, batch {args.batch}, channels_last",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(" --- " for _ in cols) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    print(common.write_table("\n".join(lines), "kernel_resources.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
