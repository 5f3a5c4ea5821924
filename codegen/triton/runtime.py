"""Run-time support of the ``triton`` backend: which backend a module is built for, and the
forward of a fused conv node.

Where the Triton kernels cannot run, the backend runs the same computation with PyTorch ops.
That decision is made in :mod:`archdsl.codegen.triton.support` and nowhere else, and it is
announced once per process (a ``RuntimeWarning`` from its ``notice``), never silently:

* at build time, :func:`archdsl.backends.resolve` (called once by the pipeline) turns ``"triton"``
  into ``"torch"`` when no kernel could run in this process at all: triton is not installed, or
  there is no CUDA device and Triton's CPU interpreter is off (``TRITON_INTERPRET=1``, read
  once at import, as the kernel modules do). The module is then built from PyTorch layers;
* at run time, :func:`fused_conv` falls back for inputs the kernel does not take (a CPU
  tensor on a CUDA machine, float64, bfloat16 under the interpreter).

Importing this module does not import triton, so a process without it can still build
modules (for the ``torch`` backend, or the fallback): the kernel module is imported when a
kernel first runs.

The fused conv node
-------------------
A FUSED_CONV node (conv [-> BN] [-> ReLU], see :mod:`archdsl.passes.fuse`) lowers to two
attributes of the network module: the conv, a :class:`~archdsl.codegen.triton.conv.FusedConv2d`
under the conv's node name, and the BN, an ``nn.BatchNorm2d`` under the name the BN node had.
The state_dict of the fused network therefore has exactly the keys of the unfused one
(``conv1.weight``, ``bn1.weight``, ``bn1.running_mean``, ...): a state_dict saved from the
``torch`` backend loads with ``strict=True`` and vice versa, and nothing has to be remapped or
folded when weights are loaded. The alternatives were a module with ``conv``/``bn`` children
(keys become ``conv1.conv.weight``, remapped by load/save hooks in both directions) or folding
once in an explicit step after loading (stale as soon as weights or running statistics change,
and training needs the unfolded BN anyway).

The BN is folded on the fly instead, in :func:`fused_conv`:

* eval mode, no gradient needed (``torch.no_grad``/``inference_mode``, or neither the input
  nor the parameters require grad): the folded weight and bias are computed once and cached,
  with the kernel's packed weight, until any of the conv's or BN's tensors changes: another
  tensor (``load_state_dict``, ``.to()``), an in-place update (its version counter moves), or a
  training-mode step of the BN (which drops the entry: BN updates its running statistics
  without moving their version counters);
* eval mode with autograd: folded on every call, differentiably;
* training mode: batch statistics, so no folding: the conv runs in the kernel (with no ReLU),
  then ``nn.BatchNorm2d`` (which updates the running statistics as usual), then the ReLU.
  The gradients are PyTorch's (the kernel's backward).

The fold costs one pass over the conv's weight, i.e. nothing next to a batch of activations;
what the fused node saves is the BN's and the ReLU's round trips through memory.

A fused 2x2/2 max-pool (``pool=True``) runs in the kernel's epilogue only at inference: eval
mode, no gradient needed, and an input the kernel takes; the kernel then stores only the
pooled map. It launches through :meth:`FusedConv2d.pooled`, i.e. the same cached packed weight
(and folded BN) and the same per-layout launch cache as the unpooled node, so repeated eval
calls repack and recheck nothing. Otherwise (training, autograd, an input the kernel does not
take) the node runs as it would without the pool and ``F.max_pool2d`` follows, so the result
is the unfused graph's.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from archdsl.codegen.fold import fold_bn
from archdsl.codegen.triton.support import kernel_can_run, notice, why_not

__all__ = ["fused_conv"]


def _conv(x: torch.Tensor, conv, weight, bias, relu: bool, residual=None) -> torch.Tensor:
    """``relu?(conv2d(x, weight, bias) + residual?)`` with ``conv``'s stride, padding and
    groups: the Triton kernel where it runs, else F.conv2d (with the notice)."""
    if kernel_can_run(x, weight):
        from archdsl.codegen.triton.conv import conv2d  # imports triton: only when a kernel runs

        return conv2d(x, weight, bias, tuple(conv.stride), tuple(conv.padding), conv.groups, relu=relu,
                      residual=residual)
    notice(why_not("conv", x, weight))
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


def _run(x: torch.Tensor, conv, residual=None) -> torch.Tensor:
    """A FusedConv2d's own forward (kernel, cached packed weight) where the kernel runs."""
    if kernel_can_run(x, conv.weight):
        return conv(x, residual)
    return _conv(x, conv, conv.weight, conv.bias, conv.relu, residual)


# conv module -> (key of the tensors it was folded from, FusedConv2d holding the folded ones)
_folded: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _version_key(tensors) -> tuple:
    return tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
                 for t in tensors)


