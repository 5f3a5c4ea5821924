"""Lowering to the source text of a standalone PyTorch module file.

The file reads like hand-written PyTorch: one class per block of the spec (a repeated call is
an ``nn.Sequential`` built in a loop), one attribute per layer in ``__init__``, one line per
layer or block call in ``forward``. Output is deterministic (same graph, same bytes). Only validated
identifiers (node names, checked by the IR verifier, re-checked here) and numbers reach it.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re

from archdsl.backends import TORCH, Backend, get
from archdsl.codegen import hierarchy
from archdsl.codegen.torch_ops import from_linear, lower
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


_VARIABLES = ("x", "y", "z", "u", "v", "w")
# An integer constant in a constructor call (not part of a name, a float or an exponent).
_INT = re.compile(r"(?<![\w.\-])(\d+)(?![\w.])")


class _Variables:
    """The local variables of one forward: a value's variable is free again after its last
    use, and a step's output takes the variable of the input it consumes last (``x =
    self.conv1(x)``) or a free one, so a chain reads as one ``x`` and a residual block as two."""

    def __init__(self):
        self.free: list[str] = []
        self.made = 0

    def _new(self) -> str:
        self.made += 1
        n = self.made - 1
        return _VARIABLES[n] if n < len(_VARIABLES) else f"x{n - len(_VARIABLES) + 1}"

    def take(self, prefer: str | None = None) -> str:
        if prefer is not None and prefer in self.free:
            self.free.remove(prefer)
            return prefer
        if self.free:
            self.free.sort(key=self._rank)
            return self.free.pop(0)
        return self._new()

    @staticmethod
    def _rank(name: str) -> tuple:
        return (0, _VARIABLES.index(name)) if name in _VARIABLES else (1, int(name[1:]))


class _Writer:
    """Writes one class per distinct block call (identical calls share it) and the net's."""

    def __init__(self, graph: ArchGraph, backend: Backend):
        self.graph, self.backend = graph, backend
        source = graph.graph["input"]
        self.lowered = {n: lower(graph, n, backend) for n in graph.nodes if n != source}
        self.imports = {"import torch", "import torch.nn as nn", "import torch.nn.functional as F"}
        self.classes: list[str] = []  # class definitions, children first
        self.bodies: dict[str, str] = {}  # a class's text after its name -> the class's name
        self.names = Namespace(_RESERVED | {class_name(graph.graph["name"])})

    def ctor(self, layer) -> str:
        if layer.module == "torch.nn":
            ctor = f"nn.{layer.cls}"
        else:
            self.imports.add(f"from {layer.module} import {layer.cls}")
            ctor = layer.cls
        args = [_literal(a) for a in layer.args]
        args += [f"{k}={_literal(v)}" for k, v in layer.kwargs.items()]
        return f"{ctor}({', '.join(args)})"

    def child_ctor(self, child) -> str:
        if isinstance(child, hierarchy.Level):
            return self.instance[id(child)]
        calls = [self.instance[id(c)] for c in child.copies]
        container = "nn.Sequential" if child.chain else "nn.ModuleList"
        loop = _loop([self.called[id(c)] for c in child.copies])
        if loop is not None:
            return f"{container}(*{loop})" if child.chain else f"{container}({loop})"
        return f"{container}({', '.join(calls)})" if child.chain else f"{container}([{', '.join(calls)}])"

    def init_lines(self, level: hierarchy.Level) -> list[str]:
        lines = []
        for kind, attr in level.members:
            if kind == "child":
                lines.append(f"        self.{attr} = {self.child_ctor(level.children[attr])}")
                continue
            node = level.nodes[attr]
            low = self.lowered[node]
            self.imports.update(low.imports)
            if low.layer is not None:
                lines.append(f"        self.{attr} = {self.ctor(low.layer)}")
            for _, attribute, layer in low.extra:  # e.g. a fused conv's batch norm
                here = hierarchy.extra_attr(level, attribute, self.graph)
                lines.append(f"        self.{here} = {self.ctor(layer)}")
        return lines

    def forward_lines(self, level: hierarchy.Level, shapes: bool = True) -> tuple[list[str], list[str]]:
        """The signature's parameters and the body of ``forward`` (each line with the shape it
        computes, in the net's class; a block's class may serve calls at several sizes)."""
        variables = _Variables()
        var = {value: variables.take() for value in level.inputs}
        params = [var[v] for v in level.inputs]
        lines = []
        for step, dead in zip(level.steps, hierarchy.frees(level)):
            argv = [var[a] for a in step.args]
            if step.node is not None:
                low = self.lowered[step.node]
                roles = {role: f"self.{hierarchy.extra_attr(level, attribute, self.graph)}"
                         for role, attribute, _ in low.extra}
                expr = low.expr.format(*argv, self=f"self.{step.attr}", **roles)
            else:
                name, _, index = step.attr.partition(".")
                expr = f"self.{name}{f'[{index}]' if index else ''}({', '.join(argv)})"
            dying = [a for a in dict.fromkeys(step.args) if a in dead]
            for value in dying:
                variables.free.append(var[value])
            prefer = var[step.args[0]] if step.args and step.args[0] in dying else None
            targets = []
            for out in step.outputs:
                targets.append(variables.take(prefer))
                var[out] = targets[-1]
                prefer = None
            line = f"        {', '.join(targets)} = {expr}"
            if shapes:
                line += "  # " + ", ".join(str(self.graph.shape(o)) for o in step.outputs)
            lines.append(line)
        result = ", ".join(var[o] for o in level.outputs)
        lines.append(f"        return {result}")
        return params, lines

    def classes_for(self, root: hierarchy.Level) -> None:
        """A class for every block call, shared by the calls that differ only in integer
        constants of their layers (widths, repeat counts): those become the class's
        constructor parameters, ``Basic(c)`` called as ``Basic(64)``. Lower blocks first: a
        block's class text names its children's constructor calls."""
        self.instance: dict[int, str] = {}  # id(level) -> its constructor call, "Basic(64)"
        self.called: dict[int, tuple[str, list[int]]] = {}  # id(level) -> (class, arguments)
        height: dict[int, int] = {}
        calls = [lv for lv in hierarchy.levels(root) if lv is not root]
        for lv in calls:  # children come before their parents
            kids = [c for child in lv.children.values()
                    for c in (child.copies if isinstance(child, hierarchy.Repeat) else [child])]
            height[id(lv)] = 1 + max((height[id(c)] for c in kids), default=-1)
        for h in sorted(set(height.values())):
            families: dict[tuple, list] = {}
            for lv in (lv for lv in calls if height[id(lv)] == h):
                init = self.init_lines(lv)
                params, forward = self.forward_lines(lv, shapes=False)
                skeleton, values = [], []
                for line in init:
                    target, _, value = line.partition(" = ")
                    parts = _INT.split(value)  # text, int, text, int, ..., text
                    values += [int(v) for v in parts[1::2]]
                    skeleton.append((target, tuple(parts[0::2])))
                code = []
                for line in forward:
                    parts = _INT.split(line)
                    values += [int(v) for v in parts[1::2]]
                    code.append(tuple(parts[0::2]))
                key = (lv.block, tuple(skeleton), tuple(params), tuple(code))
                families.setdefault(key, []).append((lv, values))
            for (block, skeleton, params, code), members in families.items():
                self._family(block, skeleton, params, code, members)

    def _family(self, block, skeleton, params, code, members) -> None:
        columns = list(zip(*(values for _, values in members)))  # one per integer in the text
        names: dict[tuple, str] = {}  # a varying column's values -> its parameter
        attrs = {a for lv, _ in members for a in [*lv.nodes, *lv.children]}  # never shadow one
        fresh = (n for n in (f"c{i}" if i > 1 else "c" for i in range(1, 1 << 30)) if n not in attrs)
        slots = []
        for column in columns:
            if len(set(column)) == 1:
                slots.append(str(column[0]))
            else:
                if column not in names:
                    names[column] = next(fresh)
                slots.append(names[column])
        fill = iter(slots)
        init = [f"{target} = " + "".join(t + next(fill, "") for t in texts[:-1]) + texts[-1]
                for target, texts in skeleton]
        kept = []  # parameters the forward reads: kept as attributes
        forward = []
        for texts in code:
            line = texts[0]
            for text in texts[1:]:
                slot = next(fill)
                if slot in names.values():
                    kept += [] if slot in kept else [slot]
                    slot = f"self.{slot}"
                line += slot + text
            forward.append(line)
        arguments = list(names.values())
        body = "\n".join([
            f'    """Block {block}."""',
            "",
            f"    def __init__(self{''.join(', ' + a for a in arguments)}):",
            "        super().__init__()",
            *(f"        self.{a} = {a}" for a in kept),
            *init,
            "",
            f"    def forward(self, {', '.join(params)}):",
            *forward,
        ])
        name = self.bodies.get(body)
        if name is None:
            name = self.bodies[body] = self.names.create(class_name(block))
            self.classes.append(f"class {name}(nn.Module):\n{body}\n")
        for lv, values in members:
            args = [values[columns.index(col)] for col in names]
            self.called[id(lv)] = (name, args)
            self.instance[id(lv)] = f"{name}({', '.join(map(str, args))})"


