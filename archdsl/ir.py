"""The graph IR: one op vocabulary, its node schema, shapes, and a verifier.

A network is an :class:`ArchGraph`, a ``networkx.DiGraph`` with one node per op. The node's
key is its name (a valid Python identifier, unique in the graph; it becomes the attribute name
of the layer in the lowered module) and its data is:

=========  ==============================================================================
``op``     an :class:`Op`
``args``   tuple of input node names, in order (edges mirror them, with ``index`` = position)
``attrs``  dict of the op's attributes; the op's row in :data:`archdsl.ops.TABLE` lists the required keys
``span``   :class:`~archdsl.errors.Span` of the spec text the node came from
``scope``  dotted path of the block calls the node was expanded from ("" at net level)
``meta``   analysis results, written by passes: ``shape`` (:class:`Shape` of the output),
           ``params``, ``macs``, ``rf`` (receptive field, pixels), ``jump`` (stride of the
           output grid with respect to the input, pixels)
=========  ==============================================================================

Graph-level data (``graph.graph``): ``name`` of the net, ``input`` and ``output`` node names,
``params`` (the net parameter values it was built with), ``spec`` (the source span of the net),
``spec_input`` (the input :class:`Shape` the spec declares, None if it declares none) and, on a
graph in fully-convolutional form (passes/fc_to_conv.py), ``dense``: the input shape at which
its fc layers were converted; ``modules``: for each node written inside a block call (or a
repeated unit), ``(module path, attribute name, ((path, block), ...))``, where the lowered
module keeps it (codegen/hierarchy.py); a node not listed sits at the top under its own name.

Optional attribute: a CONV made from a fully connected layer by passes/fc_to_conv.py carries
``attrs["from_linear"] = (C, kh, kw)``: the fc's input read as a map, so its ``(out, C*kh*kw)``
weight reshapes to the conv's ``(out, C, kh, kw)`` kernel. The lowerings reshape such 2-D
weights when a state dict is loaded, so an fc module's ``state_dict()`` loads unchanged.
"""

from __future__ import annotations

from typing import Any, Iterator

import networkx as nx

from archdsl.ops import TABLE, Op
from archdsl.shape import Shape

__all__ = ["ArchGraph", "Op", "Shape", "VerifyError", "verify"]


