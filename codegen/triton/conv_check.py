"""Run every tile configuration of a conv kernel on one shape and compare it with PyTorch.

A configuration that a given Triton release miscompiles would otherwise go unnoticed until
the autotuner picks it; ``benchmarks/bench_conv.py --validate`` runs this on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
from triton.runtime.errors import OutOfResources

from archdsl.codegen.triton.aot import jit_function
from archdsl.codegen.triton.conv import _forward, _pair, pack_weight
from archdsl.codegen.triton.conv_kernels import conv2d_fwd_kernel, conv2d_fwd_small_c_kernel
from archdsl.codegen.triton.conv_tuning import uses_small_c_kernel
from archdsl.codegen.triton.support import INTERPRET

__all__ = ["ConfigCheck", "validate_configs"]


@dataclass
class ConfigCheck:
    """The outcome of running one tile configuration on one shape."""

    kernel: str
    config: str
    ok: bool
    rel_err: float  # ||y - ref|| / ||ref||; nan when the config did not run
    note: str = ""  # why it did not run, or what was wrong


def _describe(config: triton.Config) -> str:
    k = config.kwargs
    return (
        f"BLOCK_M={k['BLOCK_M']} BLOCK_N={k['BLOCK_N']} BLOCK_K={k['BLOCK_K']} "
        f"GROUP_SIZE_M={k['GROUP_SIZE_M']} warps={config.num_warps} stages={config.num_stages}"
        + (" persistent" if k.get("PERSISTENT") else "")
    )


def _default_tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.bfloat16:
        return 1e-2  # 8-bit mantissa output rounding: ~2e-3 relative-norm error expected
    if dtype == torch.float16:
        return 2e-3  # 11-bit mantissa: ~3e-4 expected
    if INTERPRET or not torch.backends.cudnn.allow_tf32:
        return 1e-5
    return 5e-3  # TF32 products


def validate_configs(
    batch: int = 2,
    in_channels: int = 64,
    out_channels: int = 64,
    height: int = 17,
    width: int = 17,
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    configs: Sequence[triton.Config] | None = None,
    small_c: bool | None = None,
    tolerance: float | None = None,
    seed: int = 0,
) -> list[ConfigCheck]:
    """Run every tile configuration on one shape and compare with ``F.conv2d`` in float64.

    A configuration that a given Triton release miscompiles (8-warp variants of kernels like
    this one are the usual suspects) would otherwise go unnoticed until the autotuner picks
    it. The check uses bias, residual and ReLU, and fills the output with NaN first so
    unwritten elements show. Configurations that do not fit the device (out of shared
    memory or registers) are reported with ``ok=True`` and a note, as the autotuner skips them.

    Args:
        configs: the configurations to run (default: the autotune list of the kernel this
            shape uses). ``small_c`` forces one kernel or the other.
        dtype: default bfloat16 on CUDA, float32 under the interpreter.
        tolerance: maximum relative-norm error (default depends on the dtype).

    Returns one :class:`ConfigCheck` per configuration.
    """
    if device is None:
        device = "cpu" if INTERPRET else "cuda"
    if dtype is None:
        dtype = torch.float32 if INTERPRET else torch.bfloat16
    kh, kw = _pair(kernel_size, "kernel_size")
    if small_c is None:
        small_c = uses_small_c_kernel(in_channels // groups)
    kernel = conv2d_fwd_small_c_kernel if small_c else conv2d_fwd_kernel
    name = jit_function(kernel).__name__
    if configs is None:
        configs = kernel.configs
    tol = _default_tolerance(dtype) if tolerance is None else tolerance

    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x = rand(batch, in_channels, height, width).contiguous(memory_format=torch.channels_last)
    fan_in = (in_channels // groups) * kh * kw
    weight = rand(out_channels, in_channels // groups, kh, kw, scale=fan_in**-0.5)
    bias = rand(out_channels)
    y_ref = F.conv2d(x.double(), weight.double(), bias.double(), stride, padding, 1, groups)
    residual = rand(*y_ref.shape)
    y_ref = torch.relu(y_ref + residual.double())
    w_packed = pack_weight(weight, groups, small_c)

    results = []
    for config in configs:
        desc = _describe(config)
        out = torch.full(y_ref.shape, float("nan"), device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        try:
            _forward(
                x, weight, bias, stride, padding, groups, True, residual,
                w_packed=w_packed, out=out, small_c=small_c, config=config,
            )  # fmt: skip
        except OutOfResources as exc:
            results.append(ConfigCheck(name, desc, True, float("nan"), f"skipped: {exc}"))
            continue
        except Exception as exc:  # a compile error is a failed config, not a crash of the check
            results.append(ConfigCheck(name, desc, False, float("nan"), f"error: {exc!r}"))
            continue
        y = out.double()
        if torch.isnan(y).any():
            n_bad = int(torch.isnan(y).sum())
            results.append(
                ConfigCheck(name, desc, False, float("nan"), f"{n_bad} elements NaN/unwritten")
            )
            continue
        rel = float(torch.linalg.vector_norm(y - y_ref) / torch.linalg.vector_norm(y_ref).clamp_min(1e-30))
        ok = rel <= tol
        results.append(
            ConfigCheck(name, desc, ok, rel, "" if ok else f"error {rel:.2e} > {tol:.0e}")
        )
    return results
