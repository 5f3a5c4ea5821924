"""Local response normalisation (AlexNet's LRN, VGG's A-LRN) as Triton kernels.

For an (N, C, H, W) input and a window of ``size`` = n neighbouring channels,

    b_c = a_c / (k + alpha' * S_c) ** beta,        S_c = sum_{j = c - n//2}^{c + (n-1)//2} a_j ** 2

with the window clipped at the first and last channel. ``mode="sum"`` (the default) is the
published AlexNet formula, alpha' = alpha. ``mode="avg"`` is what PyTorch's
``F.local_response_norm`` and Caffe compute, alpha' = alpha / n. For odd n the window is
centred; for even n it reaches n//2 channels below and (n-1)//2 above, exactly as PyTorch pads
it.

Public entry points:

* :func:`lrn` -- the Triton kernels, differentiable through a ``torch.autograd.Function``.
* :func:`lrn_reference` -- an explicit-window PyTorch version, computed in the input's dtype
  (the tests run it in float64).
* :func:`lrn_torch` -- ``F.local_response_norm`` with alpha converted for ``mode``.
* :class:`LocalResponseNorm` -- the module the compiler's backends instantiate.

Kernel layout. A tensor is walked as (batch, channel, pixel), with pixel p = h * W + w under a
single stride: that covers NCHW-contiguous input (pixels contiguous) and channels_last input
(channels contiguous) without copying, and the output is allocated in the input's memory
format. Each program owns a chunk of channels (all of them when C is small enough, which is
the common case) by a block of pixels, and each thread a run of 8 consecutive channels of
some pixels.

Window sums. The thread holds its run plus the halo the windows reach into (n//2 channels
below, (n-1)//2 above) as fp32 registers, one tensor per channel, so each window sum is n - 1
register adds of squares it already has, formed directly (no running sum with subtractions,
so no cancellation when a large activation leaves the window). Every element is read once
per run: with channels_last the run is one 16-byte vector of channels (two in fp32) cut into
channels in registers, and the halo the neighbouring vectors, which the neighbouring threads
have just read (L1); with NCHW each channel of the run and its halo is a row of pixels, a
16-byte vector per thread when H*W keeps the rows aligned (an odd H*W, as in AlexNet, leaves
them element-wise). The forward thus reads x once and writes y once per element.

Backward. dx_j = g_j d_j^-beta - 2 alpha beta x_j sum_{i : j in window(i)} t_i with
t_i = g_i x_i d_i^(-beta-1): each thread forms t for its run and the mirrored window's halo
once (RUN + n - 1 powers per RUN channels) from d recomputed from x, then takes the
transposed window sums of t in registers. Only x is saved for it; see ``_LRNFunction``. All
arithmetic is fp32 whatever the storage type, and for beta = 3/4 the powers come from
reciprocal square roots instead of exp2/log2 (``_rpow``).
"""

import functools
import math
import numbers

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from archdsl.codegen.triton import support

__all__ = ["lrn", "lrn_reference", "lrn_torch", "launch_args", "LocalResponseNorm"]

_MODES = ("sum", "avg")


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
#
# Both kernels work on channel runs. A program owns BLOCK_C channels by BLOCK_P pixels, and
# each of its threads owns RUN = min(8, BLOCK_C) consecutive channels of some pixels. The run,
# plus the halo its windows reach into, is held as a tuple of per-channel tensors ("rows"),
# so that every window sum is a few register adds of rows the thread already holds: the
# tuple is unrolled at compile time and nothing is shifted at run time.
#
# How the rows are read depends on which axis is contiguous in memory:
#
# * channels_last (unit channel stride): the run is read as whole vectors of VW consecutive
#   channels (16 bytes: 8 in 16-bit types, 4 in fp32), tiles of shape [BLOCK_P, groups, VW],
#   and cut into rows in registers (_unpack); the halo is the neighbouring vectors, which
#   the neighbouring threads have just read, so they come from L1. The result is put back
#   together (_pack) and leaves in the same vectors.
# * otherwise (NCHW: unit pixel stride): each row is its own load of [groups, BLOCK_P], a
#   vector of consecutive pixels per thread; the RUN + halo rows are each read once.


