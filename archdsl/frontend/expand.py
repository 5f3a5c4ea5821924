"""Expansion: a net definition plus parameter values -> an :class:`~archdsl.ir.ArchGraph`.

Repeats are unrolled, block calls inlined, residual units given their shortcut, and the
activations that papers leave unwritten are made explicit. Each node's shape is inferred as it
is added, so a shape error points at the statement that caused it (and at the block call it
came through).

The activation rule, in one sentence: **every conv and fc is followed by a ReLU (placed after
its ``bn`` when a ``bn`` follows it), except where an activation is written next, where the
layer is written with ``act=none``, where it ends a residual branch (the ReLU then follows the
addition), or where it ends the net.**
"""

from __future__ import annotations

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast
from archdsl.frontend.layers import layer_op
from archdsl.frontend.loader import Program
from archdsl.frontend.values import Value, describe, evaluate
from archdsl.ir import ACTIVATIONS, ArchGraph, Op, Shape
from archdsl.limits import Limits
from archdsl.passes import shapes

_BASE_NAMES = {
    Op.INPUT: "input", Op.CONV: "conv", Op.LINEAR: "fc", Op.MAXPOOL: "pool", Op.AVGPOOL: "avgpool",
    Op.GLOBAL_AVGPOOL: "gap", Op.LRN: "lrn", Op.BATCHNORM: "bn", Op.RELU: "relu",
    Op.DROPOUT: "dropout", Op.SOFTMAX: "softmax", Op.ADD: "add", Op.SHORTCUT_PAD: "shortcut",
}

SHORTCUTS = ("a", "b", "c", "none", "identity")


class _Scope:
    """Where statements are being expanded: the block-call path and the name prefix."""

    def __init__(self, path: str = "", prefix: str = "", calls: tuple[str, ...] = ()):
        self.path, self.prefix, self.calls = path, prefix, calls


