"""Tile configurations of the conv kernels and the pruning that keeps those fitting a layer
and the device.

The autotuner (:mod:`.conv_kernels`) times every config that survives the prune on the first
launch of each layer shape; the prune drops tiles far larger than the layer (pure masked-off
waste) and those that would overflow shared memory or spill registers on sm_90, judged as
the compiler does (``archdsl kernels`` checks the judgement against the compiled binaries).
"""

from __future__ import annotations

import torch
import triton

from archdsl.codegen.triton.hopper import SHARED_LIMIT, issue_share
from archdsl.codegen.triton.support import INTERPRET

__all__ = [
    "AUTOTUNE_KEY",
    "NO_SPECIALIZE",
    "DEFAULT_NUM_SMS",
    "SMALL_C_MAX",
    "stem_channels",
    "general_configs",
    "prune_general",
    "prune_small_c",
    "small_c_configs",
    "uses_persistent_grid",
    "uses_small_c_kernel",
]

# Below this many input channels per group the general kernel's channel blocks are mostly
# padding, and the per-element (r, s, c) decomposition of the small-C kernel wins.
SMALL_C_MAX = 16


def uses_small_c_kernel(in_channels_per_group: int) -> bool:
    """Whether a layer with this many input channels per group runs the small-C kernel."""
    return in_channels_per_group < SMALL_C_MAX


#: SMs of the H100 and H200 (SXM), for launches that cannot ask the device (offline, interpreter).
DEFAULT_NUM_SMS = 132


