"""Lowering to the source text of a standalone PyTorch module file.

The file reads like hand-written PyTorch: one attribute per layer in ``__init__``, one line
per node in ``forward``. Output is deterministic (same graph, same bytes). Only validated
identifiers (node names, checked by the IR verifier, re-checked here) and numbers reach it.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re

from archdsl.backends import TORCH, Backend, get
from archdsl.codegen.torch_ops import from_linear, last_uses, lower
from archdsl.ir import ArchGraph

#: Names the emitted module binds at its top (its imports), which nothing it defines may shadow.
_IMPORTED = frozenset({"torch", "nn", "F", "fused_conv", "FusedConv2d", "LocalResponseNorm"})
_BUILTINS = frozenset(dir(builtins))
_RESERVED = _IMPORTED | _BUILTINS | {"self", "x", "super"}


class Namespace:
    """Hands out Python identifiers: sanitised, never a keyword, a reserved name or a name
    that starts with ``__`` (mangled inside a class), unique."""

    def __init__(self, reserved=()):
        self.taken = set(reserved)

    def create(self, wanted: str) -> str:
        name = re.sub(r"\W", "_", wanted, flags=re.ASCII) or "_"
        if name[0].isdigit():
            name = "_" + name
        if name.startswith("__"):
            name = "_" + name.lstrip("_")
        if keyword.iskeyword(name) or name in self.taken:
            base, i = name, 1
            while f"{base}_{i}" in self.taken:
                i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def class_name(net: str) -> str:
    """The emitted class's name: the net's name in CamelCase, never shadowing an import or a
    builtin of the module (a net named ``f`` gives ``FNet``, not ``F``)."""
    name = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", net) if part)
    if not name.isidentifier() or keyword.iskeyword(name):
        return f"Net{name}"
    return f"{name}Net" if name in _IMPORTED or name in _BUILTINS else name


def _plain_name(net: str) -> str:
    """The net's name where it is an ASCII identifier (as a spec writes it), else the class name."""
    return net if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", net) else class_name(net)


def _literal(value) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):  # repr would be inf or nan: names, not numbers
            raise ValueError(f"refusing to emit the non-finite number {value!r} into generated source")
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str) and re.fullmatch(r"[a-z_]+", value):  # enum-like words: "sum", "triton"
        return repr(value)
    raise ValueError(f"refusing to emit {value!r} into generated source")


def emit_source(graph: ArchGraph, backend: Backend | str = TORCH) -> str:
    """The graph as a Python module defining one ``nn.Module`` subclass.

    Args:
        graph: a graph prepared for ``backend`` (:func:`archdsl.pipeline.lower_graph`).
        backend: the backend (or its name) whose lowerings to use.
    """
    backend = get(backend)
    order = graph.order()
    frees = last_uses(graph, order)
    names = Namespace(_RESERVED)
    var = {graph.graph["input"]: "x"}
    for node in order[1:]:
        var[node] = names.create(node)

    imports = {"import torch", "import torch.nn as nn", "import torch.nn.functional as F"}
    layers: dict[str, list[str]] = {}  # node -> its lines in __init__
    forward = []
    for node in order[1:]:
        data = graph.nodes[node]
        lowered = lower(graph, node, backend)
        imports.update(lowered.imports)
        owned = [(var[node], lowered.layer)] if lowered.layer is not None else []
        roles = {}
        for role, attribute, layer in lowered.extra:  # e.g. a fused conv's batch norm
            attribute = names.create(attribute)
            roles[role] = f"self.{attribute}"
            owned.append((attribute, layer))
        for attribute, layer in owned:
            if layer.module == "torch.nn":
                ctor = f"nn.{layer.cls}"
            else:
                imports.add(f"from {layer.module} import {layer.cls}")
                ctor = layer.cls
            args = [_literal(a) for a in layer.args]
            args += [f"{k}={_literal(v)}" for k, v in layer.kwargs.items()]
            layers.setdefault(node, []).append(f"        self.{attribute} = {ctor}({', '.join(args)})")
        expr = lowered.expr.format(*(var[a] for a in data["args"]), self=f"self.{var[node]}", **roles)
        line = f"        {var[node]} = {expr}"
        dead = [var[v] for v in frees[node] if v != graph.graph["input"]]
        if dead:
            line += f"; del {', '.join(dead)}"
        line += f"  # {graph.shape(node)}"
        forward.append(line)
    # The class and the locals of forward must not shadow what the imports bind.
    assert {line.split()[-1] for line in imports} <= _IMPORTED, imports
    # Layers are declared in the order the spec wrote them (the state_dict's order), which a
    # fusion that rewires inputs does not change; forward runs in topological order.
    init = [line for node in graph.nodes if node in layers for line in layers[node]]

    converted = {var[n]: shape for n, shape in from_linear(graph).items()}
    assert all(v.isidentifier() for v in converted)
    dense_doc, dense_attr, dense_load = [], [], []
    if converted:
        dense_doc = [
            "",
            "    Dense form: the fc layers run as convolutions, and load_state_dict takes the fc",
            "    module's state dict as it is (2-D fc weights are reshaped to kernels as they load).",
        ]
        entries = ", ".join(f"{v!r}: {_literal(tuple(shape))}" for v, shape in converted.items())
        dense_attr = [
            "    # Layers made from fc layers -> (C, kh, kw) that their (out, C*kh*kw) fc weight reshapes to.",
            f"    FROM_LINEAR = {{{entries}}}",
            "",
        ]
        dense_load = [
            "",
            "    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):",
            "        # An fc flattens its input in (C, H, W) order, so each row of its weight is one",
            "        # kernel laid out as (C, kh, kw).",
            "        for name, (c, kh, kw) in self.FROM_LINEAR.items():",
            "            key = prefix + name + \".weight\"",
            "            weight = state_dict.get(key)",
            "            if weight is not None and weight.dim() == 2 and weight.shape[1] == c * kh * kw:",
            "                state_dict[key] = weight.reshape(weight.shape[0], c, kh, kw)",
            "        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)",
        ]

    meta = graph.graph
    params = ", ".join(f"{k}={v}" for k, v in sorted(meta.get("params", {}).items()))
    shape_in, shape_out = graph.input_shape, graph.output_shape
    doc = [
        f'    """{_plain_name(meta["name"])}: {graph.params:,} parameters, {graph.macs:,} MACs per sample.',
        "",
        f"    Input N x {shape_in}, output N x {shape_out}."
        + (f" Built with {params}." if params and re.fullmatch(r"[\w=,. +-]*", params) else ""),
        *dense_doc,
        '    """',
    ]
    lines = [
        f"# Generated by archdsl from net {meta['name']!r}. Do not edit; edit the spec and rebuild."
        if meta["name"].isidentifier() else "# Generated by archdsl. Do not edit; edit the spec and rebuild.",
        *sorted(imports, key=lambda s: (s.startswith("from"), s)),
        "",
        "",
        f"class {class_name(meta['name'])}(nn.Module):",
        *doc,
        "",
        *dense_attr,
        "    def __init__(self):",
        "        super().__init__()",
        *init,
        "",
        "    def forward(self, x):",
        *forward,
        f"        return {var[graph.graph['output']]}",
        *dense_load,
        "",
    ]
    return "\n".join(lines)