class Builder:
    def __init__(self, program: Program, limits: Limits):
        self.program = program
        self.limits = limits
        self.graph = ArchGraph()
        self.counters: dict[str, int] = {}
        self.instances: dict[str, int] = {}
        self.current = ""
        self.pending: tuple[Span, _Scope, tuple] | None = None  # an implied ReLU waiting for its place
        # The written statements being expanded, outermost first, as (kind, span, repeat index,
        # repeat count); each node records it in meta["stmt"], so a picture can draw one box
        # per statement (archdsl/draw.py).
        self.stmts: tuple[tuple[str, Span, int, int], ...] = ()
        self.steps = 0  # expansion work so far (limit max_steps)
        self.depth = 0  # block calls and residual units being expanded (limit max_nesting)
        self.weights: dict[int, int] = {}  # statement or block (by id) -> its weight in steps

    # -- nodes -------------------------------------------------------------------------------
    def emit(self, op: Op, attrs: dict, span: Span, scope: _Scope, args=None, base: str | None = None,
             stmts: tuple | None = None) -> str:
        if len(self.graph) >= self.limits.max_nodes:
            raise SpecError(f"the expanded net has more than {self.limits.max_nodes} ops (limit max_nodes)", span)
        stem = scope.prefix + (base or _BASE_NAMES[op])
        count = self.counters[stem] = self.counters.get(stem, 0) + 1
        name = stem if op is Op.INPUT else f"{stem}{count}"
        args = (self.current,) if args is None else args
        self.graph.add_op(name, op, args, attrs, span=span, scope=scope.path)
        self.graph.nodes[name]["meta"]["stmt"] = self.stmts if stmts is None else stmts
        shapes.infer(self.graph, name)
        self.current = name
        return name

    def shape(self, name: str) -> Shape:
        return self.graph.shape(name)

    def flush(self) -> None:
        if self.pending is not None:
            span, scope, stmts = self.pending
            self.pending = None
            self.emit(Op.RELU, {}, span, scope, stmts=stmts)

    # -- work ------------------------------------------------------------------------------
    def charge(self, node, span: Span) -> None:
        """Count the work of expanding one statement (or binding one block's defaults): one step
        plus one per expression node it evaluates. Repeats of blocks that emit few or no ops
        (``block a() { relu x0 }`` called ``x10000`` in a block called ``x10000``) end here."""
        weight = self.weights.get(id(node))
        if weight is None:
            weight = self.weights[id(node)] = 1 + sum(_size(e) for e in _expressions(node))
        self.steps += weight
        if self.steps > self.limits.max_steps:
            raise SpecError(f"expanding the net takes more than {self.limits.max_steps} steps (limit max_steps): "
                            "repeats of repeated blocks multiply", span)

    def enter(self, span: Span) -> None:
        self.depth += 1
        if self.depth > self.limits.max_nesting:
            raise SpecError(f"block calls and residual units nested more than {self.limits.max_nesting} deep "
                            "(limit max_nesting)", span)

    # -- statements ------------------------------------------------------------------------
    def body(self, stmts, env: dict[str, Value], scope: _Scope) -> None:
        outer = self.stmts
        for stmt in stmts:
            self.charge(stmt, stmt.span)
            count = self.repeats(stmt, env)
            for index in range(count):
                self.stmts = outer + ((type(stmt).__name__.lower(), stmt.span, index, count),)
                self.charge(stmt, stmt.span)
                if isinstance(stmt, ast.Layer):
                    self.layer(stmt, env, scope)
                elif isinstance(stmt, ast.Call):
                    self.call(stmt, env, scope)
                else:
                    self.residual(stmt, env, scope)
        self.stmts = outer

    def repeats(self, stmt, env) -> int:
        if stmt.repeat is None:
            return 1
        count = evaluate(stmt.repeat, env)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SpecError(f"expected a repeat count >= 0, found {describe(count)}", stmt.repeat.span)
        if count > self.limits.max_repeat:
            raise SpecError(f"repeat count {count} exceeds the limit of {self.limits.max_repeat} "
                            "(limit max_repeat)", stmt.repeat.span)
        return count

    def layer(self, layer: ast.Layer, env, scope: _Scope) -> None:
        if layer.name in self.program.blocks and layer.width is None and layer.stride is None \
                and not layer.options:
            return self.call(ast.Call(layer.name, (), (), layer.span), env, scope)
        op, attrs, act = layer_op(layer, env, self.limits)
        if op in ACTIVATIONS:
            self.pending = None
        elif op is not Op.BATCHNORM:
            self.flush()
        self.emit(op, attrs, layer.span, scope)
        if act == "relu":
            self.pending = (layer.span, scope, self.stmts)

    def call(self, call: ast.Call, env, scope: _Scope) -> None:
        block = self.program.blocks.get(call.name)
        if block is None:
            known = ", ".join(sorted(self.program.blocks)) or "none defined"
            raise SpecError(f"unknown block {call.name!r} (blocks: {known})", call.span)
        if call.name in scope.calls:
            chain = " -> ".join(scope.calls + (call.name,))
            raise SpecError(f"block {call.name!r} calls itself ({chain})", call.span)
        if len(scope.calls) >= self.limits.max_call_depth:
            raise SpecError(f"blocks nested more than {self.limits.max_call_depth} deep (limit max_call_depth)",
                            call.span)
        self.charge(block, call.span)
        local = bind(block.params, call.args, call.kwargs, env, call.span, f"block {block.name!r}")
        instance = self.instances[call.name] = self.instances.get(call.name, 0) + 1
        inner = _Scope(
            f"{scope.path}.{call.name}{instance}" if scope.path else f"{call.name}{instance}",
            f"{call.name}{instance}_",
            scope.calls + (call.name,),
        )
        self.enter(call.span)
        try:
            self.body(block.body, local, inner)
        except SpecError as err:
            raise err.with_note(f"in block {call.name!r} called here", call.span) from None
        self.depth -= 1

    def residual(self, res: ast.Residual, env, scope: _Scope) -> None:
        options = {o.name: o for o in res.options}
        for name, option in options.items():
            if name not in ("shortcut", "act"):
                raise SpecError(f"residual has no option {name!r} (its options: shortcut, act)", option.span)
        kind = _choice(options.get("shortcut"), env, "b", SHORTCUTS)
        act = _choice(options.get("act"), env, "relu", ("relu", "none"))
        self.flush()
        x = self.current
        self.enter(res.span)
        self.body(res.body, env, scope)
        self.depth -= 1
        self.pending = None  # the branch ends without its activation; it follows the addition
        branch = self.current
        if branch == x:
            raise SpecError("a residual unit needs at least one layer in its body", res.span)
        if kind != "none":
            short = self.shortcut(x, branch, kind, res.span, scope)
            self.emit(Op.ADD, {}, res.span, scope, args=(branch, short))
        if act == "relu":
            self.emit(Op.RELU, {}, res.span, scope)

    def shortcut(self, x: str, branch: str, kind: str, span: Span, scope: _Scope) -> str:
        s_in, s_out = self.shape(x), self.shape(branch)
        if s_in == s_out and kind != "c":
            return x
        if kind == "identity":
            return x  # the add reports the mismatch, with both shapes
        stride = _subsampling(s_in, s_out, self.branch_stride(x, branch))
        if stride is None:
            raise SpecError(
                f"no shortcut can map the residual input {s_in} to the branch output {s_out}: "
                "expected the branch to keep the size or shrink it by a whole stride", span)
        if kind == "a":
            if s_out.c < s_in.c:
                raise SpecError(f"shortcut=A pads channels with zeros, so it cannot go from {s_in.c} to "
                                f"{s_out.c} channels: expected the branch to keep or grow them", span)
            return self.emit(Op.SHORTCUT_PAD, {"stride": stride, "out_channels": s_out.c}, span, scope, args=(x,))
        conv = {"out_channels": s_out.c, "kernel": (1, 1), "stride": (stride, stride), "padding": (0, 0),
                "groups": 1, "bias": False}
        self.emit(Op.CONV, conv, span, scope, args=(x,), base="proj")
        return self.emit(Op.BATCHNORM, {"eps": 1e-5}, span, scope, base="proj_bn")

    def branch_stride(self, x: str, branch: str) -> int | None:
        """The stride of a residual branch from ``x`` to ``branch``: the product of the strides on
        its path (None if the path has no single stride, e.g. global pooling)."""
        sh = sw = 1
        node = branch
        while node != x:
            data = self.graph.nodes[node]
            op, attrs = data["op"], data["attrs"]
            if op in (Op.CONV, Op.MAXPOOL, Op.AVGPOOL):
                sh, sw = sh * attrs["stride"][0], sw * attrs["stride"][1]
            elif op is Op.SHORTCUT_PAD:
                sh, sw = sh * attrs["stride"], sw * attrs["stride"]
            elif op in (Op.GLOBAL_AVGPOOL, Op.LINEAR):
                return None
            node = data["args"][0]
        return sh if sh == sw else None


