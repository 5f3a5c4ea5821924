"""Lowering to an in-process ``torch.nn.Module`` that runs the graph node by node."""

from __future__ import annotations

import torch
import torch.fx

from archdsl.backends import TORCH, Backend
from archdsl.codegen.torch_ops import forward_fn, from_linear, last_uses, linear_weights_as_kernels, lower
from archdsl.ir import ArchGraph


class ArchModule(torch.nn.Module):
    """A network compiled from an :class:`~archdsl.ir.ArchGraph`.

    Every layer with state is an attribute named after its node (so ``state_dict`` keys read
    ``conv1.weight``, ``basic3_bn2.running_mean``, ...) and ``forward`` evaluates the nodes in
    topological order, freeing each intermediate after its last use.

    In the dense form (fc layers made convolutions), ``load_state_dict`` also takes the fc
    module's state dict: a pre-hook reshapes the 2-D fc weights to kernels as they load.
    """

    def __init__(self, graph: ArchGraph, backend: Backend = TORCH, requested: Backend | None = None):
        super().__init__()
        self.arch_name = graph.name
        # requested: the backend asked for, where ``backend`` stands in for it (no kernel runs here).
        self.requested_backend = (requested or backend).name
        self.backend = backend.name
        order = graph.order()
        frees = last_uses(graph, order)
        self._input = graph.graph["input"]
        self._output = graph.graph["output"]
        lowered_nodes = {name: lower(graph, name, backend) for name in graph.nodes if name != self._input}
        # Layers are registered in the order the spec wrote them (so the state_dict's order does
        # not depend on how a fusion rewired inputs); the program runs in topological order.
        for name, lowered in lowered_nodes.items():
            layer = lowered.layer or lowered.module  # activations and merges are modules too
            if layer is not None:
                self.add_module(name, layer.build())
            for _, attribute, layer in lowered.extra:  # e.g. a fused conv's batch norm
                self.add_module(attribute, layer.build())
        self._program = []
        for name in order:
            if name == self._input:
                continue
            lowered = lowered_nodes[name]
            self._program.append((name, (lowered.layer or lowered.module) is not None, forward_fn(lowered),
                                  graph.nodes[name]["args"], tuple(frees[name]),
                                  tuple((role, attribute) for role, attribute, _ in lowered.extra)))
        self._from_linear = from_linear(graph)
        if self._from_linear:
            self._register_load_state_dict_pre_hook(self._linear_weights_as_kernels)

    def _linear_weights_as_kernels(self, state_dict, prefix, *_) -> None:
        linear_weights_as_kernels(state_dict, prefix, self._from_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self._input: x}
        for name, has_layer, fn, args, frees, extra in self._program:
            layer = getattr(self, name) if has_layer else None
            if extra:
                env[name] = fn(layer, *(env[a] for a in args),
                               **{role: getattr(self, attribute) for role, attribute in extra})
            else:
                env[name] = fn(layer, *(env[a] for a in args))
            for value in frees:
                del env[value]
        return env[self._output]

    def __prepare_scriptable__(self) -> torch.nn.Module:
        """What ``torch.jit.script(model)`` compiles: the forward traced into straight-line code
        (a ``torch.fx.GraphModule`` sharing this module's layers, so the same state_dict keys)."""
        traced = torch.fx.symbolic_trace(self)
        for node in traced.graph.nodes:  # fx spells the annotations in names TorchScript rejects
            node.type = None
        traced.recompile()
        return traced

    def extra_repr(self) -> str:
        fallback = f" (requested {self.requested_backend!r})" if self.requested_backend != self.backend else ""
        return f"arch={self.arch_name!r}, backend={self.backend!r}{fallback}"


def build_module(graph: ArchGraph, backend: Backend = TORCH, requested: Backend | None = None) -> ArchModule:
    """The in-process module of a lowered graph.

    Args:
        graph: a graph prepared for ``backend`` (:func:`archdsl.pipeline.lower_graph`).
        backend: the backend whose lowerings to use.
        requested: the backend the user asked for, where ``backend`` stands in for it.
    """
    return ArchModule(graph, backend, requested)
