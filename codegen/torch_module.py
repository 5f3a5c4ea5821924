"""Lowering to an in-process ``torch.nn.Module`` that runs the graph node by node."""

from __future__ import annotations

import torch

from archdsl.codegen.torch_ops import last_uses, lower
from archdsl.ir import ArchGraph


class ArchModule(torch.nn.Module):
    """A network compiled from an :class:`~archdsl.ir.ArchGraph`.

    Every layer with state is an attribute named after its node (so ``state_dict`` keys read
    ``conv1.weight``, ``basic3_bn2.running_mean``, ...) and ``forward`` evaluates the nodes in
    topological order, freeing each intermediate after its last use.
    """

    def __init__(self, graph: ArchGraph, backend: str = "torch"):
        super().__init__()
        self.arch_name = graph.name
        self.backend = backend
        order = graph.order()
        frees = last_uses(graph, order)
        self._input = graph.graph["input"]
        self._output = graph.graph["output"]
        self._program = []
        for name in order:
            if name == self._input:
                continue
            lowered = lower(graph, name, backend)
            if lowered.layer is not None:
                self.add_module(name, lowered.layer.build())
            self._program.append((name, lowered.layer is not None, lowered.fn,
                                  graph.nodes[name]["args"], tuple(frees[name])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self._input: x}
        for name, has_layer, fn, args, frees in self._program:
            layer = getattr(self, name) if has_layer else None
            env[name] = fn(layer, *(env[a] for a in args))
            for value in frees:
                del env[value]
        return env[self._output]

    def extra_repr(self) -> str:
        return f"arch={self.arch_name!r}, backend={self.backend!r}"


def build_module(graph: ArchGraph, backend: str = "torch") -> ArchModule:
    return ArchModule(graph, backend)