def _subsampling(s_in: Shape, s_out: Shape, hint: int | None = None) -> int | None:
    """The stride that takes s_in's map to s_out's (``hint``, the branch's own stride, if it
    does; else the smallest that does), or None if there is none."""
    if not (s_in.is_map and s_out.is_map):
        return None

    def fits(stride: int) -> bool:
        return -(-s_in.h // stride) == s_out.h and -(-s_in.w // stride) == s_out.w

    if hint is not None and fits(hint):
        return hint
    # ceil(h / s) == h_out holds for h / h_out <= s < h / (h_out - 1): the smallest is ceil(h / h_out).
    stride = max(1, -(-s_in.h // s_out.h), -(-s_in.w // s_out.w))
    return stride if fits(stride) else None


def _expressions(node) -> list:
    """The expressions a statement evaluates each time it is expanded (not those of the
    statements in its body), or the parameter defaults of a block."""
    if isinstance(node, ast.BlockDef):
        return [p.default for p in node.params if p.default is not None]
    found = [node.repeat]
    if isinstance(node, ast.Layer):
        found += [node.width, node.stride]
    if isinstance(node, ast.Call):
        found += list(node.args) + [o.value for o in node.kwargs]
    found += [o.value for o in getattr(node, "options", ())]
    return [e for e in found if e is not None]


def _size(expr) -> int:
    """The number of nodes of an expression."""
    count, stack = 0, [expr]
    while stack:
        e = stack.pop()
        count += 1
        if isinstance(e, ast.BinOp):
            stack += [e.left, e.right]
        elif isinstance(e, (ast.Neg, ast.Braced)):
            stack.append(e.operand if isinstance(e, ast.Neg) else e.expr)
    return count


def _choice(option: ast.Option | None, env, default: str, choices: tuple[str, ...]) -> str:
    if option is None:
        return default
    value = evaluate(option.value, env)
    if not isinstance(value, str) or value.lower() not in choices:
        shown = ", ".join(c if len(c) > 1 else c.upper() for c in choices)
        raise SpecError(f"expected {option.name} to be one of {shown}, found {describe(value)}", option.value.span)
    return value.lower()


def bind(params: tuple[ast.Param, ...], args, kwargs, env, span: Span, what: str) -> dict[str, Value]:
    """Bind call arguments (evaluated in the caller's ``env``) to parameters; fill defaults."""
    if len(args) > len(params):
        raise SpecError(f"{what} takes {len(params)} argument(s), found {len(args)}", span)
    local: dict[str, Value] = {}
    for param, arg in zip(params, args):
        local[param.name] = evaluate(arg, env)
    names = {p.name for p in params}
    for kw in kwargs:
        if kw.name not in names:
            raise SpecError(f"{what} has no parameter {kw.name!r} (its parameters: "
                            f"{', '.join(p.name for p in params) or 'none'})", kw.span)
        if kw.name in local:
            raise SpecError(f"argument {kw.name!r} given twice", kw.span)
        local[kw.name] = evaluate(kw.value, env)
    for param in params:
        if param.name not in local:
            if param.default is None:
                raise SpecError(f"{what} needs a value for {param.name!r}", span)
            local[param.name] = evaluate(param.default, local)
    return local


def build(program: Program, net: ast.NetDef, overrides: dict[str, Value], input_shape: Shape | None,
          limits: Limits) -> ArchGraph:
    """Expand ``net`` with parameter ``overrides`` into a shape-checked graph."""
    names = {p.name for p in net.params}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SpecError(f"net {net.name!r} has no parameter {unknown[0]!r} (its parameters: "
                        f"{', '.join(p.name for p in net.params) or 'none'})", net.span)
    for key, value in overrides.items():
        if not isinstance(value, (bool, int, float, str)):
            raise SpecError(f"parameter {key!r} must be a number, a bool or a word, found {value!r}", net.span)
        if not isinstance(value, (bool, str)) and not abs(value) <= 2**62:
            raise SpecError(f"parameter {key!r} is out of range", net.span)
    values = {}
    for param in net.params:
        if param.name in overrides:
            values[param.name] = overrides[param.name]
        elif param.default is not None:
            values[param.name] = evaluate(param.default, values)
        else:
            raise SpecError(f"net {net.name!r} needs a value for parameter {param.name!r} (--set {param.name}=...)",
                            param.span)
    shape = input_shape or net.input_shape
    if shape is None:
        raise SpecError(f"net {net.name!r} declares no input shape: write 'net {net.name} : 3x224x224 {{' "
                        "or pass --input", net.span)
    if not shape.is_map or max(shape.dims[1:]) > limits.max_spatial or shape.c > limits.max_width:
        raise SpecError(f"input shape {shape} is out of range (limits max_spatial, max_width)", net.span)

    builder = Builder(program, limits)
    graph = builder.graph
    graph.graph.update(name=net.name, params=dict(values), spec=net.span, file=program.entry.file)
    top = _Scope()
    graph.graph["input"] = builder.emit(Op.INPUT, {"shape": shape}, net.span, top, args=())
    builder.body(net.body, values, top)
    builder.pending = None  # the net's last weighted layer keeps its raw output
    if builder.current == graph.graph["input"]:
        raise SpecError(f"net {net.name!r} has no layers", net.span)
    graph.graph["output"] = builder.current
    return graph
