"""Lowering to an in-process ``torch.nn.Module`` whose submodules are the spec's block calls."""

from __future__ import annotations

import torch
import torch.fx

from archdsl.backends import TORCH, Backend
from archdsl.codegen import hierarchy
from archdsl.codegen.torch_ops import forward_fn, from_linear, linear_weights_as_kernels, lower
from archdsl.ir import ArchGraph


class Block(torch.nn.Module):
    """One block call of the spec (or the net itself): its layers and the submodules of the
    block calls it makes, under the names the spec gives them, and a ``forward`` that runs
    them in topological order, freeing each intermediate after its last use.

    A block reads the values it takes from outside (its input, one unless a pass rewired the
    graph) and returns what is read outside it (its output). ``block`` names the spec's block.
    """

    def __init__(self, level: hierarchy.Level, lowered: dict, backend: Backend, graph: ArchGraph):
        super().__init__()
        self.block = level.block
        self._inputs, self._outputs = level.inputs, level.outputs
        extras: dict[str, tuple] = {}  # node -> ((role, attribute here), ...)
        # Layers and submodules are registered in the order the spec wrote them (the state_dict's
        # order, which a fusion that rewires inputs does not change); forward runs in
        # topological order.
        for kind, attr in level.members:
            if kind == "child":
                child = level.children[attr]
                if isinstance(child, hierarchy.Repeat):
                    copies = [Block(c, lowered, backend, graph) for c in child.copies]
                    self.add_module(attr, torch.nn.Sequential(*copies) if child.chain else torch.nn.ModuleList(copies))
                else:
                    self.add_module(attr, Block(child, lowered, backend, graph))
                continue
            node = level.nodes[attr]
            low = lowered[node]
            layer = low.layer or low.module  # activations and merges are modules too
            if layer is not None:
                self.add_module(attr, layer.build())
            roles = []
            for role, attribute, extra in low.extra:  # e.g. a fused conv's batch norm
                here = hierarchy.extra_attr(level, attribute, graph)
                self.add_module(here, extra.build())
                roles.append((role, here))
            extras[node] = tuple(roles)
        self._program = []
        for step, frees in zip(level.steps, hierarchy.frees(level)):
            if step.node is not None:
                low = lowered[step.node]
                self._program.append((step.attr, (low.layer or low.module) is not None, forward_fn(low),
                                      step.args, (step.node,), frees, extras[step.node]))
            else:
                self._program.append((step.attr, True, None, step.args, step.outputs, frees, ()))

    def forward(self, *inputs: torch.Tensor):
        env = dict(zip(self._inputs, inputs))
        for attr, has_layer, fn, args, outputs, frees, extra in self._program:
            if fn is None:  # a block call: its outputs are ours to name
                result = self.get_submodule(attr)(*(env[a] for a in args))
                if len(outputs) == 1:
                    env[outputs[0]] = result
                else:
                    env.update(zip(outputs, result))
            else:
                layer = getattr(self, attr) if has_layer else None
                if extra:
                    env[outputs[0]] = fn(layer, *(env[a] for a in args),
                                         **{role: getattr(self, attribute) for role, attribute in extra})
                else:
                    env[outputs[0]] = fn(layer, *(env[a] for a in args))
            for value in frees:
                del env[value]
        if len(self._outputs) == 1:
            return env[self._outputs[0]]
        return tuple(env[o] for o in self._outputs)

    def _get_name(self) -> str:
        """``print(model)`` names a block's module after the block (``Basic``), as its class in
        the emitted source is named."""
        from archdsl.codegen.torch_source import class_name

        return class_name(self.block) if self.block else super()._get_name()


class ArchModule(Block):
    """A network compiled from an :class:`~archdsl.ir.ArchGraph`.

    The module tree follows the spec: every layer is an attribute named as the spec's block
    or net names it (``conv1``, ``bn2``), every block call a submodule (``basic_stage2``), a
    repeated call an ``nn.Sequential`` of its copies; so ``state_dict`` keys read
    ``basic_stage2.basic2.0.conv1.weight`` (see :mod:`archdsl.codegen.hierarchy`).

    In the dense form (fc layers made convolutions), ``load_state_dict`` also takes the fc
    module's state dict: a pre-hook reshapes the 2-D fc weights to kernels as they load.
    """

    def __init__(self, graph: ArchGraph, backend: Backend = TORCH, requested: Backend | None = None):
        source = graph.graph["input"]
        lowered = {name: lower(graph, name, backend) for name in graph.nodes if name != source}
        root = hierarchy.tree(graph)
        super().__init__(root, lowered, backend, graph)
        self.arch_name = graph.name
        # requested: the backend asked for, where ``backend`` stands in for it (no kernel runs here).
        self.requested_backend = (requested or backend).name
        self.backend = backend.name
        #: graph node -> the dotted path of the submodule that computes it (``basic_stage2.basic1.conv1``)
        self.paths = hierarchy.paths(root)
        self._from_linear = {self.paths[n]: shape for n, shape in from_linear(graph).items()}
        if self._from_linear:
            self._register_load_state_dict_pre_hook(self._linear_weights_as_kernels)

    def _linear_weights_as_kernels(self, state_dict, prefix, *_) -> None:
        linear_weights_as_kernels(state_dict, prefix, self._from_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

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
