"""Graph passes. Each is a function of a graph returning a graph; analyses write node meta.

The lowering plan (what runs between a checked graph and a module) is
:func:`lowering_pipeline`.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph, verify

BACKENDS = ("torch", "triton")


def lowering_pipeline(graph: ArchGraph, *, backend: str = "torch", dense: bool = False) -> ArchGraph:
    """The passes that prepare a checked graph for a backend, in order; each result verified."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if dense:
        raise NotImplementedError("dense evaluation is not available yet")
    verify(graph)
    return graph
