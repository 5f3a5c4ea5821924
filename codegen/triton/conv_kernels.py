"""The conv kernels (``@triton.jit``): implicit GEMM over channels_last activations.

See :mod:`.conv` for the algorithm and the launch; the tile configs and their prune are in
:mod:`.conv_tuning`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from archdsl.codegen.triton.conv_tuning import (
    AUTOTUNE_KEY,
    NO_SPECIALIZE,
    general_configs,
    prune_general,
    prune_small_c,
    small_c_configs,
)

__all__ = ["conv2d_fwd_kernel", "conv2d_fwd_small_c_kernel"]


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
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_general},
)
@triton.jit(do_not_specialize=NO_SPECIALIZE)
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
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_small_c},
)
@triton.jit(do_not_specialize=NO_SPECIALIZE)
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

