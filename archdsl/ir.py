"""The graph IR: one op vocabulary, its node schema, shapes, and a verifier.

A network is an :class:`ArchGraph`, a ``networkx.DiGraph`` with one node per op. The node's
key is its name (a valid Python identifier, unique in the graph; it becomes the attribute name
of the layer in the lowered module) and its data is:

=========  ==============================================================================
``op``     an :class:`Op`
``args``   tuple of input node names, in order (edges mirror them, with ``index`` = position)
``attrs``  dict of the op's attributes; :data:`SCHEMA` lists, for each op, the required keys
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
its fc layers were converted.

Optional attribute: a CONV made from a fully connected layer by passes/fc_to_conv.py carries
``attrs["from_linear"] = (C, kh, kw)``: the fc's input read as a map, so its ``(out, C*kh*kw)``
weight reshapes to the conv's ``(out, C, kh, kw)`` kernel. The lowerings reshape such 2-D
weights when a state dict is loaded, so an fc module's ``state_dict()`` loads unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterator

import networkx as nx


class Op(enum.Enum):
    INPUT = "input"
    CONV = "conv"
    LINEAR = "linear"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "gap"
    LRN = "lrn"
    BATCHNORM = "bn"
    RELU = "relu"
    DROPOUT = "dropout"
    SOFTMAX = "softmax"
    ADD = "add"
    SHORTCUT_PAD = "shortcut_pad"  # ResNet option A: subsample, zero-pad the extra channels
    FUSED_CONV = "conv_bn_relu"  # conv [-> batch norm] [-> ReLU] as one node (backend passes)

    def __repr__(self) -> str:
        return f"Op.{self.name}"



@dataclass(frozen=True)
class OpSchema:
    arity: int | tuple[int, int]  # inputs: a number, or (fewest, most)
    attrs: dict[str, type | tuple[type, ...]]
    weighted: bool = False  # owns a weight tensor whose multiply-accumulates count as MACs
    doc: str = ""


#: For each op: how many inputs it takes, the attributes it requires (and their types),
#: and what it means. Passes and lowerings rely on exactly these keys.
SCHEMA: dict[Op, OpSchema] = {
    Op.INPUT: OpSchema(0, {"shape": object}, doc="the network input; attrs.shape is a Shape"),
    Op.CONV: OpSchema(
        1,
        {"out_channels": int, "kernel": tuple, "stride": tuple, "padding": tuple,
         "groups": int, "bias": bool},
        weighted=True,
        doc="2-D convolution; kernel/stride/padding are (h, w) pairs",
    ),
    Op.LINEAR: OpSchema(
        1, {"out_features": int, "bias": bool}, weighted=True,
        doc="fully connected layer; a CxHxW input is flattened in (C, H, W) order; optional "
            "attrs['in_features']: the input size the spec states, checked by shape inference",
    ),
    Op.MAXPOOL: OpSchema(1, {"kernel": tuple, "stride": tuple, "padding": tuple}),
    Op.AVGPOOL: OpSchema(1, {"kernel": tuple, "stride": tuple, "padding": tuple}),
    Op.GLOBAL_AVGPOOL: OpSchema(1, {}, doc="average over the whole map: CxHxW -> Cx1x1"),
    Op.LRN: OpSchema(
        1, {"size": int, "alpha": float, "beta": float, "k": float, "mode": str},
        doc="local response normalisation across channels; mode 'sum' (paper: "
            "k + alpha*sum) or 'avg' (PyTorch/Caffe: k + alpha/n*sum)",
    ),
    Op.BATCHNORM: OpSchema(1, {"eps": float}),
    Op.RELU: OpSchema(1, {}),
    Op.DROPOUT: OpSchema(1, {"p": float}),
    Op.SOFTMAX: OpSchema(1, {}, doc="softmax over channels (dim 1)"),
    Op.ADD: OpSchema(2, {}, doc="elementwise sum of two same-shaped tensors (residual add)"),
    Op.SHORTCUT_PAD: OpSchema(
        1, {"stride": int, "out_channels": int},
        doc="identity shortcut where dimensions grow: x[:, :, ::s, ::s], zero-padded channels",
    ),
    Op.FUSED_CONV: OpSchema(
        (1, 2),
        {"out_channels": int, "kernel": tuple, "stride": tuple, "padding": tuple,
         "groups": int, "bias": bool, "bn": bool, "eps": float, "bn_name": str, "relu": bool},
        weighted=True,
        doc="a conv (the CONV attrs; the node keeps the conv's name) followed by a batch norm "
            "when ``bn`` (with its ``eps``; ``bn_name`` is the name the BN node had, which the "
            "lowering keeps for the BN's parameters so state_dict keys do not change; \"\" "
            "without BN) and a ReLU when ``relu``; with the optional ``residual`` (True), a "
            "second input is added before the ReLU (a ResNet block's shortcut). Made by "
            "passes/fold_bn.py and passes/fuse.py; in eval mode the BN is folded into the "
            "conv's weight and bias",
    ),
}

#: Ops that apply an activation function (written by the user or implied after a conv/fc).
ACTIVATIONS = frozenset({Op.RELU, Op.SOFTMAX})


@dataclass(frozen=True)
class Shape:
    """The shape of one sample: ``(C, H, W)`` for feature maps, ``(F,)`` for vectors."""

    dims: tuple[int, ...]

    @classmethod
    def of(cls, *dims: int) -> "Shape":
        return cls(tuple(int(d) for d in dims))

    @classmethod
    def parse(cls, text: str) -> "Shape":
        """``"3x224x224"`` -> Shape((3, 224, 224)); raises ValueError on anything else."""
        parts = text.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"expected an input shape like 3x224x224, found {text!r}")
        dims = tuple(int(p) for p in parts)
        if min(dims) < 1:
            raise ValueError(f"input shape {text!r} has a zero dimension")
        return cls(dims)

    @property
    def is_map(self) -> bool:
        return len(self.dims) == 3

    @property
    def c(self) -> int:
        return self.dims[0]

    @property
    def h(self) -> int:
        return self.dims[1] if self.is_map else 1

    @property
    def w(self) -> int:
        return self.dims[2] if self.is_map else 1

    @property
    def numel(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def __str__(self) -> str:
        return "x".join(str(d) for d in self.dims)


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
        if not name.isidentifier():
            fail(name, "name is not a Python identifier")
        op = data.get("op")
        if not isinstance(op, Op):
            fail(name, f"op {op!r} is not an Op")
        schema = SCHEMA[op]
        args = data.get("args")
        low, high = schema.arity if isinstance(schema.arity, tuple) else (schema.arity, schema.arity)
        if not isinstance(args, tuple) or not low <= len(args) <= high:
            fail(name, f"{op.value} takes {schema.arity} input(s), has args {args!r}")
        preds = {(u, graph.edges[u, name]["index"]) for u in graph.predecessors(name)}
        if preds != {(a, i) for i, a in enumerate(args)}:
            fail(name, f"edges {sorted(preds)} do not match args {args}")
        attrs = data.get("attrs")
        for key, kind in schema.attrs.items():
            if key not in attrs:
                fail(name, f"{op.value} requires attribute {key!r}")
            if not isinstance(attrs[key], kind):
                fail(name, f"attribute {key!r} = {attrs[key]!r} is not {kind}")
        if analysed and not isinstance(data.get("meta", {}).get("shape"), Shape):
            fail(name, "has no inferred shape (meta['shape'])")
        if name != output and graph.out_degree(name) == 0:
            fail(name, "is not used and is not the output")
        if op is Op.FUSED_CONV and attrs["bn"] != bool(attrs["bn_name"]):
            fail(name, "a fused conv names its batch norm (bn_name) exactly when it has one (bn)")
        if op is Op.FUSED_CONV and len(args) != 1 + bool(attrs.get("residual")):
            fail(name, "a fused conv has a second input exactly when it adds a residual")
    owned: set[str] = set()  # names a fused conv keeps for its batch norm's parameters
    for name, data in graph.nodes(data=True):
        bn_name = data["attrs"].get("bn_name") if data["op"] is Op.FUSED_CONV else ""
        if bn_name:
            if not bn_name.isidentifier() or bn_name in graph or bn_name in owned:
                fail(name, f"its batch norm's name {bn_name!r} is not an identifier, or is taken "
                           "by a node or another fused conv")
            owned.add(bn_name)