def _bn_tensors(conv, bn) -> tuple:
    return (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)


def _cache_key(conv, bn, relu: bool) -> tuple:
    # A training-mode BN updates running_mean/var inside its kernel, which does not move their
    # version counters; num_batches_tracked is incremented by an ordinary in-place add, which
    # does. (fused_conv also drops the entry whenever it runs the BN in training mode.)
    tensors = (*_bn_tensors(conv, bn), bn.num_batches_tracked)
    return (_version_key(tensors), bn.eps, relu)


def _fold(conv, bn):
    return fold_bn(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def _folded_conv(conv, bn, relu: bool):
    """A FusedConv2d with the BN folded into its weight and bias (cached, see the module doc)."""
    from archdsl.codegen.triton.conv import FusedConv2d  # imports triton: see the module doc

    key = _cache_key(conv, bn, relu)
    hit = _folded.get(conv)
    if hit is not None and hit[0] == key:
        return hit[1]
    # Normal tensors even under inference_mode: the cache outlives the call, and the kernel
    # module keys its packed weight on the version counter, which inference tensors lack.
    with torch.inference_mode(False), torch.no_grad():
        weight, bias = _fold(conv, bn)
    folded = FusedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, groups=conv.groups, bias=True, relu=relu,
                         device="meta", dtype=weight.dtype)
    folded.weight = torch.nn.Parameter(weight, requires_grad=False)
    folded.bias = torch.nn.Parameter(bias, requires_grad=False)
    _folded[conv] = (key, folded)
    return folded


def _pooled(x: torch.Tensor, conv, bn, relu: bool) -> torch.Tensor | None:
    """``max_pool2d(relu?(bn?(conv(x))), 2)`` by the kernel's pooled epilogue, or None where it
    does not apply: training mode, a gradient needed, or an input the kernel does not take."""
    if conv.training or (bn is not None and (bn.training or bn.running_mean is None)):
        return None
    params = [t for t in (conv.weight, conv.bias, *(_bn_tensors(conv, bn)[2:] if bn is not None else ()))
              if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
        return None
    if not kernel_can_run(x, conv.weight):
        return None
    if bn is None:
        # The conv's own packed weight and launch cache. A ReLU the conv does not apply
        # commutes with the max: relu(max(a, b)) == max(relu(a), relu(b)) exactly.
        y = conv.pooled(x)
        return torch.relu(y) if relu and not conv.relu else y
    if any(t.is_inference() for t in params):  # no version counter to cache by: see fused_conv
        weight, bias = _fold(conv, bn)
        from archdsl.codegen.triton.conv import conv2d  # imports triton: only when a kernel runs

        return conv2d(x, weight, bias, tuple(conv.stride), tuple(conv.padding), conv.groups, relu=relu,
                      pool=True)
    return _folded_conv(conv, bn, relu).pooled(x)  # cached fold, packed weight and launch


def fused_conv(x: torch.Tensor, conv, bn=None, relu: bool = False, residual=None,
               pool: bool = False) -> torch.Tensor:
    """The forward of a FUSED_CONV node in the triton backend:
    ``pool?(relu?(bn?(conv(x)) + residual?))``.

    Args:
        x: the input, [N, C, H, W].
        conv: the node's :class:`~archdsl.codegen.triton.conv.FusedConv2d`. Without ``bn`` the
            lowering gives it the node's ReLU (``relu=True``, done in the kernel's epilogue);
            with ``bn`` it is the part before the BN and has ``relu=False``.
        bn: the node's ``nn.BatchNorm2d``, or None.
        relu: apply a ReLU at the end (after the BN and the residual).
        residual: a tensor of the output's shape added before the ReLU, or None.
        pool: end with a 2x2/2 max-pool (floor mode; never with ``residual``): in the kernel's
            epilogue at inference, else ``F.max_pool2d`` after the rest (see the module doc).
    """
    if pool:
        y = _pooled(x, conv, bn, relu)
        return y if y is not None else F.max_pool2d(fused_conv(x, conv, bn, relu, residual), 2)
    if bn is None:
        y = _run(x, conv, residual)
        return torch.relu(y) if relu and not conv.relu else y
    if bn.training or bn.running_mean is None:  # batch statistics: BN stays a BN
        _folded.pop(conv, None)  # the running statistics are about to change
        y = bn(_run(x, conv))
        if residual is not None:
            y = y + residual
        return torch.relu(y) if relu else y
    tensors = [t for t in (x, *_bn_tensors(conv, bn)) if t is not None]
    if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) \
            or any(t.is_inference() for t in tensors[1:]):
        # Fold on every call: differentiably, or because parameters made under inference_mode
        # have no version counter to tell an in-place update by.
        weight, bias = _fold(conv, bn)
        return _conv(x, conv, weight, bias, relu, residual)
    folded = _folded_conv(conv, bn, relu)
    return _run(x, folded, residual)