class ArchGraph(nx.DiGraph):
    """A checked network: a DiGraph of ops (see the module docstring for the node schema)."""

    # -- building -------------------------------------------------------------------------
    def add_op(self, name: str, op: Op, args: tuple[str, ...] = (), attrs: dict | None = None,
               span=None, scope: str = "") -> str:
        if name in self:
            raise ValueError(f"duplicate node name {name!r}")
        self.add_node(name, op=op, args=tuple(args), attrs=dict(attrs or {}), span=span,
                      scope=scope, meta={})
        for index, arg in enumerate(args):
            self.add_edge(arg, name, index=index)
        return name

    def set_args(self, name: str, args: tuple[str, ...]) -> None:
        """Rewire a node's inputs, keeping edges in step with ``args``."""
        for pred in list(self.predecessors(name)):
            self.remove_edge(pred, name)
        self.nodes[name]["args"] = tuple(args)
        for index, arg in enumerate(args):
            self.add_edge(arg, name, index=index)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer of ``old`` read ``new`` instead (the graph output too)."""
        for user in list(self.successors(old)):
            if user == new:
                continue
            self.set_args(user, tuple(new if a == old else a for a in self.nodes[user]["args"]))
        if self.graph.get("output") == old:
            self.graph["output"] = new

    def copy(self, as_view: bool = False) -> "ArchGraph":
        """A copy a pass can edit: every node's ``attrs`` and ``meta`` dicts, and the net's
        parameter values, are its own (``DiGraph.copy`` shares the dicts inside node data, so
        editing a copy's attrs or re-running an analysis on it would change the original)."""
        new = super().copy(as_view=as_view)
        if as_view:
            return new
        for _, data in new.nodes(data=True):
            data["attrs"] = dict(data["attrs"])
            data["meta"] = dict(data["meta"])
        if "params" in new.graph:
            new.graph["params"] = dict(new.graph["params"])
        return new

    # -- reading --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.graph.get("name", "net")

    def order(self) -> list[str]:
        """Node names in a deterministic topological order (insertion order breaks ties)."""
        position = {n: i for i, n in enumerate(self.nodes)}
        return list(nx.lexicographical_topological_sort(self, key=position.__getitem__))

    def ops(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for name in self.order():
            yield name, self.nodes[name]

    def users(self, name: str) -> list[str]:
        return list(self.successors(name))

    def shape(self, name: str) -> Shape:
        return self.nodes[name]["meta"]["shape"]

    @property
    def input_shape(self) -> Shape:
        return self.nodes[self.graph["input"]]["attrs"]["shape"]

    @property
    def output_shape(self) -> Shape:
        return self.shape(self.graph["output"])

    @property
    def params(self) -> int:
        """Trainable parameters (weights, biases, BN scale and shift)."""
        return sum(d["meta"].get("params", 0) for _, d in self.nodes(data=True))

    @property
    def macs(self) -> int:
        """Multiply-accumulates of conv and linear layers for one sample (FLOPs = 2 x MACs)."""
        return sum(d["meta"].get("macs", 0) for _, d in self.nodes(data=True))


class VerifyError(AssertionError):
    """The IR broke an invariant: a compiler bug, not a user error."""


def verify(graph: ArchGraph, analysed: bool = True) -> None:
    """Check the schema of every node, edge/args consistency, acyclicity and a single input
    and output; with ``analysed``, that every node carries a shape. Raises VerifyError naming
    the node and the rule it broke."""

    def fail(node: str, rule: str) -> None:
        raise VerifyError(f"node {node!r}: {rule}")

    if not nx.is_directed_acyclic_graph(graph):
        raise VerifyError(f"graph {graph.name!r} has a cycle")
    inputs = [n for n, d in graph.nodes(data=True) if d.get("op") is Op.INPUT]
    if len(inputs) != 1 or graph.graph.get("input") != inputs[0]:
        raise VerifyError(f"graph {graph.name!r} must have exactly one INPUT node, named in graph['input']")
    output = graph.graph.get("output")
    if output not in graph:
        raise VerifyError(f"graph {graph.name!r}: output {output!r} is not a node")
    for name, data in graph.nodes(data=True):
        if not name.isidentifier() or name.startswith("__"):
            fail(name, "name is not a Python identifier that can name an attribute (no leading '__')")
        op = data.get("op")
        if not isinstance(op, Op):
            fail(name, f"op {op!r} is not an Op")
        row = TABLE[op]
        args = data.get("args")
        low, high = row.arity if isinstance(row.arity, tuple) else (row.arity, row.arity)
        if not isinstance(args, tuple) or not low <= len(args) <= high:
            fail(name, f"{op.value} takes {row.arity} input(s), has args {args!r}")
        preds = {(u, graph.edges[u, name]["index"]) for u in graph.predecessors(name)}
        if preds != {(a, i) for i, a in enumerate(args)}:
            fail(name, f"edges {sorted(preds)} do not match args {args}")
        attrs = data.get("attrs")
        for key, kind in row.attrs.items():
            if key not in attrs:
                fail(name, f"{op.value} requires attribute {key!r}")
            if not isinstance(attrs[key], kind):
                fail(name, f"attribute {key!r} = {attrs[key]!r} is not {kind}")
        if analysed and not isinstance(data.get("meta", {}).get("shape"), Shape):
            fail(name, "has no inferred shape (meta['shape'])")
        if name != output and graph.out_degree(name) == 0:
            fail(name, "is not used and is not the output")
        broken = row.check(attrs, args) if row.check else None
        if broken:
            fail(name, broken)
    owned: set[str] = set()  # names a fused conv keeps for its batch norm's parameters
    for name, data in graph.nodes(data=True):
        bn_name = data["attrs"].get("bn_name") if data["op"] is Op.FUSED_CONV else ""
        if bn_name:
            if not bn_name.isidentifier() or bn_name in graph or bn_name in owned:
                fail(name, f"its batch norm's name {bn_name!r} is not an identifier, or is taken "
                           "by a node or another fused conv")
            owned.add(bn_name)
