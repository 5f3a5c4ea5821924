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
    coalesced loads in NHWC, with padding and image borders handled by the load mask. The
    loop is lean because its issue slots are shared with the tensor cores' feed: the kernel
    size is a compile-time constant, the loop carries its tap and channel position and both
    operand pointers (no division), the padding test is one bit per row (precomputed per
    tile), channel and column masks exist only where the channels do not divide into blocks,
    and offsets are int32 unless a tensor passes 2**31 elements (chosen at launch). Where
    a layer's tiles leave a partial last wave of the SMs, the autotuner also times
    persistent twins of the 128x128-element tiles: one program per SM, looping over the tiles.

``conv2d_fwd_small_c_kernel`` (few input channels per group, e.g. the RGB first layer)
    With ``C_in_g = 3`` a 16-wide channel block would be 3/16 useful. Instead ``BLOCK_K``
    covers the flattened ``(r, s, c)`` index, so a 7x7x3 stem walks K in a few blocks rather
    than 49 blocks that are 81% padding. It reads a stem copy of the input made at launch
    (:func:`stem_input`): NHWC with each group's channels zero-padded to ``C_PAD``, a power
    of two >= 4 (:func:`~.conv_tuning.stem_channels`; 4 for RGB), and the image zero-padded
    by the conv's padding. A pixel's channels are then one aligned 8- or 16-byte vector,
    every window lies inside the copy (no border test), and the K block is copied to shared
    memory vector by vector instead of gathered element by element into registers; the
    weight's input channels are padded with zeros to match when it is packed. These layers
    are memory-bound (writing the output dominates), so the aim is to keep the loop short
    and the loads few, not to saturate the tensor cores; the copy is 4/3 of an RGB input.

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

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import triton

from archdsl.codegen.triton import support
from archdsl.codegen.triton.conv_kernels import conv2d_fwd_kernel, conv2d_fwd_small_c_kernel
from archdsl.codegen.triton.conv_tuning import DEFAULT_NUM_SMS, stem_channels, uses_small_c_kernel
from archdsl.codegen.triton.pool import max_pool2d

__all__ = [
    "FusedConv2d",
    "conv2d",
    "conv2d_relu",
    "launch_args",
    "pack_weight",
    "stem_input",
]


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def pack_weight(weight: torch.Tensor, groups: int = 1, small_c: bool | None = None) -> torch.Tensor:
    """[C_out, C_in_g, kh, kw] -> [groups, kh * kw * C_in_g, C_out_g] (K index = (r, s, c)).

    For the small-C kernel (``small_c``; default by channel count) the input channels are
    first zero-padded to :func:`~.conv_tuning.stem_channels` (C_in_g = 3 -> 4), to match the
    kernel's stem copy of the input.

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
    if small_c is None:
        small_c = uses_small_c_kernel(c_in_g)
    if small_c:
        c_pad = stem_channels(c_in_g)
        w = F.pad(w, (0, 0, 0, 0, 0, c_pad - c_in_g))
        return w.permute(0, 3, 4, 2, 1).reshape(groups, kh * kw * c_pad, c_out // groups).contiguous()
    if weight.dtype == torch.float32:
        k_major = w.permute(0, 1, 3, 4, 2).reshape(groups, c_out // groups, kh * kw * c_in_g).contiguous()
        return k_major.transpose(1, 2)
    return w.permute(0, 3, 4, 2, 1).reshape(groups, kh * kw * c_in_g, c_out // groups).contiguous()


def _check_device(t: torch.Tensor, what: str) -> None:
    if support.INTERPRET:
        return
    if t.device.type != "cuda":
        raise ValueError(
            f"conv2d: {what} is on {t.device}; the Triton kernel needs CUDA tensors "
            "(set TRITON_INTERPRET=1 to run it on the CPU interpreter, or use F.conv2d)"
        )


def _check_inputs(x, weight, bias, residual, stride, padding, groups, pool=False):
    """Validate the arguments; return (stride, padding, output shape) -- the pooled shape with
    ``pool``."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("conv2d: x and weight must be tensors")
    if x.dim() != 4:
        raise ValueError(f"conv2d: x must be 4-D [N, C_in, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(
            f"conv2d: weight must be 4-D [C_out, C_in/groups, kh, kw], got shape {tuple(weight.shape)}"
        )
    if x.dtype not in support.KERNEL_DTYPES:
        raise TypeError(f"conv2d: x dtype {x.dtype} is not supported (use float16, bfloat16 or float32)")
    if support.INTERPRET and x.dtype == torch.bfloat16:
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
    if pool:
        if residual is not None:
            raise ValueError("conv2d: pool=True takes no residual (a residual joins before the pool)")
        if h_out < 2 or w_out < 2:
            raise ValueError(f"conv2d: a 2x2 pool does not fit the {h_out}x{w_out} conv output")
        out_shape = (n, c_out, h_out // 2, w_out // 2)

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


def stem_input(x: torch.Tensor, groups: int, padding: tuple[int, int]) -> torch.Tensor:
    """The small-C kernel's copy of ``x`` ([N, C_in, H, W]): [N, groups * C_PAD, H + 2 * ph,
    W + 2 * pw], channels_last, with group g's channel c at g * C_PAD + c and zeros in the
    padded channels and the border. Works on meta tensors (no memory) for :mod:`.aot`."""
    n, c_in, h, w = x.shape
    c_in_g = c_in // groups
    c_pad = stem_channels(c_in_g)
    ph, pw = padding
    copy = x.new_zeros((n, h + 2 * ph, w + 2 * pw, groups, c_pad))
    copy[:, ph:ph + h, pw:pw + w, :, :c_in_g] = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c_in_g)
    return copy.view(n, h + 2 * ph, w + 2 * pw, groups * c_pad).permute(0, 3, 1, 2)


