"""Can the Triton kernels run here: the one place that decides, and the one notice when not.

Importing this module does not import triton (nor does anything here, until asked).
``TRITON_INTERPRET`` is read once, at import, as the kernel modules decorate their kernels
for one mode or the other at import.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

__all__ = ["INTERPRET", "KERNEL_DTYPES", "available", "kernel_can_run", "notice", "unavailable_reason"]

#: Triton's CPU interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

#: The dtypes the kernels take.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

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
    """Say, once per process, that the triton backend is running PyTorch ops and why."""
    global _noticed
    if _noticed:
        return
    _noticed = True
    warnings.warn(f"archdsl: backend 'triton' falls back to PyTorch ops: {reason}",
                  RuntimeWarning, stacklevel=3)


def kernel_can_run(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the conv kernel takes this input: a CUDA tensor (any CPU tensor under the
    interpreter, which has no bfloat16) of a kernel dtype, matching the weight's."""
    if x.dtype not in KERNEL_DTYPES or x.dtype != weight.dtype:
        return False
    if INTERPRET:
        return x.dtype != torch.bfloat16 and x.device == weight.device
    return x.is_cuda and weight.is_cuda