def _loop(calls: list[tuple[str, list[int]]]) -> str | None:
    """The copies of a repeat as a list comprehension, where they are one class called with
    arguments that step evenly (``[Unit(64 + 32 * i) for i in range(6)]``, a dense block's
    growing width), else None."""
    if len(calls) < 2 or len({name for name, _ in calls}) != 1:
        return None
    name, columns = calls[0][0], list(zip(*(args for _, args in calls)))
    terms = []
    for column in columns:
        step = column[1] - column[0]
        if any(b - a != step for a, b in zip(column, column[1:])):
            return None
        terms.append(str(column[0]) if step == 0 else f"{column[0]} + {step} * i" if column[0] else f"{step} * i")
    index = "i" if any("* i" in t for t in terms) else "_"
    return f"[{name}({', '.join(terms)}) for {index} in range({len(calls)})]"


def emit_source(graph: ArchGraph, backend: Backend | str = TORCH) -> str:
    """The graph as a Python module: one ``nn.Module`` class per distinct block call (calls
    that compile to the same layers share one), and the net's class, whose attributes and
    submodules are those of the in-process module (:mod:`archdsl.codegen.hierarchy`), so the two take
    the same state_dict.

    Args:
        graph: a graph prepared for ``backend`` (:func:`archdsl.pipeline.lower_graph`).
        backend: the backend (or its name) whose lowerings to use.
    """
    backend = get(backend)
    root = hierarchy.tree(graph)
    writer = _Writer(graph, backend)
    writer.classes_for(root)
    init = writer.init_lines(root)
    params, forward = writer.forward_lines(root)
    imports = writer.imports
    # The classes and the locals of forward must not shadow what the imports bind.
    assert {line.split()[-1] for line in imports} <= _IMPORTED, imports

    where = hierarchy.paths(root)
    converted = {where[n]: shape for n, shape in from_linear(graph).items()}
    assert all(all(p.isidentifier() or p.isdigit() for p in v.split(".")) for v in converted)
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
    params_text = ", ".join(f"{k}={v}" for k, v in sorted(meta.get("params", {}).items()))
    shape_in, shape_out = graph.input_shape, graph.output_shape
    doc = [
        f'    """{_plain_name(meta["name"])}: {graph.params:,} parameters, {graph.macs:,} MACs per sample.',
        "",
        f"    Input N x {shape_in}, output N x {shape_out}."
        + (f" Built with {params_text}." if params_text and re.fullmatch(r"[\w=,. +-]*", params_text) else ""),
        *dense_doc,
        '    """',
    ]
    lines = [
        f"# Generated by archdsl from net {meta['name']!r}. Do not edit; edit the spec and rebuild."
        if meta["name"].isidentifier() else "# Generated by archdsl. Do not edit; edit the spec and rebuild.",
        *sorted(imports, key=lambda s: (s.startswith("from"), s)),
        "",
        "",
        *[c + "\n" for c in writer.classes],
        f"class {class_name(meta['name'])}(nn.Module):",
        *doc,
        "",
        *dense_attr,
        "    def __init__(self):",
        "        super().__init__()",
        *init,
        "",
        f"    def forward(self, {', '.join(params)}):",
        *forward,
        *dense_load,
        "",
    ]
    return "\n".join(lines)