def _nhwc_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of an [N, C, H, W] tensor in the kernels' (n, h, w, c) argument order."""
    return t.stride(0), t.stride(2), t.stride(3), t.stride(1)


def _offset_extent(t: torch.Tensor) -> int:
    """One past the largest element offset of ``t`` (its strides may have gaps)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def launch_args(
    x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu, *, small_c=None,
    index_64=None, pool=False, num_sms=None,
):  # fmt: skip
    """The kernel, grid, positional arguments and flags of one conv launch.

    Only shapes, strides and dtypes are read, so meta tensors do: :mod:`.aot` compiles the
    kernels offline from exactly the arguments a real launch would pass. The kernels compute
    activation offsets in int32 unless one of them can pass 2**31 (``index_64``: default by
    the tensors' extents; tests force it). The general kernel's persistent tile configs
    (:func:`~.conv_tuning.general_configs`) run ``num_sms`` programs per group (default: the
    device's SMs, or the H100's 132 where there is no device). For the small-C kernel the
    first argument is the stem copy of ``x`` (:func:`stem_input`, made here: for a real
    tensor, a copy).
    """
    kh, kw = kernel_size
    c_in_g = c_layer = x.shape[1] // groups
    if small_c is None:
        small_c = uses_small_c_kernel(c_in_g)
    if pool and small_c:
        raise ValueError("conv2d: the small-C kernel has no pooled epilogue")
    if small_c:
        c_in_g = stem_channels(c_layer)
        if tuple(w_packed.shape[1:]) != (kh * kw * c_in_g, out.shape[1] // groups):
            raise ValueError(f"conv2d: the small-C kernel needs its weight packed with {c_in_g} input "
                             f"channels (pack_weight(..., small_c=True)), got {tuple(w_packed.shape)}")
        x, padding = stem_input(x, groups, padding), (0, 0)
    n, _, h, w = x.shape
    c_out = out.shape[1]
    h_out = (h + 2 * padding[0] - kh) // stride[0] + 1  # the conv's; ``out`` is pooled with ``pool``
    w_out = (w + 2 * padding[1] - kw) // stride[1] + 1
    c_out_g = c_out // groups
    kernel = conv2d_fwd_small_c_kernel if small_c else conv2d_fwd_kernel
    m = n * (h_out // 2) * (w_out // 2) * 4 if pool else n * h_out * w_out

    def grid(meta):
        tiles = triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(c_out_g, meta["BLOCK_N"])
        return (min(tiles, meta["NUM_SMS"]) if meta.get("PERSISTENT") else tiles, groups)

    # Unused pointer arguments get a real tensor: never read, but valid in every Triton version.
    res = residual if residual is not None else out
    args = (
        x, w_packed, bias if bias is not None else out, res, out,
        n, h, w, h_out, w_out,
        c_in_g, c_out_g, groups,
        stride[0], stride[1], padding[0], padding[1],
        *_nhwc_strides(x),
        *w_packed.stride(),
        *_nhwc_strides(res),
        *_nhwc_strides(out),
    )  # fmt: skip
    if index_64 is None:
        index_64 = max(_offset_extent(t) for t in (x, res, out)) >= 2**31
    flags = dict(
        KH=kh,
        KW=kw,
        HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None,
        APPLY_RELU=bool(relu),
        ALLOW_TF32=bool(torch.backends.cudnn.allow_tf32),
        INDEX_64=bool(index_64),
    )
    if small_c:
        flags["C_IN"] = c_layer
        flags["C_PAD"] = c_in_g
    else:
        flags["POOL"] = bool(pool)
        if num_sms is None:
            num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda \
                else DEFAULT_NUM_SMS
        flags["NUM_SMS"] = int(num_sms)
    return kernel, grid, args, flags


def _launch(
    x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu,
    *, small_c=None, config=None, index_64=None, pool=False, num_sms=None,
):  # fmt: skip
    """Run a kernel on checked arguments; returns ``out`` (channels_last [N, C_out, H_out, W_out]).

    ``small_c`` forces a kernel (default: by channel count); ``config`` (a triton.Config)
    bypasses the autotuner and runs that tile configuration.
    """
    if out.numel() == 0:
        return out
    kernel, grid, args, flags = launch_args(
        x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu, small_c=small_c,
        index_64=index_64, pool=pool, num_sms=num_sms,
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
    *, out=None, small_c=None, config=None, index_64=None, pool=False, num_sms=None,
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
    if small_c is None:
        small_c = uses_small_c_kernel(weight.shape[1])
    if pool and small_c:  # no pooled epilogue there: the conv, then the pool kernel
        y = _launch(x, w_packed, bias, None, torch.empty(
            (out_shape[0], out_shape[1], (x.shape[2] + 2 * padding[0] - kernel_size[0]) // stride[0] + 1,
             (x.shape[3] + 2 * padding[1] - kernel_size[1]) // stride[1] + 1),
            device=x.device, dtype=x.dtype, memory_format=torch.channels_last),
            kernel_size, stride, padding, groups, relu, small_c=True, config=config, index_64=index_64)
        return out.copy_(max_pool2d(y, 2))
    return _launch(
        x, w_packed, bias, residual, out, kernel_size, stride, padding, groups, relu,
        small_c=small_c, config=config, index_64=index_64, pool=pool, num_sms=num_sms,
    )  # fmt: skip


def _forward(
    x, weight, bias=None, stride=1, padding=0, groups=1, relu=False, residual=None,
    *, w_packed=None, out=None, small_c=None, config=None, index_64=None, pool=False, num_sms=None,
):  # fmt: skip
    """Checked forward without autograd.

    The keyword-only arguments serve tests and config validation: a prepacked weight, an
    output buffer to write into, a forced kernel choice, a fixed tile config, a forced
    offset width and an SM count (which decides the persistent grid).
    """
    stride, padding, out_shape = _check_inputs(x, weight, bias, residual, stride, padding, groups, pool)
    if w_packed is None:
        w_packed = pack_weight(weight, groups, small_c)
    return _run(
        x, weight, bias, residual, w_packed, stride, padding, groups, relu, out_shape,
        out=out, small_c=small_c, config=config, index_64=index_64, pool=pool, num_sms=num_sms,
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
    pool: bool = False,
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
        pool: follow with ``F.max_pool2d(·, 2)`` in the same kernel, which stores only the
            pooled map (its GEMM rows are ordered as 2x2 quads; an odd last row or column
            is dropped, as in floor mode). Inference only: no residual, no gradient.

    Returns:
        [N, C_out, H_out, W_out] in ``x``'s dtype, channels_last. Differentiable in ``x``,
        ``weight``, ``bias`` and ``residual``. fp32 inputs use TF32 when
        ``torch.backends.cudnn.allow_tf32`` is set (see the module docstring).
    """
    if pool:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            raise ValueError("conv2d: pool=True is inference only (run under torch.no_grad, or pool separately)")
        return _forward(x, weight, bias, stride, padding, groups, relu, residual, pool=True)
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


# FusedConv2d -> {input layout: (out_shape, kernel, grid, flags, the launch's int arguments)}:
# launches checked once per layout. Outside the module, so that copying or pickling a module
# never copies kernel objects.
_LAUNCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    def _launch_key(self, x, residual, pool=False) -> tuple:
        res = None if residual is None else (residual.shape, residual.stride(), residual.dtype, residual.device)
        return (x.shape, x.stride(), x.dtype, x.device, res, self.bias is None,
                torch.backends.cudnn.allow_tf32, pool)

    def _fast_forward(self, x, residual, pool=False):
        """Inference forward through a launch checked once per input layout: the Python cost
        per call is a dict lookup, the output's allocation and the launch itself. None where
        the input is not one the cache takes (not channels_last; then the checked path runs).
        With ``pool`` the launch is the pooled epilogue's (no residual)."""
        if pool and uses_small_c_kernel(self.weight.shape[1]):
            # No pooled epilogue in the small-C kernel: its cached launch, then the pool kernel.
            y = self._fast_forward(x, None)
            return None if y is None else max_pool2d(y, 2)
        key = self._launch_key(x, residual, pool)
        launches = _LAUNCHES.setdefault(self, {})
        hit = launches.get(key)
        w_packed = self._packed_weight()
        if hit is None:
            cl = torch.channels_last
            if not x.is_contiguous(memory_format=cl) or (residual is not None
                                                         and not residual.is_contiguous(memory_format=cl)):
                return None
            stride, padding, out_shape = _check_inputs(
                x, self.weight, self.bias, residual, self.stride, self.padding, self.groups, pool)
            if self.bias is not None and not self.bias.is_contiguous():
                return None
            out = torch.empty(out_shape, device=x.device, dtype=x.dtype, memory_format=cl)
            kernel, grid, args, flags = launch_args(
                x, w_packed, self.bias, residual, out, tuple(self.weight.shape[2:]), stride, padding,
                self.groups, self.relu, pool=pool)
            # The small-C kernel reads a stem copy of x, made on every call.
            stem = (self.groups, padding) if kernel is conv2d_fwd_small_c_kernel else None
            hit = launches[key] = (out_shape, kernel, grid, flags, args[5:], stem)
        out_shape, kernel, grid, flags, tail, stem = hit
        out = torch.empty(out_shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
        if out.numel() == 0:
            return out
        bias = self.bias if self.bias is not None else out
        if stem is not None:
            x = stem_input(x, *stem)
        args = (x, w_packed, bias, out if residual is None else residual, out, *tail)
        if x.is_cuda and x.device.index != torch.cuda.current_device():
            with torch.cuda.device(x.device):
                _launch_kernel(kernel, grid, args, flags, None)
        else:
            _launch_kernel(kernel, grid, args, flags, None)
        return out

    def _needs_grad(self, x, residual=None) -> bool:
        return torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, self.weight, self.bias, residual))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``F.max_pool2d(self(x), 2)`` with the pool in the kernel's epilogue: inference only
        (no gradient needed) and an input the kernel takes. Through the same packed weight
        and launch cache as :meth:`forward`, so repeated calls repack nothing and check
        nothing."""
        if not support.kernel_can_run(x, self.weight):
            raise ValueError(f"FusedConv2d.pooled: {support.why_not('conv', x, self.weight)}")
        if self._needs_grad(x):
            raise ValueError("FusedConv2d.pooled is inference only (run under torch.no_grad, or pool separately)")
        y = self._fast_forward(x, None, pool=True)
        if y is not None:
            return y
        return _forward(x, self.weight, self.bias, self.stride, self.padding, self.groups, self.relu,
                        w_packed=self._packed_weight(), pool=True)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if support.kernel_can_run(x, self.weight):
            if not self._needs_grad(x, residual):
                y = self._fast_forward(x, residual)
                if y is not None:
                    return y
            stride, padding, out_shape = _check_inputs(
                x, self.weight, self.bias, residual, self.stride, self.padding, self.groups
            )
            return _FusedConv2dFn.apply(
                x, self.weight, self.bias, residual, self._packed_weight(),
                stride, padding, self.groups, self.relu, out_shape,
            )  # fmt: skip
        support.notice(support.why_not("conv", x, self.weight))
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"
