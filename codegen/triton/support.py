"""Whether the ``triton`` backend's kernels can run, decided in this one place.

Where the Triton kernels cannot run, the backend computes the same thing with PyTorch ops,
and says so once per process (a ``RuntimeWarning`` from :func:`notice`), never silently. Every
caller asks this module: the runtime when it builds a module (no kernel can run at all), the
conv and LRN layers when they see an input (a CPU tensor on a CUDA machine, float64, bfloat16
under the interpreter), and the offline compiler (which needs the interpreter off).

Triton decides at decoration time whether a ``@triton.jit`` function runs compiled or in its
CPU interpreter (``TRITON_INTERPRET=1``), so the variable is read once, here, when the first
kernel module is imported; :data:`INTERPRET` is that reading.

This module imports torch but not triton: it must answer "can the kernels run?" in a process
where triton is missing.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

__all__ = [
    "INTERPRET", "KERNEL_DTYPES", "available", "kernel_can_run", "notice", "unavailable_reason", "why_not",
]

#: Triton's CPU interpreter is on in this process (``TRITON_INTERPRET=1`` at import).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"

#: The dtypes the kernels take. The interpreter has no bfloat16 (:func:`kernel_can_run`).
KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)

_noticed = False  # the fallback notice has been given in this process


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # not installed, or an install that cannot load
        return False
    return True


def unavailable_reason() -> str | None:
    """Why no Triton kernel can run in this process, or None when they can."""
    if not _triton_importable():
        return "the triton package cannot be imported"
    if not (torch.cuda.is_available() or INTERPRET):
        return "no CUDA device (and TRITON_INTERPRET=1 is not set)"
    return None


def available() -> bool:
    """Whether the Triton kernels can run in this process (on a CUDA device, or on the CPU
    under Triton's interpreter)."""
    return unavailable_reason() is None


def notice(reason: str) -> None:
    """Say, once per process, that the triton backend is running PyTorch ops and why.

    Args:
        reason: what could not run, in words ("no CUDA device ...").
    """
    global _noticed
    if _noticed:
        return
    _noticed = True
    warnings.warn(f"archdsl: backend 'triton' falls back to PyTorch ops: {reason}",
                  RuntimeWarning, stacklevel=3)


def kernel_can_run(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether a kernel takes this input: a CUDA tensor (any CPU tensor under the interpreter,
    which has no bfloat16) of a kernel dtype.

    Args:
        x: the activation the kernel would read.
        weight: the layer's weight, if it has one: it must match ``x``'s dtype and device.
    """
    if x.dtype not in KERNEL_DTYPES or (weight is not None and x.dtype != weight.dtype):
        return False
    if INTERPRET:
        return x.dtype != torch.bfloat16 and (weight is None or x.device == weight.device)
    return x.is_cuda and (weight is None or weight.is_cuda)


def why_not(kernel: str, x: torch.Tensor, weight: torch.Tensor | None = None) -> str:
    """The notice's reason when ``kernel`` does not take ``x`` (see :func:`kernel_can_run`).

    Args:
        kernel: the kernel's name in words ("conv", "LRN").
        x, weight: the arguments :func:`kernel_can_run` refused.
    """
    reason = f"the {kernel} kernel does not take a {x.dtype} input on {x.device}"
    if weight is not None:
        reason += f" (weight {weight.dtype} on {weight.device})"
    return reason
