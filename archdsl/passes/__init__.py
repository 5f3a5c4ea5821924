"""Graph passes. Each is a function of a graph returning a graph; analyses write node meta.

The lowering plan (what runs between a checked graph and a module) is
:func:`lowering_pipeline`.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph, Shape, verify
from archdsl.passes.fold_bn import fuse_conv_bn
from archdsl.passes.fuse import fuse_conv_relu, fuse_residual

BACKENDS = ("torch", "triton")

#: The triton backend's fusions, in order: conv -> bn -> [add ->] relu chains become single
#: FUSED_CONV nodes, computed in the conv kernel's epilogue.
TRITON_FUSIONS = (fuse_conv_bn, fuse_conv_relu, fuse_residual)


def lowering_pipeline(graph: ArchGraph, *, backend: str = "torch", dense: bool = False,
                      dense_input: Shape | None = None) -> ArchGraph:
    """The passes that prepare a checked graph for a backend, in order; each result verified.

    With ``dense``, the fc layers become convolutions (:func:`~archdsl.passes.fc_to_conv.fc_to_conv`);
    ``dense_input`` is the input shape the dense form runs at (default the graph's own, which
    is also the size the fc layers are converted at).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if dense:
        from archdsl.passes.fc_to_conv import fc_to_conv

        graph = fc_to_conv(graph, dense_input)
    verify(graph)
    if backend == "triton":
        for fusion in TRITON_FUSIONS:
            graph = fusion(graph)
            verify(graph)
    return graph