def uses_persistent_grid(args) -> bool:
    """Whether a persistent grid (NUM_SMS programs looping over the tiles) is worth trying
    for the general kernel instead of one program per tile: for one group, when the tiles
    fill more than one wave of the SMs but under three, and not a whole number of waves.

    ``args`` are the launch's arguments and meta-parameters (BLOCK_M and BLOCK_N from the
    tile config, NUM_SMS from the launch). A partial last wave leaves SMs idle while it runs;
    with many waves it is a small share of the time, and with less than one wave there is
    nothing to loop over.
    """
    oh, ow = args["OUT_H"], args["OUT_W"]
    m = args["BATCH"] * ((oh // 2) * (ow // 2) * 4 if args.get("POOL") else oh * ow)
    tiles = triton.cdiv(m, args["BLOCK_M"]) * triton.cdiv(args["C_OUT_G"], args["BLOCK_N"])
    sms = args["NUM_SMS"]
    return args["GROUPS"] == 1 and sms < tiles < 3 * sms and tiles % sms != 0


def stem_channels(in_channels_per_group: int) -> int:
    """The channels per group of the small-C kernel's input copy: the next power of two,
    at least 4, so that one pixel's channels are one aligned vector (RGB: 4 channels, 8 bytes
    in 16-bit types and 16 in fp32; more would double the copy and the multiply-adds by zero)."""
    return max(4, 1 << max(0, in_channels_per_group - 1).bit_length())


def _config(block_m, block_n, block_k, num_warps, num_stages, group_size_m=8, persistent=None):
    kwargs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_SIZE_M": group_size_m}
    if persistent is not None:  # the general kernel's grid (the small-C kernel has no such flag)
        kwargs["PERSISTENT"] = persistent
    return triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages)


def general_configs() -> list[triton.Config]:
    """Tile configurations tried for ``conv2d_fwd_kernel``.

    Sized for Hopper (228 KB shared memory per SM): a 128x128x64 bf16 stage is 32 KB, so
    3-4 stages fit; the 256-wide tiles need 8 warps to hold their accumulator. Narrow-N
    tiles (64, 32) cover layers with few output channels per group, such as ResNet's
    64-channel stage; configs far larger than a layer are pruned before tuning. Under the
    interpreter there is a single small config, since autotuning there would run them all.

    The large tiles come twice: one program per tile, and persistent (``PERSISTENT``: one
    program per SM looping over the tiles). The prune keeps a persistent twin only for layers
    whose tiles leave a partial last wave (:func:`uses_persistent_grid`), where the autotuner
    then times both: the persistent K loop compiles to more registers and more instructions
    per iteration (Triton 3.8, bf16: 136 against 105 for 128x128x64, 165-175 against 140 for
    256x64x64), so it is not assumed faster. Only the 128x128-element tiles get a twin: the
    persistent loop of the larger ones spills or outruns the main tiles' instruction bound
    (256x128x64: 104 bytes of spill with Triton 3.6; 128x256x64: 185-188 instructions with
    3.8), and that of the smaller ones the issue budget (64x64x64: 105 % of the slots).
    """
    if INTERPRET:
        return [_config(32, 16, 16, num_warps=4, num_stages=1, group_size_m=4, persistent=False)]
    tiles = [
        # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
        (128, 128, 64, 8, 3),
        (128, 128, 64, 8, 4),
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (128, 128, 32, 4, 4),
        (256, 64, 64, 8, 3),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 32, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (64, 64, 32, 4, 5),
    ]
    twins = [t for t in tiles if t[1] <= 128 and t[0] * t[1] == 128 * 128]
    return [_config(*t, persistent=False) for t in tiles] + [_config(*t, persistent=True) for t in twins]


def small_c_configs() -> list[triton.Config]:
    """Tile configurations tried for ``conv2d_fwd_small_c_kernel``.

    K is small (36 for 3x3x4, 196 for 7x7x4, 484 for 11x11x4, RGB padded to 4 channels), so
    BLOCK_K is 32 and few stages are needed; the tiles are wide in M because the output write
    is the cost. Until the kernel read a padded stem copy, each thread gathered its share of
    the BLOCK_M x BLOCK_K activations element by element into registers, and wider K blocks
    spilled on sm_90 (256x32x64 on 4 warps: 2 KB per thread); the A tile now reaches shared
    memory by asynchronous vector copies (``archdsl kernels resnet50`` shows every config's
    registers and spills).
    """
    if INTERPRET:
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
_DEFAULT_SHARED_LIMIT = SHARED_LIMIT[90]


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


def loop_instructions(config, elem_bytes: int, even_k: bool = True) -> float:
    """The SASS instructions per warp in one iteration of the general kernel's K loop, as
    modelled from ``archdsl kernels`` (sm_90, Triton 3.8, bf16 VGG-16, ResNet-50 and AlexNet
    layers): about 50 fixed (the MMAs, barriers, the tap walk on scalars), plus for each
    16-byte vector a thread copies per iteration about 10.5 for the activation operand
    (address, padding bit, predicate) and 3 for the weight operand (address only), and about
    3.5 more per vector of either when the channel blocks do not divide the channels
    (``even_k`` false: a channel mask). Within 10 of every measured config."""
    kw = config.kwargs
    threads = 32 * config.num_warps
    a_vectors = kw["BLOCK_M"] * kw["BLOCK_K"] * elem_bytes / 16 / threads
    b_vectors = kw["BLOCK_K"] * kw["BLOCK_N"] * elem_bytes / 16 / threads
    return 50 + 10.5 * a_vectors + 3 * b_vectors + (0 if even_k else 3.5 * (a_vectors + b_vectors))


def _fits_general(config, elem_bytes, residual, shared_limit, c_in_g: int) -> bool:
    """Whether a general-kernel config fits the device and its tensor rate, judged as sm_90's
    compiler does.

    Shared memory is exact: each pipeline stage holds a BLOCK_M x BLOCK_K tile of x and a
    BLOCK_K x BLOCK_N tile of the weight. Registers: the fp32 accumulator takes
    BLOCK_M * BLOCK_N / threads of them; at 128 per thread the kernel compiles spill-free
    with 2-byte operands, but spills with 4-byte (tf32) operands or with a residual tile
    loaded in the epilogue, where 64 is the most that fits (measured with ``archdsl kernels``).
    Issue: a tile whose K loop (:func:`loop_instructions`) needs more of the SM's issue slots
    than the peak tensor rate leaves (:func:`.hopper.issue_share` above 1) cannot keep the
    tensor cores busy, so a bigger tile serves the layer better.
    """
    kw = config.kwargs
    smem = config.num_stages * (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * elem_bytes
    acc = _per_thread(config, kw["BLOCK_M"], kw["BLOCK_N"])
    even_k = c_in_g % kw["BLOCK_K"] == 0
    share = issue_share(loop_instructions(config, elem_bytes, even_k), config.num_warps,
                        kw["BLOCK_M"] * kw["BLOCK_N"] * kw["BLOCK_K"], elem_bytes)
    # The activation operand's per-row state (address, padding bit, predicate) grows with the
    # vectors a thread gathers per stage; with a channel mask (K not a multiple of BLOCK_K) or
    # 4-byte operands on top of a 64-per-thread accumulator, 8 such vectors spill with Triton
    # 3.6's ptxas (24-40 bytes: 128x64x64 w4 and 256x64x64 w8 on AlexNet's conv2, 48 channels
    # per group; 128x64x64 w4 in fp32), while 4 do not.
    a_vectors = kw["BLOCK_M"] * kw["BLOCK_K"] * elem_bytes // 16 // (32 * config.num_warps)
    crowded = acc >= 64 and a_vectors > 4 and (not even_k or elem_bytes == 4)
    return (smem <= shared_limit and acc <= (128 if elem_bytes == 2 and not residual else 64)
            and not crowded and share <= 1.0)


def _fits_small_c(config, elem_bytes, residual, shared_limit) -> bool:
    """Whether a small-C config keeps to registers: besides the accumulator, each thread held
    its share of the gathered BLOCK_M x BLOCK_K activations. On sm_90 the element-wise gather
    spilled past 96 such values per thread with 2-byte operands (128x64x64 on 4 warps: 168
    bytes with Triton 3.6) and past 80 with 4-byte ones. Since the kernel copies whole pixels
    of the stem copy to shared memory this is conservative: 128x64x64 on 4 warps compiles
    without spills with Triton 3.8 (139 registers in bf16, 197 in fp32; BENCHMARKS.md), but
    the wider tiles' speed is for the GPU to tell before the prune lets them in."""
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


def prune_general(configs, named_args, **kwargs):
    """The general kernel's prune (see :func:`_prune`), after dropping the persistent configs
    of layers :func:`uses_persistent_grid` does not pick."""
    c_in_g = named_args["C_IN_G"]
    configs = [c for c in configs if not c.kwargs.get("PERSISTENT")
               or uses_persistent_grid({**named_args, **kwargs, **c.kwargs})]
    return _prune(configs, named_args, kwargs, c_in_g,
                  lambda *args: _fits_general(*args, c_in_g=c_in_g))


def prune_small_c(configs, named_args, **kwargs):
    k_extent = kwargs["KH"] * kwargs["KW"] * named_args["C_IN_G"]
    return _prune(configs, named_args, kwargs, k_extent, _fits_small_c)


# Every shape argument the best tile depends on; tensor dtypes are added by the autotuner.
AUTOTUNE_KEY = [
    "BATCH", "IN_H", "IN_W", "OUT_H", "OUT_W", "C_IN_G", "C_OUT_G", "GROUPS",
    "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "HAS_RESIDUAL", "ALLOW_TF32", "POOL",
]  # fmt: skip

# Sizes that only enter index arithmetic are not specialised on (divisibility by 16, == 1):
# that would compile a new variant for nearly every layer shape without speeding anything up.
# Channel counts and strides stay specialised: they decide whether loads vectorise.
NO_SPECIALIZE = [
    "BATCH", "IN_H", "IN_W", "OUT_H", "OUT_W", "GROUPS",
    "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W",
]  # fmt: skip

