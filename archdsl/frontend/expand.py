"""Expansion: a net definition plus parameter values -> an :class:`~archdsl.ir.ArchGraph`.

Repeats are unrolled, block calls inlined, residual units given their shortcut, and the
activations that papers leave unwritten are made explicit. Each node's shape is inferred as it
is added, so a shape error points at the statement that caused it (and at the block call it
came through).

The activation rule, in one sentence: **every conv and fc is followed by a ReLU (placed after
its ``bn`` when a ``bn`` follows it), except where an activation is written next, where the
layer is written with ``act=none``, where it ends a residual branch or an ``add`` branch (the
ReLU then follows the addition), or where it ends the net.** (A ``concat`` or ``multiply``
branch keeps its last ReLU, as GoogLeNet's columns do.)

Names: ``x = stmt`` makes the statement's output (after its activation) the value ``x``; a
bare ``x`` later continues from it. Names are lexical: a block body, a residual body, a merge
branch and each copy of a repeated group are scopes that see the names of the scopes around
them (a block body sees only its own); a name is defined once where it is visible.
"""

from __future__ import annotations

import keyword
import warnings

import networkx as nx

from archdsl.errors import Span, SpecError, SpecWarning
from archdsl.frontend import ast
from archdsl.frontend.layers import layer_names, layer_op, resolve_name
from archdsl.frontend.loader import Program, bundled_library_of
from archdsl.frontend.suggest import did_you_mean
from archdsl.frontend.values import Value, as_int, describe, evaluate
from archdsl.ir import ArchGraph, Op, Shape
from archdsl.limits import Limits, tally
from archdsl.ops import ACTIVATIONS, BEFORE_ACTIVATION, TABLE, output_shape
from archdsl.ops.merges import concat_mismatch, multiply_mismatch

# a: identity, zero-padded; b: 1x1 projection + BN where the dimensions change; c: projections
# everywhere; p: a 1x1 projection without BN where they change; preact: like p, the projection
# reading the branch's leading BN and ReLU (pre-activation ResNets); none; identity.
SHORTCUTS = ("a", "b", "c", "p", "preact", "none", "identity")

# The name a layer sees as its input width: groups={in} for a depthwise conv.
INPUT_WIDTH = "in"


#: Names a layer or a submodule may not take as an attribute of the lowered module: what
#: ``torch.nn.Module`` defines in public (an attribute ``to`` or ``forward`` would replace its
#: method; tests/test_hostile.py checks the list against the installed torch), what the
#: modules of :mod:`archdsl.codegen.torch_module` set, and Python's keywords (the emitted source
#: writes ``self.<name>``). Private names (a leading "_") are all reserved: torch adds those often.
_MODULE_ATTRIBUTES = frozenset("""
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
    dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule
    half ipu load_state_dict modules mtia named_buffers named_children named_modules named_parameters
    parameters register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
    register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory state_dict
    to to_empty train training type xpu zero_grad
    block arch_name requested_backend backend paths
""".split()) | frozenset(keyword.kwlist)


def _attribute(name: str) -> str:
    """A name the lowered module uses as an attribute: a leading "__" would be name-mangled in
    a class, so it gains a "b"; a reserved name (:data:`_MODULE_ATTRIBUTES`, or a leading "_")
    gains a trailing "_". So does a name that is one of those plus trailing underscores, which
    keeps two names apart (``to`` becomes ``to_``, ``to_`` becomes ``to__``)."""
    if name.startswith("__"):
        return "b" + name
    base = name.rstrip("_")
    return name + "_" if base in _MODULE_ATTRIBUTES or base.startswith("_") else name