@triton.jit
def _halves(v, A: tl.constexpr, B: tl.constexpr, W: tl.constexpr):
    """[A, B, W] -> its first and second halves, two [A, B, W // 2] tensors."""
    return tl.split(tl.permute(tl.reshape(v, [A, B, 2, W // 2]), [0, 1, 3, 2]))


@triton.jit
def _unite(lo, hi, A: tl.constexpr, B: tl.constexpr, W: tl.constexpr):
    """The inverse of _halves: two [A, B, W // 2] tensors -> one [A, B, W]."""
    return tl.reshape(tl.permute(tl.join(lo, hi), [0, 1, 3, 2]), [A, B, W])


@triton.jit
def _unpack(v, A: tl.constexpr, B: tl.constexpr, W: tl.constexpr):
    """Cut v, of shape [A, B, W] (W in 1, 2, 4, 8) with the W axis held by one thread, into
    a tuple of W [A, B] tensors in order. Halving by reshape/permute/split only renames
    registers."""
    if W == 1:
        parts = (v,)
    elif W == 2:
        parts = _halves(v, A, B, 2)
    elif W == 4:
        a, b = _halves(v, A, B, 4)
        parts = _halves(a, A, B, 2) + _halves(b, A, B, 2)
    else:
        a, b = _halves(v, A, B, 8)
        a0, a1 = _halves(a, A, B, 4)
        b0, b1 = _halves(b, A, B, 4)
        parts = _halves(a0, A, B, 2) + _halves(a1, A, B, 2) + _halves(b0, A, B, 2) + _halves(b1, A, B, 2)
    rows = ()
    for i in tl.static_range(W):
        rows = rows + (tl.reshape(parts[i], [A, B]),)
    return rows


@triton.jit
def _pack(rows, A: tl.constexpr, B: tl.constexpr, W: tl.constexpr):
    """The inverse of _unpack: W [A, B] tensors joined into one [A, B, W] tensor."""
    p = ()
    for i in tl.static_range(W):
        p = p + (tl.reshape(rows[i], [A, B, 1]),)
    if W == 1:
        v = p[0]
    elif W == 2:
        v = _unite(p[0], p[1], A, B, 2)
    elif W == 4:
        v = _unite(_unite(p[0], p[1], A, B, 2), _unite(p[2], p[3], A, B, 2), A, B, 4)
    else:
        lo = _unite(_unite(p[0], p[1], A, B, 2), _unite(p[2], p[3], A, B, 2), A, B, 4)
        hi = _unite(_unite(p[4], p[5], A, B, 2), _unite(p[6], p[7], A, B, 2), A, B, 4)
        v = _unite(lo, hi, A, B, 8)
    return v


@triton.jit
def _run_channel(offs_g, r, CHANNELS_LAST: tl.constexpr):
    """Channel index of row r of every run, shaped to broadcast against a row."""
    if CHANNELS_LAST:
        return (offs_g + r)[None, :]
    else:
        return (offs_g + r)[:, None]


@triton.jit
def _load_rows(base, offs_g, offs_p, mask_p, C, stride_c, stride_p,
               BELOW: tl.constexpr, ABOVE: tl.constexpr,
               RUN: tl.constexpr, VW: tl.constexpr, EVEN_C: tl.constexpr, ROW_ALIGN: tl.constexpr,
               CHANNELS_LAST: tl.constexpr):
    """Rows of channels offs_g - BELOW .. offs_g + RUN + ABOVE - 1, as fp32, in order.

    `offs_g` holds the first channel of each run, `offs_p` the pixels (int64); `base` points
    at the image. Channels outside [0, C) read as 0, which is what clips the windows.
    """
    rows = ()
    if CHANNELS_LAST:
        A: tl.constexpr = offs_p.shape[0]
        B: tl.constexpr = offs_g.shape[0]
        lane = tl.arange(0, VW)
        pix = (offs_p * stride_p)[:, None, None]
        # Vectors -cdiv(BELOW, VW) .. cdiv(RUN + ABOVE, VW) - 1 of VW channels from each run start.
        first: tl.constexpr = -((BELOW + VW - 1) // VW)
        last: tl.constexpr = (RUN + ABOVE + VW - 1) // VW
        for j in tl.static_range(first, last):
            start = offs_g + j * VW
            chan = start[None, :, None] + lane[None, None, :]
            if EVEN_C:  # whole vectors are in or out: the mask is uniform across a vector
                in_c = ((start >= 0) & (start < C))[None, :, None]
            else:
                in_c = (chan >= 0) & (chan < C)
            v = tl.load(base + pix + chan.to(tl.int64) * stride_c,
                        mask=mask_p[:, None, None] & in_c, other=0.0).to(tl.float32)
            parts = _unpack(v, A, B, VW)
            for i in tl.static_range(VW):
                if (j * VW + i >= -BELOW) and (j * VW + i < RUN + ABOVE):
                    rows = rows + (parts[i],)
    else:
        pix = (offs_p * stride_p)[None, :]
        for r in tl.static_range(-BELOW, RUN + ABOVE):
            chan = offs_g + r
            mask = ((chan >= 0) & (chan < C))[:, None] & mask_p[None, :]
            # Every row gets the alignment they all share (see ROW_ALIGN), so that they are
            # read in one register layout and combine without shuffles through shared memory.
            start = tl.multiple_of(chan.to(tl.int64) * stride_c, ROW_ALIGN)
            row = tl.load(base + start[:, None] + pix, mask=mask, other=0.0)
            rows = rows + (row.to(tl.float32),)
    return rows


@triton.jit
def _store_rows(base, rows, offs_g, offs_p, mask_p, C, stride_c, stride_p,
                RUN: tl.constexpr, VW: tl.constexpr, EVEN_C: tl.constexpr, ROW_ALIGN: tl.constexpr,
                CHANNELS_LAST: tl.constexpr):
    """Store RUN rows (channels offs_g .. offs_g + RUN - 1) in base's element type."""
    if CHANNELS_LAST:
        A: tl.constexpr = offs_p.shape[0]
        B: tl.constexpr = offs_g.shape[0]
        lane = tl.arange(0, VW)
        pix = (offs_p * stride_p)[:, None, None]
        for j in tl.static_range(RUN // VW):
            part = ()
            for i in tl.static_range(VW):
                part = part + (rows[j * VW + i],)
            start = offs_g + j * VW
            chan = start[None, :, None] + lane[None, None, :]
            if EVEN_C:
                in_c = (start < C)[None, :, None]
            else:
                in_c = chan < C
            v = _pack(part, A, B, VW)
            tl.store(base + pix + chan.to(tl.int64) * stride_c, v.to(base.dtype.element_ty),
                     mask=mask_p[:, None, None] & in_c)
    else:
        pix = (offs_p * stride_p)[None, :]
        for r in tl.static_range(RUN):
            chan = offs_g + r
            mask = (chan < C)[:, None] & mask_p[None, :]
            start = tl.multiple_of(chan.to(tl.int64) * stride_c, ROW_ALIGN)
            tl.store(base + start[:, None] + pix, rows[r].to(base.dtype.element_ty),
                     mask=mask)


@triton.jit
def _rpow(d, beta, EXTRA: tl.constexpr, BETA_IS_3_4: tl.constexpr):
    """d ** -(beta + EXTRA) for d > 0, EXTRA a small non-negative integer.

    For beta = 3/4, which is what LRN is used with, this takes two reciprocal square roots,
    d^-3/4 = d^-1/2 * (d^1/2)^-1/2, rather than exp2 of a full-precision log2 (a polynomial of
    some two dozen instructions).
    """
    if BETA_IS_3_4:
        r = tl.rsqrt(d)
        p = r * tl.rsqrt(d * r)
        for _ in tl.static_range(EXTRA):
            p = p * (r * r)
        return p
    else:
        return tl.exp2(-(beta + EXTRA) * tl.log2(d))


@triton.jit
def _tile_offsets(N, P, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, RUN: tl.constexpr):
    """(image, first channel of each run, pixels, pixel mask) of this program, int64 where
    products with strides follow (so that tensors past 2**31 elements are addressed exactly).

    Axis 0 enumerates (image, pixel block) pairs, axis 1 the channel chunks."""
    pid = tl.program_id(0)
    num_p_blocks = tl.cdiv(P, BLOCK_P)
    pid_n = (pid // num_p_blocks).to(tl.int64)
    pid_p = (pid % num_p_blocks).to(tl.int64)
    offs_g = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C // RUN) * RUN
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    return pid_n, offs_g, offs_p, offs_p < P


def _tile_configs(max_block_c, elems_per_thread, interpret=support.INTERPRET):
    """Autotuning space: channel chunk, pixel block and warps per program.

    A tile holds `elems_per_thread` elements per thread: runs of up to 8 channels times one
    or more pixels (channels_last), or 8 channels times a vector of pixels (NCHW).
    `_prune_configs` then narrows the space to the shape at hand. Under the interpreter
    autotuning would run every config, so there is a single one; its chunk of 16 channels is
    two runs of 8, and C > 16 takes the chunked path (halo loads across chunk boundaries),
    which the tests then cover.
    """
    if interpret:
        return [triton.Config({"BLOCK_C": 16, "BLOCK_P": 16}, num_warps=1)]
    configs = []
    for num_warps in (4, 8):
        for per_thread in elems_per_thread:
            tile = per_thread * 32 * num_warps
            block_c = 1
            while block_c <= max_block_c and block_c <= tile:
                meta = {"BLOCK_C": block_c, "BLOCK_P": tile // block_c}
                configs.append(triton.Config(meta, num_warps=num_warps))
                block_c *= 2
    return configs


def _vector_elems(args):
    """Elements in a 16-byte vector of the kernel's input (bf16 when not known)."""
    x = args.get("X")
    return 16 // x.element_size() if isinstance(x, torch.Tensor) else 8


def _prune_configs(configs, named_args, *, backward=False, **kwargs):
    """Keep the tilings that suit this shape and layout.

    The channel chunk is all channels (rounded up to a power of two) when they fit, so that no
    program re-reads a neighbour's channels; with channels_last (unit channel stride) that is
    also what makes the tile one contiguous run of memory, read as 16-byte vectors of
    channels. With NCHW the pixels are contiguous: a narrower chunk of 32 channels is tried as
    well, and each thread should hold a run of 8 channels by a vector of 2 to 16 bytes of
    pixels (more would spill, fewer would be narrow loads); pixel blocks much longer than the
    image are dropped. `backward` (the backward kernel's prune) holds fewer pixels per thread.
    """
    args = {**named_args, **kwargs}
    channels, pixels = args["C"], args["P"]
    full = min(triton.next_power_of_2(channels), max(cfg.kwargs["BLOCK_C"] for cfg in configs))
    if args["stride_xc"] == 1:
        chunks = {full}
    else:
        chunks = {full, min(full, 32)}
    candidates = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] in chunks] or list(configs)
    max_block_p = max(triton.next_power_of_2(pixels), min(cfg.kwargs["BLOCK_P"] for cfg in candidates))
    kept = [cfg for cfg in candidates if cfg.kwargs["BLOCK_P"] <= max_block_p]
    if args["stride_xc"] != 1:
        vec = _vector_elems(args)

        def pixels_per_thread(cfg):
            block_c, block_p = cfg.kwargs["BLOCK_C"], cfg.kwargs["BLOCK_P"]
            return block_p * (block_c // min(8, block_c)) / (32 * cfg.num_warps)

        # Rows that are not all 16-byte aligned (an odd H*W) are read element by element:
        # 4 pixels per thread then in the forward (8 pixels of 12 scalar rows spill), 2 in the
        # backward (28 rows of 4 pixels take all 255 registers).
        most = vec if math.gcd(args["stride_xc"], vec) == vec else min(vec, 2 if backward else 4)
        kept = [cfg for cfg in kept if 2 <= pixels_per_thread(cfg) <= most] or kept
    return kept or candidates


# The key names every shape argument the kernels specialise on; the layout enters through
# the channel and pixel strides (one of them is 1), and Triton adds the tensors' dtypes.
_AUTOTUNE_KEY = ["N", "C", "P", "stride_xc", "stride_xp", "SIZE"]


@triton.jit
def _lrn_fwd_kernel(
    # Pointers to the input and the output
    X, Y,
    # Sizes: batch, channels, pixels per image (H * W, or N * H * W with the batch folded in)
    N, C, P,
    # Strides, in elements, over (batch, channel, pixel)
    stride_xn, stride_xc, stride_xp,
    stride_yn, stride_yc, stride_yp,
    # Normalisation parameters; alpha is already divided by SIZE in "avg" mode
    alpha, beta, k,
    # Meta-parameters
    SIZE: tl.constexpr,           # channels in the window (n)
    BETA_IS_3_4: tl.constexpr,    # beta == 0.75: powers from reciprocal square roots
    CHANNELS_LAST: tl.constexpr,  # unit channel stride: vectors run along channels
    VEC: tl.constexpr,            # elements in 16 bytes of X
    EVEN_C: tl.constexpr,         # C % VEC == 0: channel masks are uniform per vector
    ROW_ALIGN: tl.constexpr,      # NCHW: gcd(channel stride, VEC), the alignment all rows share
    BLOCK_C: tl.constexpr,        # channels per tile
    BLOCK_P: tl.constexpr,        # pixels per tile
):
    LO: tl.constexpr = SIZE // 2        # the window reaches LO channels below
    HI: tl.constexpr = (SIZE - 1) // 2  # and HI above
    RUN: tl.constexpr = BLOCK_C if BLOCK_C < 8 else 8
    VW: tl.constexpr = RUN if RUN < VEC else VEC
    pid_n, offs_g, offs_p, mask_p = _tile_offsets(N, P, BLOCK_C, BLOCK_P, RUN)

    # xs[i] is channel offs_g - LO + i: the run and its halo, each element read once.
    xs = _load_rows(X + pid_n * stride_xn, offs_g, offs_p, mask_p, C, stride_xc, stride_xp,
                    LO, HI, RUN, VW, EVEN_C, ROW_ALIGN, CHANNELS_LAST)

    # S_j = sum of x^2 over rows j .. j + SIZE - 1, formed directly (no running sum with
    # subtractions, so no cancellation when a large activation leaves the window); the
    # squares are shared between windows. y = x * (k + alpha * S)^(-beta), all in fp32.
    ys = ()
    for j in tl.static_range(RUN):
        s = xs[j] * xs[j]
        for r in tl.static_range(1, SIZE):
            s += xs[j + r] * xs[j + r]
        ys = ys + (xs[j + LO] * _rpow(k + alpha * s, beta, 0, BETA_IS_3_4),)

    _store_rows(Y + pid_n * stride_yn, ys, offs_g, offs_p, mask_p, C, stride_yc, stride_yp,
                RUN, VW, EVEN_C, ROW_ALIGN, CHANNELS_LAST)


@triton.jit
def _lrn_bwd_kernel(
    # Pointers to the saved input, the upstream gradient and the input gradient
    X, G, DX,
    # Sizes: batch, channels, pixels per image (H * W, or N * H * W with the batch folded in)
    N, C, P,
    # Strides, in elements, over (batch, channel, pixel)
    stride_xn, stride_xc, stride_xp,
    stride_gn, stride_gc, stride_gp,
    stride_dn, stride_dc, stride_dp,
    # Normalisation parameters; alpha is already divided by SIZE in "avg" mode
    alpha, beta, k,
    # Meta-parameters
    SIZE: tl.constexpr,           # channels in the window (n)
    BETA_IS_3_4: tl.constexpr,    # beta == 0.75: powers from reciprocal square roots
    CHANNELS_LAST: tl.constexpr,  # unit channel stride: vectors run along channels
    VEC: tl.constexpr,            # elements in 16 bytes of X
    EVEN_C: tl.constexpr,         # C % VEC == 0: channel masks are uniform per vector
    ROW_ALIGN: tl.constexpr,      # NCHW: gcd(channel stride, VEC), the alignment all rows share
    BLOCK_C: tl.constexpr,        # channels per tile
    BLOCK_P: tl.constexpr,        # pixels per tile
):
    # With d_i = k + alpha * S_i, y_i = x_i * d_i^-beta and t_i = g_i * x_i * d_i^(-beta-1):
    #   dx_j = g_j * d_j^-beta - 2 * beta * alpha * x_j * sum_{i : j in window(i)} t_i
    # window(i) = [i - LO, i + HI], so j is in window(i) iff i is in [j - HI, j + LO]: the
    # transposed window, mirrored when SIZE is even. Each t_i is formed once per run (for
    # RUN + SIZE - 1 channels), which takes the windows of x over RUN + 2 * (SIZE - 1)
    # channels; d is recomputed from x (nothing but x is saved).
    LO: tl.constexpr = SIZE // 2
    HI: tl.constexpr = (SIZE - 1) // 2
    RUN: tl.constexpr = BLOCK_C if BLOCK_C < 8 else 8
    VW: tl.constexpr = RUN if RUN < VEC else VEC
    pid_n, offs_g, offs_p, mask_p = _tile_offsets(N, P, BLOCK_C, BLOCK_P, RUN)

    # xs[i] is channel offs_g - (SIZE - 1) + i, gs[i] channel offs_g - HI + i.
    xs = _load_rows(X + pid_n * stride_xn, offs_g, offs_p, mask_p, C, stride_xc, stride_xp,
                    SIZE - 1, SIZE - 1, RUN, VW, EVEN_C, ROW_ALIGN, CHANNELS_LAST)
    gs = _load_rows(G + pid_n * stride_gn, offs_g, offs_p, mask_p, C, stride_gc, stride_gp,
                    HI, LO, RUN, VW, EVEN_C, ROW_ALIGN, CHANNELS_LAST)

    # ts[i] = t of channel offs_g - HI + i; its window of x is xs[i] .. xs[i + SIZE - 1].
    ts = ()
    ds = ()  # d_j of the run's own channels, and d_j^(-beta-1) in ps: reused below
    ps = ()
    for i in tl.static_range(RUN + SIZE - 1):
        s = xs[i] * xs[i]
        for r in tl.static_range(1, SIZE):
            s += xs[i + r] * xs[i + r]
        d = k + alpha * s
        p = _rpow(d, beta, 1, BETA_IS_3_4)
        # Channels outside [0, C) load as 0, but d^(-beta-1) is inf there when k == 0.
        chan = _run_channel(offs_g, i - HI, CHANNELS_LAST)
        ts = ts + (tl.where((chan >= 0) & (chan < C), gs[i] * xs[i + LO] * p, 0.0),)
        if (i >= HI) and (i < HI + RUN):
            ds = ds + (d,)
            ps = ps + (p,)

    dxs = ()
    for j in tl.static_range(RUN):
        acc = ts[j]
        for r in tl.static_range(1, SIZE):
            acc += ts[j + r]
        # d^-beta = d * d^(-beta-1) saves a power.
        dxs = dxs + (gs[j + HI] * (ds[j] * ps[j]) - 2.0 * beta * alpha * xs[j + SIZE - 1] * acc,)

    _store_rows(DX + pid_n * stride_dn, dxs, offs_g, offs_p, mask_p, C, stride_dc, stride_dp,
                RUN, VW, EVEN_C, ROW_ALIGN, CHANNELS_LAST)


_lrn_fwd_tuned = triton.autotune(
    configs=_tile_configs(max_block_c=256, elems_per_thread=(8, 16, 32, 64)),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
)(_lrn_fwd_kernel)

_lrn_bwd_tuned = triton.autotune(
    configs=_tile_configs(max_block_c=128, elems_per_thread=(8, 16, 32)),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": functools.partial(_prune_configs, backward=True)},
)(_lrn_bwd_kernel)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _check_args(x, size, mode, *, need_kernel):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lrn: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"lrn: expected a 4-D (N, C, H, W) tensor, got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    if need_kernel and x.dtype not in support.KERNEL_DTYPES:
        raise TypeError(f"lrn: expected a float16, bfloat16 or float32 tensor, got {x.dtype}")
    if not x.is_floating_point():
        raise TypeError(f"lrn: expected a floating-point tensor, got {x.dtype}")
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"lrn: size must be an int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"lrn: size (channels in the window) must be >= 1, got {size}")
    if mode not in _MODES:
        raise ValueError(f"lrn: mode must be 'sum' (AlexNet paper) or 'avg' (PyTorch/Caffe), got {mode!r}")
    if need_kernel and not x.is_cuda and not support.INTERPRET:
        raise ValueError(
            f"lrn: the Triton kernel needs a CUDA tensor, got one on {x.device}; "
            "set TRITON_INTERPRET=1 before importing to run it on the CPU, or use lrn_torch"
        )


def _effective_alpha(alpha, size, mode):
    return alpha / size if mode == "avg" else alpha


def _memory_format(x):
    """The memory format to produce results in: the input's own when it is dense."""
    if not x.is_contiguous() and (x.is_contiguous(memory_format=torch.channels_last) or x.stride(1) == 1):
        return torch.channels_last
    return torch.contiguous_format


def _ncp_strides(t):
    """(stride_n, stride_c, stride_p) when H and W can be walked as one pixel index
    p = h * W + w with a single stride, else None."""
    _, _, h, w = t.shape
    stride_n, stride_c, stride_h, stride_w = t.stride()
    if w == 1:
        return stride_n, stride_c, stride_h
    if h == 1 or stride_h == w * stride_w:
        return stride_n, stride_c, stride_w
    return None


def _kernel_view(tensors, fmt):
    """Make each tensor walkable as (batch, channel, pixel) (copying only those that are not)
    and fold the batch into the pixel axis when every tensor allows it (channels_last does).

    Returns the tensors, (N, C, P) and a flat list of their strides.
    """
    tensors = [t if _ncp_strides(t) is not None else t.contiguous(memory_format=fmt) for t in tensors]
    n, c, h, w = tensors[0].shape
    pixels = h * w
    strides = [_ncp_strides(t) for t in tensors]
    if n > 1 and all(sn == pixels * sp for sn, _, sp in strides):
        strides = [(0, sc, sp) for _, sc, sp in strides]
        n, pixels = 1, n * pixels
    return tensors, (n, c, pixels), [s for triple in strides for s in triple]


def _output(x, fmt, out):
    if out is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous(memory_format=fmt):
        raise ValueError("lrn: out must match x in shape, dtype and memory format")
    return out


def launch_args(x, size, alpha, beta, k, grad_y=None, out=None):
    """The output and one launch of the forward (``grad_y`` None) or backward kernel.

    Returns ``(out, tuned, kernel, grid, args, meta)``: the result tensor (dy/dx for the
    backward) in x's memory format, the autotuned and the plain kernel, the grid function, the
    positional arguments and the constexpr keywords. ``alpha`` is already converted for the
    mode. Only shapes, strides and dtypes are read, so meta tensors do: :mod:`.aot` compiles
    the kernels offline from exactly what a real launch would pass.
    """
    fmt = _memory_format(x)
    out = _output(x, fmt, out)
    inputs = [x] if grad_y is None else [x, grad_y.to(x.dtype)]
    views, sizes, strides = _kernel_view([*inputs, out], fmt)
    *views, out_view = views
    assert out_view is out  # dense in `fmt`, so never copied
    n, c, pixels = sizes
    args = (*views, out, n, c, pixels, *strides, float(alpha), float(beta), float(k))
    vec = 16 // x.element_size()
    meta = dict(SIZE=size, BETA_IS_3_4=float(beta) == 0.75, CHANNELS_LAST=strides[1] == 1,
                VEC=vec, EVEN_C=c % vec == 0, ROW_ALIGN=math.gcd(strides[1], vec))

    def grid(m):
        return (n * triton.cdiv(pixels, m["BLOCK_P"]), triton.cdiv(c, m["BLOCK_C"]))

    if grad_y is None:
        return out, _lrn_fwd_tuned, _lrn_fwd_kernel, grid, args, meta
    return out, _lrn_bwd_tuned, _lrn_bwd_kernel, grid, args, meta


def _run(x, size, alpha, beta, k, grad_y=None, block=None, out=None):
    out, tuned, kernel, grid, args, meta = launch_args(x, size, alpha, beta, k, grad_y, out)
    if out.numel() == 0:
        return out
    if block is None:
        tuned[grid](*args, **meta)
    else:
        # Explicit tiling (tests): block = (BLOCK_C, BLOCK_P) or (BLOCK_C, BLOCK_P, num_warps).
        block_c, block_p, *warps = block
        kernel[grid](*args, **meta, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=(warps or [4])[0])
    return out


def _lrn_forward(x, size, alpha, beta, k, block=None, out=None):
    """y = LRN(x) with alpha already converted for the mode; y in x's memory format.

    `block` forces a tiling instead of autotuning and `out` supplies the output buffer; both
    exist for the tests.
    """
    return _run(x, size, alpha, beta, k, block=block, out=out)


def _lrn_backward(x, grad_y, size, alpha, beta, k, block=None, out=None):
    """dx given x and dL/dy, with alpha already converted for the mode; dx in x's format."""
    return _run(x, size, alpha, beta, k, grad_y=grad_y, block=block, out=out)


class _LRNFunction(torch.autograd.Function):
    # Saves x only and recomputes d = k + alpha * S in the backward: saving d instead would cost
    # an extra full-size write in the forward and read in the backward (in fp32 to keep its
    # precision), while the backward has to read x anyway and forms the window sums in registers.

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.save_for_backward(x)
        ctx.params = (size, alpha, beta, k)
        return _lrn_forward(x, size, alpha, beta, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        size, alpha, beta, k = ctx.params
        grad_x = _lrn_backward(x, grad_y, size, alpha, beta, k) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0, mode="sum"):
    """Local response normalisation across channels of an (N, C, H, W) tensor, in Triton.

    ``mode="sum"`` divides by (k + alpha * sum of squares over the window)^beta, as in the
    AlexNet paper (whose defaults these are: n=5, alpha=1e-4, beta=0.75, k=2);
    ``mode="avg"`` uses alpha / size, like ``F.local_response_norm`` and Caffe.

    Accepts float16, bfloat16 and float32 (computed in float32), NCHW or channels_last; the
    result has the input's dtype and memory format. Differentiable.
    """
    _check_args(x, size, mode, need_kernel=True)
    size = int(size)
    return _LRNFunction.apply(x, size, _effective_alpha(alpha, size, mode), beta, k)


def lrn_reference(x, size=5, alpha=1e-4, beta=0.75, k=2.0, mode="sum"):
    """LRN by an explicit window sum, in the input's dtype (run it in float64 as a reference)."""
    _check_args(x, size, mode, need_kernel=False)
    channels = x.shape[1]
    squares = x * x
    # Pad the channel dim (the third pair of F.pad's (W, W, H, H, C, C) widths) as PyTorch
    # does: size//2 channels before, (size-1)//2 after.
    padded = F.pad(squares, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    window_sum = sum(padded[:, j : j + channels] for j in range(size))
    return x / (k + _effective_alpha(alpha, size, mode) * window_sum) ** beta


def lrn_torch(x, size=5, alpha=1e-4, beta=0.75, k=2.0, mode="sum"):
    """LRN through ``F.local_response_norm`` (which averages), alpha converted for ``mode``."""
    _check_args(x, size, mode, need_kernel=False)
    return F.local_response_norm(x, size, alpha=alpha * size if mode == "sum" else alpha, beta=beta, k=k)


class LocalResponseNorm(torch.nn.Module):
    """LRN across channels, ``b_c = a_c / (k + alpha' * sum_window a^2)^beta``.

    ``mode="sum"`` (alpha' = alpha, the AlexNet paper) or ``"avg"`` (alpha' = alpha / size,
    PyTorch and Caffe). ``backend="triton"`` runs the Triton kernels on the inputs they take
    (:func:`.support.kernel_can_run`); everything else goes through ``F.local_response_norm``,
    with the backend's one fallback notice.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, mode="sum", backend="triton"):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"LocalResponseNorm: size must be an int >= 1, got {size!r}")
        if mode not in _MODES:
            raise ValueError(f"LocalResponseNorm: mode must be 'sum' or 'avg', got {mode!r}")
        if backend not in ("triton", "torch"):
            raise ValueError(f"LocalResponseNorm: backend must be 'triton' or 'torch', got {backend!r}")
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self.mode = mode
        self.backend = backend

    def forward(self, x):
        if self.backend == "triton":
            if support.kernel_can_run(x):
                return lrn(x, self.size, self.alpha, self.beta, self.k, self.mode)
            support.notice(support.why_not("LRN", x))
        return lrn_torch(x, self.size, self.alpha, self.beta, self.k, self.mode)

    def extra_repr(self):
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"mode={self.mode!r}, backend={self.backend!r}")
