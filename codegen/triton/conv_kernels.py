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
    """Map the program to (pid_m, pid_n, conv group); see :func:`_swizzle`."""
    pid_m, pid_n = _swizzle(tl.program_id(axis=0), M, C_OUT_G, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
    return pid_m, pid_n, tl.program_id(axis=1)


@triton.jit
def _swizzle(pid, M, C_OUT_G, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr):
    """Map tile number ``pid`` to (pid_m, pid_n).

    Tiles are walked in bands of GROUP_SIZE_M tile rows (the matmul tutorial's L2 swizzle:
    tiles running together reuse the same activation rows and weight columns). Grid axis 1
    is the convolution group.
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(C_OUT_G, BLOCK_N)
    num_pid_in_band = GROUP_SIZE_M * num_pid_n
    band = pid // num_pid_in_band
    first_pid_m = band * GROUP_SIZE_M
    band_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_band) % band_size_m)
    pid_n = (pid % num_pid_in_band) // band_size_m
    return pid_m, pid_n


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
def _pool_quad_pixels(pid_m, M, OUT_H, OUT_W, BLOCK_M: tl.constexpr):
    """The BLOCK_M output pixels of this tile with the GEMM rows ordered as 2x2 pool quads:
    row 4 * p + q is pixel (2 * ph + q // 2, 2 * pw + q % 2) of pooled pixel p = (n, ph, pw),
    so that a quad's four rows sit together in the accumulator for the epilogue's max. Only
    whole quads are rows (max_pool2d's floor mode drops an odd last row or column)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    p = offs_m // 4
    q = offs_m % 4
    pw = p % (OUT_W // 2)
    t = p // (OUT_W // 2)
    ph = t % (OUT_H // 2)
    n = t // (OUT_H // 2)
    return n, 2 * ph + q // 2, 2 * pw + q % 2, mask_m


@triton.jit
def _row_offsets(n, h, w, stride_n, stride_h, stride_w, INDEX_64: tl.constexpr):
    """Offsets of the pixels (n, h, w) of an activation: int64 where some offset of the
    tensor passes 2**31 (``INDEX_64``, decided at launch), else int32, half the work."""
    if INDEX_64:
        return n.to(tl.int64) * stride_n + h.to(tl.int64) * stride_h + w.to(tl.int64) * stride_w
    else:
        return n * stride_n + h * stride_h + w * stride_w


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
    INDEX_64: tl.constexpr,
):  # fmt: skip
    """acc (fp32) + bias + residual -> ReLU -> cast -> masked store."""
    co = g * C_OUT_G + offs_n  # absolute output channel
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + co, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        r_rows = _row_offsets(n, oh, ow, stride_rn, stride_rh, stride_rw, INDEX_64)
        res = tl.load(res_ptr + r_rows[:, None] + (co * stride_rc)[None, :], mask=mask, other=0.0)
        acc += res.to(tl.float32)
    if APPLY_RELU:
        acc = tl.maximum(acc, 0.0)
    y_rows = _row_offsets(n, oh, ow, stride_yn, stride_yh, stride_yw, INDEX_64)
    y_ptrs = y_ptr + y_rows[:, None] + (co * stride_yc)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pool_epilogue(
    acc, bias_ptr, y_ptr, pid_m, M, OUT_H, OUT_W, offs_n, mask_n, g, C_OUT_G,
    stride_yn, stride_yh, stride_yw, stride_yc,
    HAS_BIAS: tl.constexpr, APPLY_RELU: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """acc (fp32, rows in pool quads) + bias -> ReLU -> max over each quad -> cast -> store of
    the pooled map only. Bias and ReLU commute with the max, but applying them first keeps
    the order of the unfused layers."""
    co = g * C_OUT_G + offs_n
    if HAS_BIAS:
        bias = tl.load(bias_ptr + co, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if APPLY_RELU:
        acc = tl.maximum(acc, 0.0)
    BLOCK_P: tl.constexpr = BLOCK_M // 4
    pooled = tl.max(tl.reshape(acc, (BLOCK_P, 4, acc.shape[1])), axis=1)
    offs_p = pid_m * BLOCK_P + tl.arange(0, BLOCK_P)
    pw = offs_p % (OUT_W // 2)
    t = offs_p // (OUT_W // 2)
    ph = t % (OUT_H // 2)
    n = t // (OUT_H // 2)
    y_rows = _row_offsets(n, ph, pw, stride_yn, stride_yh, stride_yw, INDEX_64)
    mask = (offs_p < M // 4)[:, None] & mask_n[None, :]
    tl.store(y_ptr + y_rows[:, None] + (co * stride_yc)[None, :], pooled.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tap_mask_bits(ih0, iw0, mask_m, IN_H, IN_W, KH: tl.constexpr, KW: tl.constexpr):
    """For each row, bit ``r * KW + s`` set where tap (r, s) of its window lies inside the
    image (and the row inside the GEMM): the padding test, done once per tile so that the K
    loop reads one bit per row instead of comparing four coordinates. KH * KW <= 32."""
    bits = tl.zeros_like(ih0)
    for r in tl.static_range(KH):
        h_ok = mask_m & (ih0 + r >= 0) & (ih0 + r < IN_H)
        for s in tl.static_range(KW):
            ok = h_ok & (iw0 + s >= 0) & (iw0 + s < IN_W)
            bits = bits | (ok.to(tl.int32) << (r * KW + s))
    return bits


@triton.autotune(
    configs=general_configs(),
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_general},
)
@triton.heuristics({
    # Whole channel blocks and whole N tiles: the K loop needs no channel or column masks.
    "EVEN_K": lambda a: a["C_IN_G"] % a["BLOCK_K"] == 0,
    "EVEN_N": lambda a: a["C_OUT_G"] % a["BLOCK_N"] == 0,
})  # fmt: skip
@triton.jit(do_not_specialize=NO_SPECIALIZE)
def conv2d_fwd_kernel(
    # Pointers: x [N, H, W, C_in] (any strides, NHWC in practice); w packed [G, KH*KW*C_in_g,
    # C_out_g]; bias [C_out]; residual and y [N, H_out, W_out, C_out] (any strides).
    # bias_ptr / res_ptr are ignored unless HAS_BIAS / HAS_RESIDUAL.
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr,
    # Problem sizes
    BATCH, IN_H, IN_W, OUT_H, OUT_W,
    C_IN_G, C_OUT_G, GROUPS,  # channels per group, number of groups
    STRIDE_H, STRIDE_W, PAD_H, PAD_W,
    # Strides, in elements
    stride_xn, stride_xh, stride_xw, stride_xc,
    stride_wg, stride_wk, stride_wn,
    stride_rn, stride_rh, stride_rw, stride_rc,
    stride_yn, stride_yh, stride_yw, stride_yc,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr,  # kernel size: the tap walk unrolls its arithmetic
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    INDEX_64: tl.constexpr,  # some activation offset passes 2**31: int64 row offsets
    POOL: tl.constexpr,  # 2x2/2 max-pool in the epilogue: y is the pooled map (no residual)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,  # tile swizzle, unrelated to conv groups
    NUM_SMS: tl.constexpr,  # the device's SMs: the persistent grid's size
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,  # set by the heuristics above
    PERSISTENT: tl.constexpr = False,  # (tile config) NUM_SMS programs per group, looping over tiles
):  # fmt: skip
    """Implicit-GEMM convolution; K walked as (r, s, channel block).

    The loop carries its position (tap r, s; channel offset c0) and both operand pointers,
    and advances them by increments computed on scalars, so the per-element work of an
    iteration is two pointer additions, the padding bit and the loads: no division, no
    per-element index arithmetic.

    With ``PERSISTENT`` (a tile config of its own, which the prune keeps only where
    :func:`.conv_tuning.uses_persistent_grid` holds: a tile count that is not a multiple of
    the SMs, under three waves) the grid has NUM_SMS programs per group and program p
    computes tiles p, p + NUM_SMS, ... in the same swizzled order, as in Triton's persistent
    matmul tutorial; otherwise one program per tile. The autotuner times both.
    """
    if POOL:
        M = BATCH * (OUT_H // 2) * (OUT_W // 2) * 4
    else:
        M = BATCH * OUT_H * OUT_W
    if PERSISTENT:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(C_OUT_G, BLOCK_N)
        for tile in range(tl.program_id(axis=0), num_tiles, NUM_SMS):
            pid_m, pid_n = _swizzle(tile, M, C_OUT_G, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
            _conv_tile(
                pid_m, pid_n, tl.program_id(axis=1), M,
                x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, IN_H, IN_W, OUT_H, OUT_W, C_IN_G, C_OUT_G,
                STRIDE_H, STRIDE_W, PAD_H, PAD_W, stride_xn, stride_xh, stride_xw, stride_xc,
                stride_wg, stride_wk, stride_wn, stride_rn, stride_rh, stride_rw, stride_rc,
                stride_yn, stride_yh, stride_yw, stride_yc, KH, KW, HAS_BIAS, HAS_RESIDUAL, APPLY_RELU,
                ALLOW_TF32, INDEX_64, POOL, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, EVEN_N,
            )  # fmt: skip
    else:
        pid_m, pid_n, g = _tile_ids(M, C_OUT_G, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
        _conv_tile(
            pid_m, pid_n, g, M,
            x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, IN_H, IN_W, OUT_H, OUT_W, C_IN_G, C_OUT_G,
            STRIDE_H, STRIDE_W, PAD_H, PAD_W, stride_xn, stride_xh, stride_xw, stride_xc,
            stride_wg, stride_wk, stride_wn, stride_rn, stride_rh, stride_rw, stride_rc,
            stride_yn, stride_yh, stride_yw, stride_yc, KH, KW, HAS_BIAS, HAS_RESIDUAL, APPLY_RELU,
            ALLOW_TF32, INDEX_64, POOL, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, EVEN_N,
        )  # fmt: skip


@triton.jit
def _conv_tile(
    pid_m, pid_n, g, M,
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, IN_H, IN_W, OUT_H, OUT_W, C_IN_G, C_OUT_G,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, stride_xn, stride_xh, stride_xw, stride_xc,
    stride_wg, stride_wk, stride_wn, stride_rn, stride_rh, stride_rw, stride_rc,
    stride_yn, stride_yh, stride_yw, stride_yc,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    APPLY_RELU: tl.constexpr, ALLOW_TF32: tl.constexpr, INDEX_64: tl.constexpr, POOL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
):  # fmt: skip
    """One BLOCK_M x BLOCK_N output tile of ``conv2d_fwd_kernel``: its K loop and epilogue."""
    if POOL:
        n, oh, ow, mask_m = _pool_quad_pixels(pid_m, M, OUT_H, OUT_W, BLOCK_M)
    else:
        n, oh, ow, mask_m = _output_pixels(pid_m, M, OUT_H, OUT_W, BLOCK_M)
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    # The group's first channel: a scalar below C_in * stride_xc, which int32 holds.
    x_rows = _row_offsets(n, ih0, iw0, stride_xn, stride_xh, stride_xw, INDEX_64) + g * C_IN_G * stride_xc

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT_G
    offs_k = tl.arange(0, BLOCK_K)
    # A at tap (0, 0), channel 0; B at packed row 0. The packed weight is small (< 2**31
    # elements): int32 offsets there.
    a_ptrs = x_ptr + x_rows[:, None] + (offs_k * stride_xc)[None, :]
    b_ptrs = w_ptr + g * stride_wg + (offs_k * stride_wk)[:, None] + (offs_n * stride_wn)[None, :]
    if KH * KW <= 32:
        tap_bits = _tap_mask_bits(ih0, iw0, mask_m, IN_H, IN_W, KH, KW)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) rather than nested loops: the software
    # pipeliner only overlaps the innermost loop, and a 1x1 or 3x3 layer has just a few
    # channel blocks per tap.
    num_cb = tl.cdiv(C_IN_G, BLOCK_K)
    r = 0
    s = 0
    rs = 0
    c0 = 0
    for _ in range(0, KH * KW * num_cb):
        if KH * KW <= 32:
            row_ok = ((tap_bits >> rs) & 1) != 0
        else:  # too many taps for one word of bits: compare the coordinates
            ih = ih0 + r
            iw = iw0 + s
            row_ok = mask_m & (ih >= 0) & (ih < IN_H) & (iw >= 0) & (iw < IN_W)
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            if EVEN_N:
                b = tl.load(b_ptrs)
            else:
                b = tl.load(b_ptrs, mask=mask_n[None, :], other=0.0)
        else:
            k_ok = c0 + offs_k < C_IN_G
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            if EVEN_N:
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            else:
                b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)
        # Next channel block, or the first of the next tap (s, then r, wraps).
        next_c = c0 + BLOCK_K
        new_tap = next_c >= C_IN_G
        new_row = new_tap & (s == KW - 1)
        a_step = tl.where(new_tap,
                          tl.where(new_row, stride_xh - (KW - 1) * stride_xw, stride_xw) - c0 * stride_xc,
                          BLOCK_K * stride_xc)
        # The packed weight's K index is (r * KW + s) * C_IN_G + c: the next tap's rows follow
        # this tap's last one.
        b_rows = tl.where(new_tap, C_IN_G - c0, BLOCK_K)
        a_ptrs += a_step
        b_ptrs += b_rows * stride_wk
        c0 = tl.where(new_tap, 0, next_c)
        rs += new_tap.to(tl.int32)
        s = tl.where(new_tap, tl.where(new_row, 0, s + 1), s)
        r += new_row.to(tl.int32)

    if POOL:
        _pool_epilogue(
            acc, bias_ptr, y_ptr, pid_m, M, OUT_H, OUT_W, offs_n, mask_n, g, C_OUT_G,
            stride_yn, stride_yh, stride_yw, stride_yc, HAS_BIAS, APPLY_RELU, INDEX_64, BLOCK_M,
        )  # fmt: skip
    else:
        _epilogue(
            acc, bias_ptr, res_ptr, y_ptr, n, oh, ow, mask_m, offs_n, mask_n, g, C_OUT_G,
            stride_rn, stride_rh, stride_rw, stride_rc, stride_yn, stride_yh, stride_yw, stride_yc,
            HAS_BIAS, HAS_RESIDUAL, APPLY_RELU, INDEX_64,
        )  # fmt: skip


@triton.autotune(
    configs=small_c_configs(),
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_small_c},
)
@triton.jit(do_not_specialize=NO_SPECIALIZE)
def conv2d_fwd_small_c_kernel(
    # Pointers (as in conv2d_fwd_kernel), except that x is the stem copy made at launch
    # (``conv.stem_input``): NHWC with stride_xc == 1, each group's channels zero-padded to
    # C_PAD and the image zero-padded by the conv's padding, so PAD_H == PAD_W == 0 here and
    # every window lies inside it. The packed weight's K index is (r * KW + s) * C_PAD + c,
    # its padded channels zero.
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr,
    # Problem sizes (IN_H, IN_W: the padded copy's; C_IN_G: C_PAD)
    BATCH, IN_H, IN_W, OUT_H, OUT_W,
    C_IN_G, C_OUT_G, GROUPS,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W,
    # Strides, in elements
    stride_xn, stride_xh, stride_xw, stride_xc,
    stride_wg, stride_wk, stride_wn,
    stride_rn, stride_rh, stride_rw, stride_rc,
    stride_yn, stride_yh, stride_yw, stride_yc,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr,
    C_IN: tl.constexpr,  # the layer's input channels per group
    C_PAD: tl.constexpr,  # ... padded to a power of two >= 4: one pixel is one vector
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):  # fmt: skip
    """Implicit-GEMM convolution for few input channels; K walked as flat (r, s, c) blocks.

    A K block of BLOCK_K covers BLOCK_K / C_PAD whole taps (or, where C_PAD > BLOCK_K, a
    channel run of one tap). Within a tap the C_PAD channels of a pixel are contiguous and
    start at a multiple of C_PAD elements, and the mask is constant across them, so each
    pixel's channels load as one vector (8 or 16 bytes) that goes to shared memory by an
    asynchronous copy, instead of C_IN single elements gathered into registers. The padding
    costs multiply-adds by zero (4/3 of the work for RGB), which this memory-bound layer has
    to spare.
    """
    tl.static_assert(C_IN <= C_PAD)
    M = BATCH * OUT_H * OUT_W
    # The loop bound is run-time (C_IN_G = C_PAD): with a constant trip count the compiler
    # may unroll the loop and hold several iterations' tiles at once.
    K_G = KH * KW * C_IN_G
    pid_m, pid_n, g = _tile_ids(M, C_OUT_G, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
    n, oh, ow, mask_m = _output_pixels(pid_m, M, OUT_H, OUT_W, BLOCK_M)
    # Offsets in units of C_PAD elements (one pixel of one group), so that their multiple
    # of C_PAD tells the compiler every vector is aligned.
    x_vecs = _row_offsets(n, oh * STRIDE_H, ow * STRIDE_W, stride_xn // C_PAD, stride_xh // C_PAD,
                          stride_xw // C_PAD, INDEX_64) + g

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT_G
    offs_k = tl.arange(0, BLOCK_K)
    w_cols = w_ptr + g * stride_wg + offs_n[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K_G, BLOCK_K):
        # k = k0 + offs_k as (tap, channel); k0 is a multiple of BLOCK_K, both powers of two.
        # The block's first channel, k0 % C_PAD, is written as a multiple of BLOCK_K (it is
        # one) so that the compiler sees the vectors' alignment.
        tap = k0 // C_PAD + offs_k // C_PAD
        c = (k0 % C_PAD) // BLOCK_K * BLOCK_K + offs_k % C_PAD
        k_ok = tap < KH * KW
        r = tap // KW
        s = tap - r * KW
        tap_vecs = r * (stride_xh // C_PAD) + s * (stride_xw // C_PAD)
        a_offs = (x_vecs[:, None] + tap_vecs[None, :]) * C_PAD + c[None, :]
        a = tl.load(x_ptr + a_offs, mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_cols + (tap * C_PAD + c)[:, None] * stride_wk, mask=k_ok[:, None] & mask_n[None, :],
                    other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)

    _epilogue(
        acc, bias_ptr, res_ptr, y_ptr, n, oh, ow, mask_m, offs_n, mask_n, g, C_OUT_G,
        stride_rn, stride_rh, stride_rw, stride_rc, stride_yn, stride_yh, stride_yw, stride_yc,
        HAS_BIAS, HAS_RESIDUAL, APPLY_RELU, INDEX_64,
    )  # fmt: skip