class _Calls:
    """The submodule names one block call (or the net) gives the calls made in it: a per-block
    count for the unlabelled ones, the names taken, and the name given to each statement (keyed
    by the statement and the scope it runs in; the scope is held so its id is not reused)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.taken: set[str] = set()
        self.given: dict[tuple[int, int], tuple[str, "_Scope"]] = {}


class _Scope:
    """Where statements are being expanded: the block-call path, the name prefix, and the named
    values visible here (its own, then its parent's)."""

    def __init__(self, path: str = "", prefix: str = "", calls: tuple[str, ...] = (),
                 parent: "_Scope | None" = None, body: tuple = (), module: tuple[str, ...] = (),
                 children: _Calls | None = None, blocks: tuple = ()):
        self.path, self.prefix, self.calls = path, prefix, calls
        self.parent, self.body = parent, body
        self.values: dict[str, tuple[str, Span]] = {}  # name -> (node, where it was defined)
        # Where the nodes sit in the lowered module's hierarchy: the submodule path of this block
        # call ("basic_stage2", "basic2", "0": the first copy of a repeated call), and the names
        # given to the calls made in this block or net, shared by its nested scopes.
        self.module = module
        self.children = _Calls() if children is None else children
        self.blocks = blocks  # (module path, block name) of this call and the calls around it

    def child(self, body: tuple) -> "_Scope":
        return _Scope(self.path, self.prefix, self.calls, self, body, self.module, self.children, self.blocks)

    def unit(self, stmt, copy: int) -> "_Scope":
        """The scope of copy ``copy`` of a repeated residual unit, merge or group: a submodule
        named as a block call would be (its label, else ``concat_unit1`` and the like), whose
        names and counters are its own, seeing the names around it."""
        kind = (stmt.kind if isinstance(stmt, ast.Merge) else type(stmt).__name__.lower()) + "_unit"
        module = self.submodule(stmt, copy, kind)
        return _Scope(self.path, self.prefix, self.calls, self, (), module, None, self.blocks + ((module, kind),))

    def submodule(self, call, copy: int, base: str | None = None) -> tuple[str, ...]:
        """The module path of copy ``copy`` of ``call`` made in this scope: a call named by its
        label (``stage3 = basic_stage(...)``), else by its block and how many calls of that
        block this block or net made before (``basic2``); a repeated call (``x{n}``) is a
        sequence whose copies are ``0``, ``1``, ... So a key reads ``basic_stage2.basic2.0.conv1``,
        and inserting a layer elsewhere renames nothing."""
        calls, key = self.children, (id(call), id(self))
        name = calls.given[key][0] if key in calls.given else None
        if name is None:
            wanted = call.label.name if call.label is not None else None
            if wanted is None:
                base = base or call.name
                calls.counts[base] = calls.counts.get(base, 0) + 1
                wanted = f"{base}{calls.counts[base]}"
            wanted = name = _attribute(wanted)
            i = 1
            while name in calls.taken:  # the same label in two copies of a repeated group
                i += 1
                name = f"{wanted}_{i}"
            calls.taken.add(name)
            calls.given[key] = (name, self)
        return self.module + ((name, str(copy)) if call.repeat is not None else (name,))

    def lookup(self, name: str) -> tuple[str, Span] | None:
        scope = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        return None

    def visible(self) -> list[str]:
        names, scope = [], self
        while scope is not None:
            names += scope.values
            scope = scope.parent
        return names

    def defined_later(self, name: str) -> Span | None:
        """Where ``name`` is defined in a body around this point, if it is (used too early)."""
        scope = self
        while scope is not None:
            for label in _labels(scope.body):
                if label.name == name:
                    return label.span
            scope = scope.parent
        return None

    def defined_inside(self, name: str) -> Span | None:
        """Where ``name`` is defined inside a body nested in this block or net (not visible
        outside it), if it is."""
        root = self
        while root.parent is not None:
            root = root.parent
        stack = list(root.body)
        while stack:
            stmt = stack.pop()
            if stmt.label is not None and stmt.label.name == name:
                return stmt.label.span
            if isinstance(stmt, (ast.Group, ast.Residual)):
                stack += stmt.body
            elif isinstance(stmt, ast.Merge):
                stack += [s for branch in stmt.branches for s in branch]
        return None


class Builder:
    def __init__(self, program: Program, limits: Limits):
        self.program = program
        self.limits = limits
        self.graph = ArchGraph()
        self.counters: dict[str, int] = {}
        self.locals: dict[tuple, int] = {}  # (module path, name stem) -> layers named so far
        self.calls: dict[int, ast.Call] = {}  # a layer statement that names a block -> its call
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
        self.reads_width: dict[int, bool] = {}  # statement (by id) -> whether it reads ``in``

    # -- nodes -------------------------------------------------------------------------------
    def emit(self, op: Op, attrs: dict, span: Span, scope: _Scope, args=None, base: str | None = None,
             stmts: tuple | None = None) -> str:
        if len(self.graph) >= self.limits.max_nodes:
            raise SpecError(f"the expanded net has more than {self.limits.max_nodes} ops (limit max_nodes)", span)
        stem = scope.prefix + (base or TABLE[op].node_name)
        count = self.counters[stem] = self.counters.get(stem, 0) + 1
        name = stem if op is Op.INPUT else f"{stem}{count}"
        while name in self.graph:  # block a1 called once and block a called 11 times: a11_...
            count = self.counters[stem] = count + 1
            name = f"{stem}{count}"
        args = (self.current,) if args is None else args
        self.graph.add_op(name, op, args, attrs, span=span, scope=scope.path)
        tally(nodes=1)
        node = self.graph.nodes[name]
        node["meta"]["stmt"] = self.stmts if stmts is None else stmts
        if scope.module and op is not Op.INPUT:
            # The submodule that will hold it and its attribute name there (counted per
            # submodule, so each copy of a repeated unit names its layers alike), kept at graph
            # level so a pass that absorbs the node (a BN into its conv) leaves it readable.
            key = (scope.module, stem[len(scope.prefix):])
            local = self.locals[key] = self.locals.get(key, 0) + 1
            self.graph.graph.setdefault("modules", {})[name] = (scope.module, f"{key[1]}{local}", scope.blocks)
        shape = node["meta"]["shape"] = output_shape(op, attrs, [self.shape(a) for a in args], span)
        if shape.is_map and max(shape.h, shape.w) > self.limits.max_spatial:
            # padding grows a map: conv1-1 pad=65536 on a 2x2 input would make a 131073x131073 one
            raise SpecError(f"this layer's output map {shape.h}x{shape.w} is larger than "
                            f"{self.limits.max_spatial} (limit max_spatial)", span)
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
        tally(steps=weight)
        if self.steps > self.limits.max_steps:
            raise SpecError(f"expanding the net takes more than {self.limits.max_steps} steps (limit max_steps): "
                            "repeats of repeated blocks multiply", span)

    def with_width(self, stmt, env: dict[str, Value]) -> dict[str, Value]:
        """``env`` with ``in``, the current value's width, where ``stmt`` reads it."""
        reads = self.reads_width.get(id(stmt))
        if reads is None:
            reads = self.reads_width[id(stmt)] = any(
                isinstance(e, ast.Ref) and e.name == INPUT_WIDTH for e in _walk(_expressions(stmt)))
        return {**env, INPUT_WIDTH: self.shape(self.current).c} if reads else env

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
            if stmt.index is not None:
                self.check_name(stmt.index.name, stmt.index.span, scope, env, what="loop index")
            for copy in range(count):
                self.stmts = outer + ((type(stmt).__name__.lower(), stmt.span, copy, count),)
                self.charge(stmt, stmt.span)
                local = env if stmt.index is None else {**env, stmt.index.name: copy}
                # A repeated residual unit, merge or group is a sequence of submodules, one per
                # copy, as a repeated block call is (a dense block's n layers).
                here = scope.unit(stmt, copy) if stmt.repeat is not None and isinstance(
                    stmt, (ast.Residual, ast.Merge, ast.Group)) else scope
                if isinstance(stmt, ast.Layer):
                    self.layer(stmt, local, scope)
                elif isinstance(stmt, ast.Call):
                    self.call(stmt, local, scope)
                elif isinstance(stmt, ast.Residual):
                    self.residual(stmt, local, here)
                elif isinstance(stmt, ast.Merge):
                    self.merge(stmt, local, here)
                else:
                    self.enter(stmt.span)
                    self.body(stmt.body, local, here.child(stmt.body))
                    self.depth -= 1
            if stmt.label is not None:
                self.define(stmt.label, scope, env)
        self.stmts = outer

    def define(self, label: ast.Label, scope: _Scope, env) -> None:
        """Bind ``label`` to the current value (after its pending activation)."""
        self.check_name(label.name, label.span, scope, env, what="name")
        self.flush()
        scope.values[label.name] = (self.current, label.span)

    def check_name(self, name: str, span: Span, scope: _Scope, env, what: str) -> None:
        previous = scope.lookup(name)
        if previous is not None:
            raise SpecError(f"name {name!r} is defined twice: expected a new name (it is defined at line "
                            f"{previous[1].line})", span).with_note("first defined here", previous[1])
        clash = ("a parameter or an enclosing loop's index" if name in env and what == "loop index" else
                 "a block" if name in self.program.blocks else
                 "a layer" if resolve_name(name) is not None or name.lower() == "identity" else
                 "the input width" if name == INPUT_WIDTH else None)
        if clash:
            raise SpecError(f"{what} {name!r} is already {clash}: expected another name", span)

    def repeats(self, stmt, env) -> int:
        if stmt.repeat is None:
            return 1
        count = evaluate(stmt.repeat, env)
        if type(count) is not int:
            count = as_int(count, "a repeat count", stmt.repeat.span)
        if count < 0:
            raise SpecError(f"expected a repeat count >= 0, found {count}", stmt.repeat.span)
        if count > self.limits.max_repeat:
            raise SpecError(f"repeat count {count} exceeds the limit of {self.limits.max_repeat} "
                            "(limit max_repeat)", stmt.repeat.span)
        return count

    def reference(self, layer: ast.Layer, scope: _Scope) -> bool:
        """A bare name: continue from that value (True), or not a value (False)."""
        if layer.width is not None or layer.stride is not None or layer.options:
            return False
        if layer.name.lower() == "identity":  # the current value itself (its implied ReLU still to come)
            return True
        found = scope.lookup(layer.name)
        if found is None:
            return False
        self.flush()
        self.current = found[0]
        return True

    def layer(self, layer: ast.Layer, env, scope: _Scope) -> None:
        if self.reference(layer, scope):
            return
        if layer.name in self.program.blocks and layer.width is None and layer.stride is None \
                and not layer.options:
            call = self.calls.get(id(layer))  # one call per statement, whatever its repeats
            if call is None:
                call = self.calls[id(layer)] = ast.Call(layer.name, (), (), layer.span, repeat=layer.repeat,
                                                        label=layer.label)
            return self.call(call, env, scope)
        if resolve_name(layer.name) is None:
            raise self.unknown(layer.name, layer.span, scope)
        op, attrs, act = layer_op(layer, self.with_width(layer, env), self.limits)
        if op in ACTIVATIONS:
            self.pending = None
        elif op not in BEFORE_ACTIVATION:
            self.flush()
        name = self.emit(op, attrs, layer.span, scope)
        if layer.label is not None and layer.repeat is None:  # ``stem = conv7-64/2``: the layer's name
            self.graph.graph.setdefault("modules", {})[name] = (scope.module, _attribute(layer.label.name),
                                                                 scope.blocks)
        if act == "relu":
            self.pending = (layer.span, scope, self.stmts)

    def call(self, call: ast.Call, env, scope: _Scope) -> None:
        block = self.program.blocks.get(call.name)
        if block is None:
            known = ", ".join(sorted(self.program.blocks)) or "none defined"
            raise SpecError(f"unknown block {call.name!r}{did_you_mean(call.name, self.program.blocks)} "
                            f"(blocks: {known}){_import_hint(call.name)}", call.span)
        if call.name in scope.calls:
            chain = " -> ".join(scope.calls + (call.name,))
            raise SpecError(f"block {call.name!r} calls itself ({chain})", call.span)
        if len(scope.calls) >= self.limits.max_call_depth:
            raise SpecError(f"blocks nested more than {self.limits.max_call_depth} deep (limit max_call_depth)",
                            call.span)
        self.charge(block, call.span)
        local = bind(block.params, call.args, call.kwargs, self.with_width(call, env), call.span,
                     f"block {block.name!r}")
        instance = self.instances[call.name] = self.instances.get(call.name, 0) + 1
        module = scope.submodule(call, self.stmts[-1][2] if self.stmts else 0)
        inner = _Scope(
            f"{scope.path}.{call.name}{instance}" if scope.path else f"{call.name}{instance}",
            _attribute(f"{call.name}{instance}_"),  # node names become attribute names
            scope.calls + (call.name,),
            body=block.body,
            module=module,
            blocks=scope.blocks + ((module, call.name),),
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
        self.body(res.body, env, scope.child(res.body))
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
        hint = self.branch_stride(x, branch)
        if isinstance(hint, str):  # the branch pools globally, or flattens: no stride follows it
            where = self.graph.nodes[hint]["span"]
            what = _WHOLE_MAP.get(self.graph.nodes[hint]["op"], self.graph.nodes[hint]["op"].value)
            raise SpecError(
                f"the residual branch reduces its {s_in} input to {s_out} by {what} (line {where.line}), "
                "which no shortcut can follow: expected a branch that keeps the size or shrinks it by a "
                "whole stride", span).with_note("the branch reduces the whole map here", where)
        stride = _subsampling(s_in, s_out, hint)
        if stride is None:
            raise SpecError(
                f"no shortcut can map the residual input {s_in} to the branch output {s_out}: "
                "expected the branch to keep the size or shrink it by a whole stride", span)
        if kind == "a":
            if s_out.c < s_in.c:
                raise SpecError(f"shortcut=A pads channels with zeros, so it cannot go from {s_in.c} to "
                                f"{s_out.c} channels: expected the branch to keep or grow them", span)
            return self.emit(Op.SHORTCUT_PAD, {"stride": stride, "out_channels": s_out.c}, span, scope, args=(x,))
        source = self.preactivated(x, branch) if kind == "preact" else x
        conv = {"out_channels": s_out.c, "kernel": (1, 1), "stride": (stride, stride), "padding": (0, 0),
                "groups": 1, "bias": False}
        projection = self.emit(Op.CONV, conv, span, scope, args=(source,), base="proj")
        if kind in ("p", "preact"):
            return projection
        return self.emit(Op.BATCHNORM, {"eps": 1e-5}, span, scope, base="proj_bn")

    def preactivated(self, x: str, branch: str) -> str:
        """Pre-activation ordering (He et al. 2016, "Identity Mappings"): where the shortcut
        projects, it reads the branch's leading BN and ReLU, shared by both paths."""
        first = [u for u in self.graph.users(x) if self.reaches(u, branch)]
        if len(first) == 1 and self.graph.nodes[first[0]]["op"] is Op.BATCHNORM:
            relu = [u for u in self.graph.users(first[0]) if self.graph.nodes[u]["op"] is Op.RELU]
            if len(relu) == 1:
                return relu[0]
        span = self.graph.nodes[first[0]]["span"] if first else self.graph.nodes[branch]["span"]
        raise SpecError("shortcut=preact shares the branch's leading bn; relu with the projection: expected "
                        "the branch to start with bn; relu", span)

    def reaches(self, node: str, target: str) -> bool:
        return node == target or nx.has_path(self.graph, node, target)

    def branch_stride(self, x: str, branch: str) -> int | str | None:
        """The stride of a residual branch from ``x`` to ``branch``: the product of the strides on
        its path (through a merge, its largest input's); the name of the node that pools the
        whole map or flattens it, if one does; None if the path has no single stride."""
        sh = sw = 1
        node = branch
        while node != x:
            data = self.graph.nodes[node]
            if not data["args"]:  # the branch reads a value from before the unit
                return None
            step = TABLE[data["op"]].subsampling(data["attrs"])
            if step is None:  # no single stride: global pooling, an fc
                return node if self.shape(data["args"][0]).is_map else None
            sh, sw = sh * step[0], sw * step[1]
            node = max(data["args"], key=lambda a: self.shape(a).h * self.shape(a).w)
        return sh if sh == sw else None

    def merge(self, merge: ast.Merge, env, scope: _Scope) -> None:
        """Branches from one input, merged: concat along channels, add, or multiply (a Cx1x1 gate
        broadcast over the map)."""
        options = {o.name: o for o in merge.options}
        allowed = ("act",) if merge.kind == "add" else ()
        for name, option in options.items():
            if name not in allowed:
                raise SpecError(f"{merge.kind} has no option {name!r} (its options: "
                                f"{', '.join(allowed) or 'none'})", option.span)
        act = _choice(options.get("act"), env, "relu", ("relu", "none"))
        self.flush()
        x = self.current
        self.enter(merge.span)
        outputs: list[str] = []
        for branch in merge.branches:
            self.current, self.pending = x, None
            self.body(branch, env, scope.child(branch))
            if merge.kind == "add":
                self.pending = None  # the branch ends raw; the ReLU follows the addition
            else:
                self.flush()
            if self.current in outputs:
                raise SpecError(f"{merge.kind} takes the same value from two branches: expected each branch "
                                "to end in its own value", branch[-1].span)
            outputs.append(self.current)
        self.depth -= 1
        if len(outputs) == 1:
            self.current = outputs[0]
            return
        if merge.kind == "add":
            result = outputs[0]
            for other in outputs[1:]:
                result = self.emit(Op.ADD, {}, merge.span, scope, args=(result, other))
            if act == "relu":
                self.emit(Op.RELU, {}, merge.span, scope)
            return
        if merge.kind == "multiply" and len(outputs) != 2:
            raise SpecError(f"multiply takes two branches (a map, then its gate), found {len(outputs)}", merge.span)
        try:
            if merge.kind == "concat":
                self.emit(Op.CONCAT, {"inputs": len(outputs)}, merge.span, scope, args=tuple(outputs))
            else:
                self.emit(Op.MULTIPLY, {}, merge.span, scope, args=tuple(outputs))
        except SpecError:  # a shape mismatch: say it at the branch that disagrees
            shapes = [self.shape(o) for o in outputs]
            if merge.kind == "concat":
                index, wrong = concat_mismatch(shapes) or (None, None)
                message = f"concat cannot join branch {(index or 0) + 1} to branch 1: {wrong}"
            else:
                index, wrong = 1, multiply_mismatch(shapes)
                message = f"multiply: {wrong}"
            if wrong is None:  # not the shapes (a limit): as raised
                raise
            raise SpecError(message, merge.branches[index][0].span).with_note(f"in this {merge.kind}",
                                                                              merge.span) from None

    def unknown(self, name: str, span: Span, scope: _Scope) -> SpecError:
        """The error for a name that is no layer, block or value here."""
        later = scope.defined_later(name)
        if later is not None:
            return SpecError(f"name {name!r} is used before it is defined (at line {later.line}): expected a "
                             "name defined above", span).with_note(f"{name!r} is defined here", later)
        inside = scope.defined_inside(name)
        if inside is not None:
            return SpecError(f"name {name!r} is not visible here: it is defined inside a branch, group or residual "
                             f"body (line {inside.line}); expected a name defined in this body or around it",
                             span).with_note(f"{name!r} is defined here", inside)
        known = [*layer_names(), *self.program.blocks, *scope.visible()]
        values = ", ".join(scope.visible()) or "none"
        return SpecError(f"unknown layer {name!r}{did_you_mean(name, known)}: expected a layer, a block or a "
                         f"named value (values here: {values}){_import_hint(name)}", span)


# Ops that reduce the whole map at once, and how an error names them.
_WHOLE_MAP = {Op.GLOBAL_AVGPOOL: "global average pooling", Op.LINEAR: "an fc layer"}


def _labels(stmts) -> list[ast.Label]:
    """The names defined by ``stmts`` (not inside their bodies)."""
    return [s.label for s in stmts if s.label is not None]


def _import_hint(name: str) -> str:
    library = bundled_library_of(name)
    return f'; it is a block of the bundled library {library}: add import "{library}"' if library else ""


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
    if isinstance(node, (ast.Group, ast.Merge)):
        return [e for e in found if e is not None]
    if isinstance(node, ast.Layer):
        found += [node.width, node.stride]
    if isinstance(node, ast.Call):
        found += list(node.args) + [o.value for o in node.kwargs]
    found += [o.value for o in getattr(node, "options", ())]
    return [e for e in found if e is not None]


def _walk(exprs):
    """Every node of the expressions ``exprs``, outermost first."""
    stack = list(exprs)
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, (ast.BinOp, ast.Compare)):
            stack += [e.left, e.right]
        elif isinstance(e, ast.Neg):
            stack.append(e.operand)
        elif isinstance(e, ast.Braced):
            stack.append(e.expr)
        elif isinstance(e, (ast.ListOf, ast.Func)):
            stack += e.items if isinstance(e, ast.ListOf) else e.args
        elif isinstance(e, ast.Index):
            stack += [e.target, e.index]
        elif isinstance(e, ast.Cond):
            stack += [e.then, e.test, e.other]


def _size(expr) -> int:
    """The number of nodes of an expression."""
    return sum(1 for _ in _walk([expr]))


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


def _check_override(key: str, value, span: Span, depth: int = 0) -> None:
    if isinstance(value, (list, tuple)) and depth < 4 and len(value) <= 1024:
        for item in value:
            _check_override(key, item, span, depth + 1)
        return
    if not isinstance(value, (bool, int, float, str)):
        raise SpecError(f"parameter {key!r} must be a number, a bool, a word or a short list of those, "
                        f"found {value!r}", span)
    if not isinstance(value, (bool, str)) and not abs(value) <= 2**62:
        raise SpecError(f"parameter {key!r} is out of range", span)


def build(program: Program, net: ast.NetDef, overrides: dict[str, Value], input_shape: Shape | None,
          limits: Limits) -> ArchGraph:
    """Expand ``net`` with parameter ``overrides`` into a shape-checked graph."""
    names = {p.name for p in net.params}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SpecError(f"net {net.name!r} has no parameter {unknown[0]!r} (its parameters: "
                        f"{', '.join(p.name for p in net.params) or 'none'})", net.span)
    for key, value in overrides.items():
        _check_override(key, value, net.span)
    values = {}
    for param in net.params:
        if param.name in overrides:
            value = overrides[param.name]
            values[param.name] = tuple(value) if isinstance(value, list) else value
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
    top = _Scope(body=net.body)
    graph.graph["input"] = builder.emit(Op.INPUT, {"shape": shape}, net.span, top, args=())
    builder.body(net.body, values, top)
    builder.pending = None  # the net's last weighted layer keeps its raw output
    if builder.current == graph.graph["input"]:
        raise SpecError(f"net {net.name!r} has no layers", net.span)
    graph.graph["output"] = builder.current
    for name in graph.nodes:
        if name != builder.current and graph.out_degree(name) == 0:
            raise SpecError("the output of this statement is never used: expected every value to flow into "
                            "the net's output (name it and use the name, or remove it)", graph.nodes[name]["span"])
    if net.input_shape is not None and input_shape is not None and input_shape != net.input_shape:
        _warn_resized_fc(graph, build(program, net, overrides, None, limits))
    return graph


def _warn_resized_fc(graph: ArchGraph, declared: ArchGraph) -> None:
    """An fc whose input differs from the one it has at the spec's declared input: its weights
    are not those the spec describes (VGG's fc6 at 256x256 has 18432 inputs, not 25088)."""
    for name, data in graph.nodes(data=True):
        if data["op"] is not Op.LINEAR or name not in declared or declared.nodes[name]["op"] is not Op.LINEAR:
            continue
        here, there = graph.shape(data["args"][0]), declared.shape(declared.nodes[name]["args"][0])
        if here.numel != there.numel:
            warnings.warn(SpecWarning(
                f"fc-{data['attrs']['out_features']} receives {here.numel} features ({here}) at input "
                f"{graph.input_shape}, but {there.numel} ({there}) at the spec's declared input "
                f"{declared.input_shape}: its weights differ from the spec's", data["span"]), stacklevel=2)
