"""Triton kernels, callable on tensors directly.

    >>> from archdsl.kernels import lrn, conv2d_relu

The kernels live in ``archdsl.codegen.triton``; this module is their stable address.
Importing it needs ``triton``; without a CUDA device set ``TRITON_INTERPRET=1`` to run them
on the CPU (slowly: it is how the test-suite checks them).
"""

from archdsl.codegen.triton.conv import conv2d, conv2d_relu
from archdsl.codegen.triton.lrn import lrn

__all__ = ["conv2d", "conv2d_relu", "lrn"]
