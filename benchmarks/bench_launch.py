"""Python cost of one FusedConv2d forward, on the CPU: the checked path against the launch cache.

On a GPU a conv of a late ResNet layer runs in tens of microseconds, so the Python between
``module(x)`` and the kernel launch decides whether the GPU waits. This measures that Python
alone: the kernel launch itself (Triton's own binder and launcher, the same on both paths)
is replaced by a no-op, and each path runs under Triton's interpreter on CPU tensors, so no
GPU is needed. It times, per forward in inference mode,

    checked   the argument checks, packing cache, autograd Function and launch arguments
              built on every call (the path training takes)
    cached    the module's launch cache: one dict lookup, the output's allocation, the call

and for a conv with a fused 2x2/2 max-pool (the lowered module's ``fused_conv(..., pool=True)``)

    checked   ``conv2d(..., pool=True)``: checks, weight packing and launch arguments on every
              call (how the pooled node ran before it used the module's caches)
    cached    ``fused_conv(x, conv, pool=True)``: the module's packed weight and launch cache

    python benchmarks/bench_launch.py           # a table: microseconds per forward
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the kernel path; the launch is stubbed

import torch  # noqa: E402


def per_call_us(fn, calls: int, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args(argv)
    import triton

    from archdsl.codegen.triton import conv, runtime

    launched = []
    conv._launch_kernel = lambda *a: launched.append(a[0])  # no kernel runs: Python cost only
    layers = [("ResNet-50 layer4 3x3", 512, 512, 7, 3, 1), ("ResNet-50 layer4 1x1", 2048, 512, 7, 1, 0),
              ("VGG-16 conv5_3", 512, 512, 14, 3, 1)]
    rows = []
    for name, c_in, c_out, hw, k, pad in layers:
        module = conv.FusedConv2d(c_in, c_out, k, padding=pad, relu=True, device="cpu")
        x = torch.empty(1, c_in, hw, hw).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            cached = per_call_us(lambda: module(x), args.calls)
            w_packed = module._packed_weight()

            def checked():
                stride, padding, out_shape = conv._check_inputs(
                    x, module.weight, module.bias, None, module.stride, module.padding, module.groups)
                return conv._FusedConv2dFn.apply(x, module.weight, module.bias, None, w_packed, stride,
                                                 padding, module.groups, module.relu, out_shape)

            slow = per_call_us(checked, args.calls)
        rows.append(f"| {name} | {slow:.1f} | {cached:.1f} | {slow / cached:.1f}x |")
    for name, c_in, c_out, hw in [("VGG-16 conv1_2 + 2x2 pool", 64, 64, 224)]:
        module = conv.FusedConv2d(c_in, c_out, 3, padding=1, relu=True, device="cpu").eval()
        x = torch.empty(1, c_in, hw, hw).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            cached = per_call_us(lambda: runtime.fused_conv(x, module, pool=True), args.calls)
            slow = per_call_us(lambda: conv.conv2d(x, module.weight, module.bias, 1, 1, relu=True, pool=True),
                               args.calls)
        rows.append(f"| {name} | {slow:.1f} | {cached:.1f} | {slow / cached:.1f}x |")
    assert launched, "no launch reached the stub"
    text = "\n".join([
        "# Python cost per FusedConv2d forward (kernel launch stubbed)",
        "",
        f"- {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, triton {triton.__version__}; median of 5 x {args.calls} calls",
        "",
        "| layer | checked path µs | launch cache µs | saved |",
        "|---|---|---|---|",
        *rows,
    ])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
