"""Fused 2-D convolution (+ bias, + residual, + ReLU) as an implicit GEMM in Triton.

The convolution is computed as a matrix product without materialising the im2col matrix:

    M      = N * H_out * W_out       one GEMM row per output pixel
    N_gemm = C_out / groups          one GEMM column per output channel of a group
    K      = (C_in / groups) * kh * kw

Activations are read and written channels_last (NHWC in memory), so the K slice belonging to
one input pixel and one filter tap ``(r, s)`` is a contiguous run of channels. The weight is
packed once into a K-major ``[groups, kh * kw * C_in_g, C_out_g]`` tensor whose K index is
``(r * kw + s) * C_in_g + c`` -- the order in which both kernels below walk K.

Two kernels share the tiling, the epilogue and the packed weight:

``conv2d_fwd_kernel`` (the general case)
    K is walked tap by tap and, inside a tap, in ``BLOCK_K``-wide channel blocks. Every A
    tile is ``BLOCK_M`` pixels x ``BLOCK_K`` consecutive channels of one tap: contiguous,
    coalesced loads in NHWC, with padding and image borders handled by the load mask.

``conv2d_fwd_small_c_kernel`` (few input channels per group, e.g. the RGB first layer)
    With ``C_in_g = 3`` a 16-wide channel block would be 3/16 useful. Instead ``BLOCK_K``
    covers the flattened ``(r, s, c)`` index and each element of the K block is decomposed
    on its own, so a 7x7x3 stem walks K = 147 in three 64-wide (or five 32-wide) blocks
    rather than 49 blocks that are 81% padding. These layers are memory-bound (writing the
    output dominates), so the aim is to keep the loop short and the loads few, not to
    saturate the tensor cores.

Both accumulate in fp32 and apply ``+ bias``, ``+ residual`` (added before the activation,
as in a ResNet block), ReLU and the cast to the output dtype in registers before a single
masked store. Operands may be fp16, bf16 or fp32. For fp32 operands ``tl.dot`` runs in TF32
(10-bit mantissa, ~1e-3 relative error) when ``torch.backends.cudnn.allow_tf32`` is true --
PyTorch's default for convolutions, so the result is as accurate as ``F.conv2d``'s -- and in
full IEEE fp32 when it is false. Triton's CPU interpreter (``TRITON_INTERPRET=1``) computes
the dot exactly in fp32 either way; it has no bfloat16.

The forward pass is a ``torch.autograd.Function``; its backward uses PyTorch's convolution
gradients (``torch.nn.grad``), with the ReLU mask taken from the saved output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from archdsl.codegen.triton import support

__all__ = [
    "ConfigCheck",
    "FusedConv2d",
    "conv2d",
    "conv2d_fwd_kernel",
    "conv2d_fwd_small_c_kernel",
    "conv2d_relu",
    "launch_args",
    "pack_weight",
    "uses_small_c_kernel",
    "validate_configs",
]

# Read once, like triton.jit does: the kernels below are built for one mode or the other.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Below this many input channels per group the general kernel's channel blocks are mostly
# padding, and the per-element (r, s, c) decomposition of the small-C kernel wins.
SMALL_C_MAX = 16

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------
# Autotuning configurations
# --------------------------------------------------------------------------------------------


def _config(block_m, block_n, block_k, num_warps, num_stages, group_size_m=8):
    return triton.Config(
        {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_SIZE_M": group_size_m},
        num_warps=num_warps,
        num_stages=num_stages,
    )


def general_configs() -> list[triton.Config]:
    """Tile configurations tried for ``conv2d_fwd_kernel``.

    Sized for Hopper (228 KB shared memory per SM): a 128x128x64 bf16 stage is 32 KB, so
    3-4 stages fit; the 256-wide tiles need 8 warps to hold their accumulator. Narrow-N
    tiles (64, 32) cover layers with few output channels per group, such as ResNet's
    64-channel stage; configs far larger than a layer are pruned before tuning. Under the
    interpreter there is a single small config, since autotuning there would run them all.
    """
    if _INTERPRET:
        return [_config(32, 16, 16, num_warps=4, num_stages=1, group_size_m=4)]
    return [
        # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
        _config(128, 128, 64, 8, 3),
        _config(128, 128, 64, 8, 4),
        _config(128, 256, 64, 8, 3),
        _config(256, 128, 64, 8, 3),
        _config(128, 128, 32, 4, 4),
        _config(256, 64, 64, 8, 3),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
        _config(128, 32, 64, 4, 4),
        _config(64, 64, 64, 4, 4),
        _config(64, 64, 32, 4, 5),
    ]


def small_c_configs() -> list[triton.Config]:
    """Tile configurations tried for ``conv2d_fwd_small_c_kernel``.

    K is small (27 for 3x3x3, 147 for 7x7x3, 363 for 11x11x3), so BLOCK_K is 32 and few
    stages are needed; the tiles are wide in M because the output write is the cost. Each
    thread holds its gathered share of the BLOCK_M x BLOCK_K activations in registers next to
    its accumulators, so wider K blocks spill on sm_90 (256x32x64 on 4 warps: 2 KB per
    thread; ``archdsl kernels resnet50`` shows every config's registers and spills).
    """
    if _INTERPRET:
        return [_config(32, 16, 32, num_warps=4, num_stages=1, group_size_m=4)]
    return [
        _config(128, 64, 32, 4, 3),
        _config(256, 64, 32, 8, 3),
        _config(128, 128, 32, 8, 3),
        _config(64, 128, 32, 4, 3),
        _config(128, 32, 32, 4, 3),
        _config(256, 32, 32, 8, 3),
        _config(64, 64, 32, 4, 4),
    ]


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# Shared memory one block may use when the device cannot be asked (offline, under the
# interpreter): the H100's opt-in limit, 227 KB.
_DEFAULT_SHARED_LIMIT = 232_448


def _shared_limit(named_args, kwargs) -> int:
    """The opt-in shared-memory limit of the device the launch runs on. Offline compilation
    (:mod:`.aot`) passes its target's as ``shared_limit``."""
    if kwargs.get("shared_limit"):
        return kwargs["shared_limit"]
    x = named_args["x_ptr"]
    if x.is_cuda:
        props = torch.cuda.get_device_properties(x.device)
        return getattr(props, "shared_memory_per_block_optin", _DEFAULT_SHARED_LIMIT)
    return _DEFAULT_SHARED_LIMIT


def _per_thread(config, rows, cols) -> int:
    return rows * cols // (32 * config.num_warps)


def _fits_general(config, elem_bytes, residual, shared_limit) -> bool:
    """Whether a general-kernel config fits the device, judged as sm_90's compiler does.

    Shared memory is exact: each pipeline stage holds a BLOCK_M x BLOCK_K tile of x and a
    BLOCK_K x BLOCK_N tile of the weight. Registers: the fp32 accumulator takes
    BLOCK_M * BLOCK_N / threads of them; at 128 per thread the kernel compiles spill-free
    with 2-byte operands, but spills with 4-byte (tf32) operands or with a residual tile
    loaded in the epilogue, where 64 is the most that fits (measured with ``archdsl kernels``).
    """
    kw = config.kwargs
    smem = config.num_stages * (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * elem_bytes
    acc = _per_thread(config, kw["BLOCK_M"], kw["BLOCK_N"])
    return smem <= shared_limit and acc <= (128 if elem_bytes == 2 and not residual else 64)


def _fits_small_c(config, elem_bytes, residual, shared_limit) -> bool:
    """Whether a small-C config keeps to registers: besides the accumulator, each thread holds
    its share of the gathered BLOCK_M x BLOCK_K activations. On sm_90 the kernel spills past
    96 such values per thread with 2-byte operands (128x64x64 on 4 warps: 168 bytes with
    Triton 3.6) and past 80 with 4-byte ones."""
    kw = config.kwargs
    held = _per_thread(config, kw["BLOCK_M"], kw["BLOCK_N"]) + _per_thread(config, kw["BLOCK_M"], kw["BLOCK_K"])
    return held <= (96 if elem_bytes == 2 else 80)


def _prune(configs, named_args, kwargs, k_extent, fits):
    """Drop configs whose tiles are much larger than the problem (pure masked-off waste), then
    those that do not fit the device (see ``fits``); never all of them."""
    m = named_args["BATCH"] * named_args["OUT_H"] * named_args["OUT_W"]
    max_m = max(64, _next_pow2(m))
    max_n = max(32, _next_pow2(named_args["C_OUT_G"]))
    max_k = max(16, _next_pow2(k_extent))
    sized = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] <= max_m and c.kwargs["BLOCK_N"] <= max_n and c.kwargs["BLOCK_K"] <= max_k
    ]
    elem_bytes = named_args["x_ptr"].element_size()
    residual = bool(kwargs.get("HAS_RESIDUAL", named_args.get("HAS_RESIDUAL")))
    limit = _shared_limit(named_args, kwargs)
    kept = [c for c in sized if fits(c, elem_bytes, residual, limit)]
    if kept:
        return kept
    return [min(sized or configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


def _prune_general(configs, named_args, **kwargs):
    return _prune(configs, named_args, kwargs, named_args["C_IN_G"], _fits_general)


def _prune_small_c(configs, named_args, **kwargs):
    k_extent = named_args["KH"] * named_args["KW"] * named_args["C_IN_G"]
    return _prune(configs, named_args, kwargs, k_extent, _fits_small_c)


# Every shape argument the best tile depends on; tensor dtypes are added by the autotuner.
_AUTOTUNE_KEY = [
    "BATCH", "IN_H", "IN_W", "OUT_H", "OUT_W", "C_IN_G", "C_OUT_G", "GROUPS",
    "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "HAS_RESIDUAL", "ALLOW_TF32",
]  # fmt: skip

# Sizes that only enter index arithmetic are not specialised on (divisibility by 16, == 1):
# that would compile a new variant for nearly every layer shape without speeding anything up.
# Channel counts and strides stay specialised: they decide whether loads vectorise.
_NO_SPECIALIZE = [
    "BATCH", "IN_H", "IN_W", "OUT_H", "OUT_W", "GROUPS",
    "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _tile_ids(M, C_OUT_G, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr):
    """Map the program to (pid_m, pid_n, conv group).

    Axis 0 walks the output tiles in bands of GROUP_SIZE_M tile rows (the matmul tutorial's
    L2 swizzle: programs running together reuse the same activation rows and weight
    columns); axis 1 is the convolution group.
    """
    pid = tl.program_id(axis=0)
    g = tl.program_id(axis=1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(C_OUT_G, BLOCK_N)
    num_pid_in_band = GROUP_SIZE_M * num_pid_n
    band = pid // num_pid_in_band
    first_pid_m = band * GROUP_SIZE_M
    band_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_band) % band_size_m)
    pid_n = (pid % num_pid_in_band) // band_size_m
    return pid_m, pid_n, g


@triton.jit
def _output_pixels(pid_m, M, OUT_H, OUT_W, BLOCK_M: tl.constexpr):
    """The BLOCK_M output pixels (GEMM rows) of this tile, as (n, oh, ow) and a row mask."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    ow = offs_m % OUT_W
    nh = offs_m // OUT_W
    oh = nh % OUT_H
    n = nh // OUT_H
    return n, oh, ow, mask_m


@triton.jit
def _window_origin(n, oh, ow, g, C_IN_G, STRIDE_H, STRIDE_W, PAD_H, PAD_W,
                   stride_xn, stride_xh, stride_xw, stride_xc):
    """Top-left input pixel (ih0, iw0) of each output pixel's window (negative inside the
    padding), and the offset in x of its group's first channel -- int64, since N * H * W * C
    can pass 2**31."""
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_rows = (
        n.to(tl.int64) * stride_xn
        + ih0.to(tl.int64) * stride_xh
        + iw0.to(tl.int64) * stride_xw
        + (g * C_IN_G).to(tl.int64) * stride_xc
    )
    return ih0, iw0, x_rows


@triton.jit
def _mma(a, b, acc, ALLOW_TF32: tl.constexpr):
    # input_precision only matters for fp32 operands; fp16/bf16 always use tensor cores.
    if ALLOW_TF32:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _epilogue(
    acc, bias_ptr, res_ptr, y_ptr,
    n, oh, ow, mask_m, offs_n, mask_n, g, C_OUT_G,
    stride_rn, stride_rh, stride_rw, stride_rc,
    stride_yn, stride_yh, stride_yw, stride_yc,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
):  # fmt: skip
    """acc (fp32) + bias + residual -> ReLU -> cast -> masked store."""
    co = g * C_OUT_G + offs_n  # absolute output channel
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + co, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    n64 = n.to(tl.int64)
    if HAS_RESIDUAL:
        r_rows = n64 * stride_rn + oh.to(tl.int64) * stride_rh + ow.to(tl.int64) * stride_rw
        res = tl.load(res_ptr + r_rows[:, None] + (co * stride_rc)[None, :], mask=mask, other=0.0)
        acc += res.to(tl.float32)
    if APPLY_RELU:
        acc = tl.maximum(acc, 0.0)
    y_rows = n64 * stride_yn + oh.to(tl.int64) * stride_yh + ow.to(tl.int64) * stride_yw
    y_ptrs = y_ptr + y_rows[:, None] + (co * stride_yc)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.autotune(
    configs=general_configs(),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_general},
)
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def conv2d_fwd_kernel(
    # Pointers: x [N, H, W, C_in] (any strides, NHWC in practice); w packed [G, KH*KW*C_in_g,
    # C_out_g]; bias [C_out]; residual and y [N, H_out, W_out, C_out] (any strides).
    # bias_ptr / res_ptr are ignored unless HAS_BIAS / HAS_RESIDUAL.
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr,
    # Problem sizes
    BATCH, IN_H, IN_W, OUT_H, OUT_W,
    C_IN_G, C_OUT_G, GROUPS,  # channels per group, number of groups
    KH, KW, STRIDE_H, STRIDE_W, PAD_H, PAD_W,
    # Strides, in elements
    stride_xn, stride_xh, stride_xw, stride_xc,
    stride_wg, stride_wk, stride_wn,
    stride_rn, stride_rh, stride_rw, stride_rc,
    stride_yn, stride_yh, stride_yw, stride_yc,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,  # tile swizzle, unrelated to conv groups
):  # fmt: skip
    """Implicit-GEMM convolution; K walked as (r, s, channel block)."""
    M = BATCH * OUT_H * OUT_W
    pid_m, pid_n, g = _tile_ids(M, C_OUT_G, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
    n, oh, ow, mask_m = _output_pixels(pid_m, M, OUT_H, OUT_W, BLOCK_M)

    ih0, iw0, x_rows = _window_origin(n, oh, ow, g, C_IN_G, STRIDE_H, STRIDE_W, PAD_H, PAD_W,
                                      stride_xn, stride_xh, stride_xw, stride_xc)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT_G
    offs_k = tl.arange(0, BLOCK_K)
    # The packed weight is small (< 2**31 elements), so int32 offsets suffice there.
    w_cols = w_ptr + g * stride_wg + offs_n[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) rather than nested loops: the software
    # pipeliner only overlaps the innermost loop, and a 1x1 or 3x3 layer has just a few
    # channel blocks per tap.
    num_cb = tl.cdiv(C_IN_G, BLOCK_K)
    for it in range(0, KH * KW * num_cb):
        rs = it // num_cb
        c0 = (it - rs * num_cb) * BLOCK_K
        r = rs // KW
        s = rs - r * KW
        ih = ih0 + r
        iw = iw0 + s
        row_ok = mask_m & (ih >= 0) & (ih < IN_H) & (iw >= 0) & (iw < IN_W)
        c = c0 + offs_k
        k_ok = c < C_IN_G
        # A: BLOCK_M pixels x BLOCK_K consecutive channels of tap (r, s).
        tap = r.to(tl.int64) * stride_xh + s.to(tl.int64) * stride_xw
        a_ptrs = x_ptr + (x_rows + tap)[:, None] + (c * stride_xc)[None, :]
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        # B: rows (r, s, c) of the packed weight, BLOCK_N consecutive output channels.
        b_ptrs = w_cols + (rs * C_IN_G + c)[:, None] * stride_wk
        b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)

    _epilogue(
        acc, bias_ptr, res_ptr, y_ptr, n, oh, ow, mask_m, offs_n, mask_n, g, C_OUT_G,
        stride_rn, stride_rh, stride_rw, stride_rc, stride_yn, stride_yh, stride_yw, stride_yc,
        HAS_BIAS, HAS_RESIDUAL, APPLY_RELU,
    )  # fmt: skip


@triton.autotune(
    configs=small_c_configs(),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_small_c},
)
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def conv2d_fwd_small_c_kernel(
    # Pointers (as in conv2d_fwd_kernel)
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr,
    # Problem sizes
    BATCH, IN_H, IN_W, OUT_H, OUT_W,
    C_IN_G, C_OUT_G, GROUPS,
    KH, KW, STRIDE_H, STRIDE_W, PAD_H, PAD_W,
    # Strides, in elements
    stride_xn, stride_xh, stride_xw, stride_xc,
    stride_wg, stride_wk, stride_wn,
    stride_rn, stride_rh, stride_rw, stride_rc,
    stride_yn, stride_yh, stride_yw, stride_yc,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):  # fmt: skip
    """Implicit-GEMM convolution for few input channels; K walked as flat (r, s, c) blocks."""
    M = BATCH * OUT_H * OUT_W
    K_G = KH * KW * C_IN_G
    pid_m, pid_n, g = _tile_ids(M, C_OUT_G, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
    n, oh, ow, mask_m = _output_pixels(pid_m, M, OUT_H, OUT_W, BLOCK_M)

    ih0, iw0, x_rows = _window_origin(n, oh, ow, g, C_IN_G, STRIDE_H, STRIDE_W, PAD_H, PAD_W,
                                      stride_xn, stride_xh, stride_xw, stride_xc)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT_G
    offs_k = tl.arange(0, BLOCK_K)
    w_cols = w_ptr + g * stride_wg + offs_n[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K_G, BLOCK_K):
        # Decompose each K index of the block into its own (r, s, c): one [BLOCK_K] vector
        # of div/mod per iteration, then a gather of BLOCK_M x BLOCK_K elements.
        k = k0 + offs_k
        k_ok = k < K_G
        c = k % C_IN_G
        rs = k // C_IN_G
        r = rs // KW
        s = rs - r * KW
        ih = ih0[:, None] + r[None, :]
        iw = iw0[:, None] + s[None, :]
        a_mask = (mask_m[:, None] & k_ok[None, :]) & ((ih >= 0) & (ih < IN_H) & (iw >= 0) & (iw < IN_W))
        # Within one filter row r the (s, c) elements are contiguous in NHWC when groups == 1.
        k_offs = r * stride_xh + s * stride_xw + c * stride_xc
        a = tl.load(x_ptr + x_rows[:, None] + k_offs[None, :], mask=a_mask, other=0.0)
        b = tl.load(w_cols + k[:, None] * stride_wk, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)

    _epilogue(
        acc, bias_ptr, res_ptr, y_ptr, n, oh, ow, mask_m, offs_n, mask_n, g, C_OUT_G,
        stride_rn, stride_rh, stride_rw, stride_rc, stride_yn, stride_yh, stride_yw, stride_yc,
        HAS_BIAS, HAS_RESIDUAL, APPLY_RELU,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------


def uses_small_c_kernel(in_channels_per_group: int) -> bool:
    """Whether a layer with this many input channels per group runs the small-C kernel."""
    return in_channels_per_group < SMALL_C_MAX


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def pack_weight(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[C_out, C_in_g, kh, kw] -> [groups, kh * kw * C_in_g, C_out_g] (K index = (r, s, c)).

    Stored with C_out contiguous, except float32 weights of the general kernel, which are
    stored K-contiguous (the same view, other strides; the kernels take any). Hopper's TF32
    warpgroup MMA reads its B operand K-major: from an N-contiguous weight Triton copies it
    to shared memory 4 bytes at a time, from a K-contiguous one in 16-byte vectors
    (``archdsl kernels SPEC --dtype fp32``, column "copy B"). 16-bit operands have no such
    restriction and keep the N-contiguous layout, with which they compile to fewer registers.
    """
    if weight.dim() != 4 or weight.shape[0] % groups != 0:
        raise ValueError(
            f"pack_weight: expected a [C_out, C_in/groups, kh, kw] weight with C_out divisible by "
            f"groups={groups}, got shape {tuple(weight.shape)}"
        )
    c_out, c_in_g, kh, kw = weight.shape
    w = weight.detach().reshape(groups, c_out // groups, c_in_g, kh, kw)
    if weight.dtype == torch.float32 and not uses_small_c_kernel(c_in_g):
        k_major = w.permute(0, 1, 3, 4, 2).reshape(groups, c_out // groups, kh * kw * c_in_g).contiguous()
        return k_major.transpose(1, 2)
    return w.permute(0, 3, 4, 2, 1).reshape(groups, kh * kw * c_in_g, c_out // groups).contiguous()


def _check_device(t: torch.Tensor, what: str) -> None:
    if _INTERPRET:
        return
    if t.device.type != "cuda":
        raise ValueError(
            f"conv2d: {what} is on {t.device}; the Triton kernel needs CUDA tensors "
            "(set TRITON_INTERPRET=1 to run it on the CPU interpreter, or use F.conv2d)"
        )


def _check_inputs(x, weight, bias, residual, stride, padding, groups):
    """Validate the arguments; return (stride, padding, output shape)."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("conv2d: x and weight must be tensors")
    if x.dim() != 4:
        raise ValueError(f"conv2d: x must be 4-D [N, C_in, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(
            f"conv2d: weight must be 4-D [C_out, C_in/groups, kh, kw], got shape {tuple(weight.shape)}"
        )
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"conv2d: x dtype {x.dtype} is not supported (use float16, bfloat16 or float32)")
    if _INTERPRET and x.dtype == torch.bfloat16:
        raise TypeError(
            "conv2d: bfloat16 is not supported by Triton's CPU interpreter (use float16 or float32)"
        )
    if weight.dtype != x.dtype:
        raise TypeError(f"conv2d: weight dtype {weight.dtype} does not match x dtype {x.dtype}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    stride = _pair(stride, "stride")
    padding = _pair(padding, "padding")
    if min(stride) < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"conv2d: padding must be >= 0, got {padding}")

    n, c_in, h, w = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    if c_in % groups != 0:
        raise ValueError(f"conv2d: input channels ({c_in}) are not divisible by groups ({groups})")
    if c_out % groups != 0:
        raise ValueError(f"conv2d: output channels ({c_out}) are not divisible by groups ({groups})")
    if c_in_g != c_in // groups:
        raise ValueError(
            f"conv2d: weight of shape {tuple(weight.shape)} expects {c_in_g * groups} input channels "
            f"with groups={groups}, but x has {c_in}"
        )
    if kh < 1 or kw < 1 or c_out < 1:
        raise ValueError(f"conv2d: weight shape {tuple(weight.shape)} is empty")
    h_out = (h + 2 * padding[0] - kh) // stride[0] + 1
    w_out = (w + 2 * padding[1] - kw) // stride[1] + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"conv2d: a {kh}x{kw} kernel does not fit the padded input "
            f"({h + 2 * padding[0]}x{w + 2 * padding[1]}); the output would be empty"
        )
    out_shape = (n, c_out, h_out, w_out)

    _check_device(x, "x")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None and t.device != x.device:
            raise ValueError(f"conv2d: {name} is on {t.device} but x is on {x.device}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != c_out:
            raise ValueError(f"conv2d: bias must have shape ({c_out},), got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"conv2d: bias dtype {bias.dtype} does not match x dtype {x.dtype}")
    if residual is not None:
        if tuple(residual.shape) != out_shape:
            raise ValueError(
                f"conv2d: residual must have the output's shape {out_shape}, got {tuple(residual.shape)}"
            )
        if residual.dtype != x.dtype:
            raise TypeError(f"conv2d: residual dtype {residual.dtype} does not match x dtype {x.dtype}")
    return stride, padding, out_shape


def _nhwc_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of an [N, C, H, W] tensor in the kernels' (n, h, w, c) argument order."""
    return t.stride(0), t.stride(2), t.stride(3), t.stride(1)


def launch_args(
    x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu, *, small_c=None,
):  # fmt: skip
    """The kernel, grid, positional arguments and flags of one conv launch.

    Only shapes, strides and dtypes are read, so meta tensors do: :mod:`.aot` compiles the
    kernels offline from exactly the arguments a real launch would pass.
    """
    kh, kw = kernel_size
    n, c_in, h, w = x.shape
    c_out, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    c_in_g, c_out_g = c_in // groups, c_out // groups
    if small_c is None:
        small_c = uses_small_c_kernel(c_in_g)
    kernel = conv2d_fwd_small_c_kernel if small_c else conv2d_fwd_kernel
    m = n * h_out * w_out

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(c_out_g, meta["BLOCK_N"]), groups)

    # Unused pointer arguments get a real tensor: never read, but valid in every Triton version.
    res = residual if residual is not None else out
    args = (
        x, w_packed, bias if bias is not None else out, res, out,
        n, h, w, h_out, w_out,
        c_in_g, c_out_g, groups,
        kh, kw, stride[0], stride[1], padding[0], padding[1],
        *_nhwc_strides(x),
        *w_packed.stride(),
        *_nhwc_strides(res),
        *_nhwc_strides(out),
    )  # fmt: skip
    flags = dict(
        HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None,
        APPLY_RELU=bool(relu),
        ALLOW_TF32=bool(torch.backends.cudnn.allow_tf32),
    )
    return kernel, grid, args, flags


def _launch(
    x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu,
    *, small_c=None, config=None,
):  # fmt: skip
    """Run a kernel on checked arguments; returns ``out`` (channels_last [N, C_out, H_out, W_out]).

    ``small_c`` forces a kernel (default: by channel count); ``config`` (a triton.Config)
    bypasses the autotuner and runs that tile configuration.
    """
    if out.numel() == 0:
        return out
    kernel, grid, args, flags = launch_args(
        x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu, small_c=small_c
    )
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):  # Triton launches on the current device
            _launch_kernel(kernel, grid, args, flags, config)
    else:
        _launch_kernel(kernel, grid, args, flags, config)
    return out


def _launch_kernel(kernel, grid, args, flags, config):
    if config is None:
        kernel[grid](*args, **flags)
    else:  # the autotuner's wrapped kernel, with the config's meta-parameters
        kernel.fn[grid](
            *args, **flags, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )


def _run(
    x, weight, bias, residual, w_packed, stride, padding, groups, relu, out_shape,
    *, out=None, small_c=None, config=None,
):  # fmt: skip
    """Forward on arguments already checked by ``_check_inputs`` (no autograd)."""
    x = x.contiguous(memory_format=torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    if bias is not None:
        bias = bias.contiguous()
    if out is None:
        out = torch.empty(out_shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    kernel_size = (weight.shape[2], weight.shape[3])
    return _launch(
        x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu,
        small_c=small_c, config=config,
    )  # fmt: skip


def _forward(
    x, weight, bias=None, stride=1, padding=0, groups=1, relu=False, residual=None,
    *, w_packed=None, out=None, small_c=None, config=None,
):  # fmt: skip
    """Checked forward without autograd.

    The keyword-only arguments serve tests and config validation: a prepacked weight, an
    output buffer to write into, a forced kernel choice and a fixed tile config.
    """
    stride, padding, out_shape = _check_inputs(x, weight, bias, residual, stride, padding, groups)
    if w_packed is None:
        w_packed = pack_weight(weight, groups)
    return _run(
        x, weight, bias, residual, w_packed, stride, padding, groups, relu, out_shape,
        out=out, small_c=small_c, config=config,
    )  # fmt: skip


class _FusedConv2dFn(torch.autograd.Function):
    """Triton forward; PyTorch convolution gradients backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, w_packed, stride, padding, groups, relu, out_shape):
        y = _run(x, weight, bias, residual, w_packed, stride, padding, groups, relu, out_shape)
        ctx.stride, ctx.padding, ctx.groups, ctx.relu = stride, padding, groups, relu
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            # ReLU'(z) from the output: y > 0 exactly where z > 0.
            grad_y = grad_y * (y > 0).to(grad_y.dtype)
        grad_x = grad_w = grad_b = grad_res = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(
                x.shape, weight, grad_y, ctx.stride, ctx.padding, 1, ctx.groups
            )
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(
                x, weight.shape, grad_y, ctx.stride, ctx.padding, 1, ctx.groups
            )
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(dim=(0, 2, 3))
        if ctx.needs_input_grad[3]:
            grad_res = grad_y
        return grad_x, grad_w, grad_b, grad_res, None, None, None, None, None, None


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(F.conv2d(x, weight, bias, stride, padding, groups=groups) + residual)`` in one kernel.

    Args:
        x: [N, C_in, H, W], float16 / bfloat16 / float32, any memory format (converted to
            channels_last, which is what the kernel reads).
        weight: [C_out, C_in / groups, kh, kw], same dtype as ``x``.
        bias: optional [C_out].
        stride, padding: int or (h, w) pair; padding is zero padding.
        groups: number of channel groups.
        relu: apply ReLU after the bias and residual.
        residual: optional tensor of the output's shape, added before the activation.

    Returns:
        [N, C_out, H_out, W_out] in ``x``'s dtype, channels_last. Differentiable in ``x``,
        ``weight``, ``bias`` and ``residual``. fp32 inputs use TF32 when
        ``torch.backends.cudnn.allow_tf32`` is set (see the module docstring).
    """
    stride, padding, out_shape = _check_inputs(x, weight, bias, residual, stride, padding, groups)
    w_packed = pack_weight(weight, groups)
    return _FusedConv2dFn.apply(
        x, weight, bias, residual, w_packed, stride, padding, groups, bool(relu), out_shape
    )


def conv2d_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
) -> torch.Tensor:
    """``relu(F.conv2d(x, weight, bias, stride, padding, groups=groups))``; see :func:`conv2d`."""
    return conv2d(x, weight, bias, stride, padding, groups, relu=True)


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


class FusedConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` with an optional fused ReLU and residual input, run by the Triton kernel.

    Parameters and ``state_dict`` are exactly ``nn.Conv2d``'s (``weight``, ``bias``), so
    ``FusedConv2d(...).load_state_dict(conv.state_dict())`` works. ``forward(x, residual=None)``
    computes ``act(conv(x) + residual)``. The Triton kernel runs for CUDA inputs (or any
    supported input when ``TRITON_INTERPRET=1``); other inputs fall back to ``F.conv2d``.
    Only zero padding, dilation 1 and int / pair padding are supported.

    The K-major packed copy of the weight the kernel reads is built on first use and kept
    (outside the state_dict) until the weight changes, at the cost of one weight's memory.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        groups: int = 1,
        bias: bool = True,
        relu: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        if isinstance(padding, str):
            raise ValueError(f"FusedConv2d: padding must be an int or a pair of ints, got {padding!r}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride=_pair(stride, "stride"),
            padding=_pair(padding, "padding"), dilation=1, groups=groups, bias=bias,
            padding_mode="zeros", device=device, dtype=dtype,
        )  # fmt: skip
        self.relu = bool(relu)
        self._packed_key = None
        self._packed = None

    @classmethod
    def from_conv(cls, conv: torch.nn.Conv2d, relu: bool = False) -> FusedConv2d:
        """A FusedConv2d with ``conv``'s hyper-parameters and a copy of its parameters."""
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "FusedConv2d.from_conv: only zero padding given as ints and dilation 1 are supported"
            )
        fused = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.groups, bias=conv.bias is not None, relu=relu,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        fused.load_state_dict(conv.state_dict())
        return fused

    def _packed_weight(self) -> torch.Tensor:
        # Repack only when the weight changed: another tensor (load_state_dict, .to()) or an
        # in-place update (optimizer step bumps the version counter).
        w = self.weight
        if w.is_inference():  # no version counter to tell an in-place update by: no caching
            return pack_weight(w, self.groups)
        key = (w.data_ptr(), w._version, w.dtype, w.device, self.groups)
        if key != self._packed_key:
            self._packed = pack_weight(w, self.groups)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if support.kernel_can_run(x, self.weight):
            stride, padding, out_shape = _check_inputs(
                x, self.weight, self.bias, residual, self.stride, self.padding, self.groups
            )
            return _FusedConv2dFn.apply(
                x, self.weight, self.bias, residual, self._packed_weight(),
                stride, padding, self.groups, self.relu, out_shape,
            )  # fmt: skip
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"


# --------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------


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
    )


def _default_tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.bfloat16:
        return 1e-2  # 8-bit mantissa output rounding: ~2e-3 relative-norm error expected
    if dtype == torch.float16:
        return 2e-3  # 11-bit mantissa: ~3e-4 expected
    if _INTERPRET or not torch.backends.cudnn.allow_tf32:
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
    from triton.runtime.errors import OutOfResources

    if device is None:
        device = "cpu" if _INTERPRET else "cuda"
    if dtype is None:
        dtype = torch.float32 if _INTERPRET else torch.bfloat16
    kh, kw = _pair(kernel_size, "kernel_size")
    if small_c is None:
        small_c = uses_small_c_kernel(in_channels // groups)
    kernel = conv2d_fwd_small_c_kernel if small_c else conv2d_fwd_kernel
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
    w_packed = pack_weight(weight, groups)

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
            results.append(ConfigCheck(kernel.fn.__name__, desc, True, float("nan"), f"skipped: {exc}"))
            continue
        except Exception as exc:  # a compile error is a failed config, not a crash of the check
            results.append(ConfigCheck(kernel.fn.__name__, desc, False, float("nan"), f"error: {exc!r}"))
            continue
        y = out.double()
        if torch.isnan(y).any():
            n_bad = int(torch.isnan(y).sum())
            results.append(
                ConfigCheck(kernel.fn.__name__, desc, False, float("nan"), f"{n_bad} elements NaN/unwritten")
            )
            continue
        rel = float(torch.linalg.vector_norm(y - y_ref) / torch.linalg.vector_norm(y_ref).clamp_min(1e-30))
        ok = rel <= tol
        results.append(
            ConfigCheck(kernel.fn.__name__, desc, ok, rel, "" if ok else f"error {rel:.2e} > {tol:.0e}")
        )
    return results
