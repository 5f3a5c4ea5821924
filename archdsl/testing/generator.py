"""Random valid architectures for property tests: a generator that writes spec text in
varied styles together with its own model of the shapes (PyTorch's formulas), so a test can
compare the compiler with an independent expectation."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st

import archdsl
from archdsl.ir import ArchGraph, Shape

#: The layer kinds the generator writes.
KINDS = ("conv", "maxpool", "avgpool", "gap", "lrn", "bn", "relu", "dropout", "softmax", "fc")
#: Residual shortcut options (``P``: a projection without BN; ``none``: no shortcut;
#: ``identity``: only where shapes match).
SHORTCUTS = ("A", "B", "C", "P", "none", "identity")

_MAP_ONLY = {"conv", "maxpool", "avgpool", "gap", "lrn"}
# How often each kind is drawn, relative to the others (convs most, as in the nets written).
_WEIGHTS = {"conv": 6, "bn": 2, "maxpool": 2}

ShapeT = tuple  # (C, H, W) for a map, (F,) for a vector


@dataclass(frozen=True)
class Config:
    """What the generator may produce. Defaults keep a net cheap to run on a CPU."""

    max_layers: int = 6  # statements in one body
    max_depth: int = 2  # residual units and block calls nested in one another
    max_width: int = 16  # channels of a conv, features of an fc
    min_size: int = 1  # input height and width
    max_size: int = 32
    max_channels: int = 4  # input channels
    kinds: tuple[str, ...] = KINDS
    allow_residual: bool = True
    allow_blocks: bool = True
    allow_params: bool = True  # net and block parameters used as {c}, {2*c}, x{n}
    allow_repeat: bool = True
    shortcuts: tuple[str, ...] = SHORTCUTS
    styled: bool = True  # vary the surface syntax: separators, comments, aliases, spacing


@dataclass(frozen=True)
class GeneratedNet:
    """A generated spec and what the generator's own shape model expects of it."""

    text: str
    input_shape: Shape
    output_shape: Shape
    residual_units: int  # how many residual units the text expands to (counting repeats)
    #: for each shortcut that is not the identity, in the order the units are expanded: the
    #: stride of its branch (None where that stride does not give the branch's size) and the
    #: kind ("a": zero-padding, "b" or "c": projection)
    shortcut_strides: tuple[tuple[int | None, str], ...] = ()

    def graph(self, **kwargs) -> ArchGraph:
        return archdsl.loads(self.text, **kwargs)


# -- the model: statements that know their shapes and how to be written ----------------------
def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    # torch.nn.Conv2d / MaxPool2d (dilation 1, floor): (size + 2 pad - kernel) // stride + 1
    return (size + 2 * pad - kernel) // stride + 1


def _strides_between(x: ShapeT, y: ShapeT) -> list[int]:
    """Every stride s with ceil(h / s) == h' and ceil(w / s) == w' (a subsampling shortcut)."""
    if len(x) != 3 or len(y) != 3:
        return []
    return [s for s in range(1, max(x[1], x[2]) + 2)
            if math.ceil(x[1] / s) == y[1] and math.ceil(x[2] / s) == y[2]]


@dataclass
class _Layer:
    kind: str
    name: str  # as written: conv3, conv1x3, conv, pool, LRN, soft-max, ...
    width: int | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    pad: tuple[int, int] = (0, 0)
    groups: int = 1
    stride_style: str = "none"  # none | slash | option
    options: tuple[tuple[str, Any], ...] = ()  # written as name=value, besides the stride
    use_param: bool = False
    repeat: int = 1

    def once(self, shape: ShapeT) -> ShapeT | None:
        k = self.kind
        if k in _MAP_ONLY and len(shape) != 3:
            return None
        if k == "conv":
            c, h, w = shape
            if c % self.groups or self.width % self.groups:
                return None
            oh = _conv_out(h, self.kernel[0], self.stride, self.pad[0])
            ow = _conv_out(w, self.kernel[1], self.stride, self.pad[1])
            return (self.width, oh, ow) if oh >= 1 and ow >= 1 else None
        if k in ("maxpool", "avgpool"):
            c, h, w = shape
            if 2 * self.pad[0] > self.kernel[0] or 2 * self.pad[1] > self.kernel[1]:
                return None
            oh = _conv_out(h, self.kernel[0], self.stride, self.pad[0])
            ow = _conv_out(w, self.kernel[1], self.stride, self.pad[1])
            return (c, oh, ow) if oh >= 1 and ow >= 1 else None
        if k == "gap":
            return (shape[0], 1, 1)
        if k == "fc":
            return (self.width,)
        return shape  # lrn, bn, relu, dropout, softmax

    def stride_product(self) -> int | None:
        if self.kind in ("conv", "maxpool", "avgpool"):
            return self.stride
        return None if self.kind in ("gap", "fc") else 1


@dataclass
class _Residual:
    body: list
    shortcut: str | None  # None: not written (B)
    act: str | None = None  # None: not written (relu)
    repeat: int = 1
    end_comment: str | None = None


@dataclass
class _BlockDef:
    name: str
    params: list[tuple[str, int, bool]]  # (name, value, written as the default)
    body: list


@dataclass
class _Call:
    block: _BlockDef
    arg_style: list[str]  # per parameter: positional | keyword | default
    repeat: int = 1


@dataclass
class _Written:
    """Layout choices for one statement."""

    sep: str = "\n"
    comment: str | None = None
    spaced: bool = False


class _Model:
    """Runs the generator's shape model over statements (with repeats)."""

    def __init__(self):
        self.residuals = 0
        self.strides: list[tuple[int, str]] = []

    def run(self, stmts, shape: ShapeT) -> ShapeT | None:
        for stmt, _ in stmts:
            shape = self.stmt(stmt, shape)
            if shape is None:
                return None
        return shape

    def stmt(self, stmt, shape: ShapeT) -> ShapeT | None:
        for _ in range(stmt.repeat):
            if isinstance(stmt, _Layer):
                shape = stmt.once(shape)
            elif isinstance(stmt, _Call):
                shape = self.run(stmt.block.body, shape)
            else:
                shape = self.residual(stmt, shape)
            if shape is None:
                return None
        return shape

    def residual(self, res: _Residual, shape: ShapeT) -> ShapeT | None:
        out = self.run(res.body, shape)
        if out is None:
            return None
        self.residuals += 1
        kind = (res.shortcut or "B").lower()
        if kind == "none":
            return out
        if len(shape) != 3 or len(out) != 3:
            return None
        if out == shape and kind != "c":
            return out
        if kind == "identity":
            return None
        strides = _strides_between(shape, out)
        if not strides or (kind == "a" and out[0] < shape[0]):
            return None
        branch = _branch_stride(res.body)
        if branch is None:  # the branch pools globally or flattens: no shortcut follows it
            return None
        self.strides.append((branch if branch in strides else None, kind))
        return out


def _branch_stride(stmts) -> int | None:
    total = 1
    for stmt, _ in stmts:
        for _ in range(stmt.repeat):
            if isinstance(stmt, _Layer):
                s = stmt.stride_product()
            elif isinstance(stmt, _Call):
                s = _branch_stride(stmt.block.body)
            else:
                s = _branch_stride(stmt.body)
            if s is None:
                return None
            total *= s
    return total


# -- drawing ---------------------------------------------------------------------------------
class _Drawer:
    def __init__(self, draw, cfg: Config):
        self.draw = draw
        self.cfg = cfg
        self.blocks: list[_BlockDef] = []

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, max(lo, hi)))

    def choice(self, options):
        return self.draw(st.sampled_from(list(options)))

    def flag(self, p_true: float = 0.5) -> bool:
        # booleans with a bias, shrinking towards False
        return self.draw(st.integers(0, 99)) < int(p_true * 100)

    def width(self) -> int:
        return self.integer(1, self.cfg.max_width)

    # a body: statements with their layout, and the shape after them
    def body(self, shape: ShapeT, depth: int) -> tuple[list, ShapeT]:
        stmts: list = []
        for _ in range(self.integer(1, self.cfg.max_layers)):
            drawn = self.stmt(shape, depth)
            if drawn is None:
                continue
            stmt, after = drawn
            stmts.append((stmt, self.layout()))
            shape = after
        if not _emits(stmts):  # every draw failed, or all repeat x0: a ReLU always fits
            stmts.append((_Layer("relu", "relu"), self.layout()))
        return stmts, shape

    def layout(self) -> _Written:
        if not self.cfg.styled:
            return _Written()
        sep = self.choice(["\n", "\n", "; ", ";\n", "\n\n"])
        comment = None
        if "\n" in sep and self.flag(0.15):
            comment = "# " + self.draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12))
        return _Written(sep, comment, self.flag(0.1))

    def stmt(self, shape: ShapeT, depth: int):
        kinds = list(self.cfg.kinds)
        if len(shape) != 3:
            kinds = [k for k in kinds if k not in _MAP_ONLY]
        options = [k for k in kinds for _ in range(_WEIGHTS.get(k, 1))]
        if depth > 0 and len(shape) == 3 and self.cfg.allow_residual:
            options += ["residual"] * 4
        if depth > 0 and self.cfg.allow_blocks:
            options += ["call"] * 2
        if not options:
            return None
        kind = self.choice(options)
        model = _Model()
        if kind == "residual":
            stmt = self.residual(shape, depth)
        elif kind == "call":
            stmt = self.call(shape, depth)
        else:
            stmt = self.layer(kind, shape)
        if stmt is None or model.stmt(stmt, shape) is None:
            return None
        if self.cfg.allow_repeat and self.flag(0.2):
            stmt.repeat = self.integer(0 if self.flag(0.1) else 2, 3)
            if model.stmt(stmt, shape) is None:
                stmt.repeat = 1
        after = model.stmt(stmt, shape)
        return stmt, after

    def layer(self, kind: str, shape: ShapeT) -> _Layer | None:
        styled = self.cfg.styled
        if kind == "conv":
            c, h, w = shape
            kh = self.choice([1, 1, 2, 3, 3, 5])
            kw = kh if not self.flag(0.15) else self.choice([1, 2, 3])
            stride = self.choice([1, 1, 1, 2, 2, 3])
            explicit_pad = self.flag(0.3)
            pad = (self.integer(0, 2),) * 2 if explicit_pad else (kh // 2, kw // 2)
            if _conv_out(h, kh, stride, pad[0]) < 1 or _conv_out(w, kw, stride, pad[1]) < 1:
                kh = kw = 1  # a 1x1 kernel always fits
                if not explicit_pad:
                    pad = (0, 0)
            out = self.width()
            common = [g for g in range(1, min(c, out) + 1) if c % g == 0 and out % g == 0]
            groups = self.choice(common) if self.flag(0.2) else 1
            opts: list[tuple[str, Any]] = []
            if explicit_pad:
                opts.append(("pad", pad[0]))
            if groups != 1:
                opts.append(("groups", groups))
            if self.flag(0.3):
                opts.append(("bias", self.choice(["false", "true"])))
            if self.flag(0.2):
                opts.append(("act", self.choice(["none", "relu"])))
            if kh == kw and styled and self.flag(0.1):
                name = "conv"
                opts.append(("k", kh))
            elif kh == kw and not (styled and self.flag(0.1)):
                name = f"conv{kh}"
            else:
                name = f"conv{kh}x{kw}"
            style = self.choice(["slash", "option"]) if stride != 1 or self.flag(0.1) else "none"
            return _Layer("conv", name, out, (kh, kw), stride, pad, groups, style, tuple(self.shuffled(opts)),
                          self.flag(0.3))
        if kind in ("maxpool", "avgpool"):
            c, h, w = shape
            k = self.choice([1, 2, 2, 3])
            kw = k if not self.flag(0.1) else self.choice([1, 2, 3])
            default_stride = self.flag(0.5)
            stride = k if default_stride else self.choice([1, 2, 3])
            pad = self.integer(0, min(k, kw) // 2) if self.flag(0.3) else 0
            if _conv_out(h, k, stride, pad) < 1 or _conv_out(w, kw, stride, pad) < 1:
                k = kw = stride = 1
                pad = 0
                default_stride = True
            opts = [("pad", pad)] if pad else []
            if k == kw == 2 and default_stride and self.flag(0.5):
                name = "pool" if kind == "maxpool" and styled and self.flag(0.3) else kind
            elif k == kw:
                name = f"{kind}{k}"
            else:
                name = f"{kind}{k}x{kw}"
            style = "none" if default_stride else self.choice(["slash", "option"])
            return _Layer(kind, name, None, (k, kw), stride, (pad, pad), 1, style, tuple(opts))
        if kind == "fc":
            opts = []
            if self.flag(0.2):
                opts.append(("bias", "false"))
            if self.flag(0.2):
                opts.append(("act", "none"))
            name = "linear" if styled and self.flag(0.1) else "fc"
            return _Layer("fc", name, self.width(), options=tuple(opts), use_param=self.flag(0.3))
        if kind == "lrn":
            opts = []
            if self.flag(0.3):
                opts.append(("size", self.integer(1, 7)))
            if self.flag(0.2):
                opts.append(("alpha", self.choice([1e-4, 0.001, 0.5])))
            if self.flag(0.2):
                opts.append(("beta", self.choice([0.75, 0.5, 1.0])))
            if self.flag(0.2):
                opts.append(("k", self.choice([2.0, 1, 0.5])))
            if self.flag(0.3):
                opts.append(("mode", self.choice(["sum", "avg"])))
            return _Layer("lrn", self.choice(["LRN", "lrn"]) if styled else "lrn", options=tuple(self.shuffled(opts)))
        if kind == "bn":
            opts = [("eps", self.choice([1e-5, 0.001]))] if self.flag(0.2) else []
            return _Layer("bn", "batchnorm" if styled and self.flag(0.1) else "bn", options=tuple(opts))
        if kind == "dropout":
            opts = [("p", self.choice([0.1, 0.5, 0]))] if self.flag(0.3) else []
            return _Layer("dropout", "dropout", options=tuple(opts))
        if kind == "softmax":
            return _Layer("softmax", self.choice(["softmax", "soft-max", "Softmax"]) if styled else "softmax")
        if kind == "gap":
            return _Layer("gap", "globalavgpool" if styled and self.flag(0.1) else "gap")
        return _Layer(kind, kind)

    def shuffled(self, items: list) -> list:
        return self.draw(st.permutations(items)) if len(items) > 1 and self.cfg.styled else items

    def residual(self, shape: ShapeT, depth: int) -> _Residual | None:
        body, out = self.body(shape, depth - 1)
        candidates = []
        for kind in self.cfg.shortcuts:
            trial = _Residual(body, kind)
            if _Model().residual(trial, shape) is not None:
                candidates.append(kind)
        if not candidates:
            return None
        kind = self.choice(candidates)
        written = None if kind == "B" and self.flag(0.5) else kind
        if written and self.cfg.styled and self.flag(0.2):
            written = written.lower() if len(written) == 1 else written
        act = self.choice([None, "none", "relu"]) if self.flag(0.3) else None
        comment = "# end" if self.cfg.styled and self.flag(0.1) else None
        return _Residual(body, written, act, 1, comment)

    def call(self, shape: ShapeT, depth: int) -> _Call | None:
        body, _ = self.body(shape, depth - 1)
        widths = sorted({s.width for s, _ in _walk(body) if isinstance(s, _Layer) and s.width})
        params = []
        if widths and self.cfg.allow_params:
            params.append(("c", self.choice(widths), self.flag(0.5)))
        if self.flag(0.2):
            params.append(("unused", self.integer(0, 9), True))
        block = _BlockDef(f"blk{len(self.blocks)}", params, body)
        self.blocks.append(block)
        styles = [self.choice(["positional", "keyword"] + (["default"] if written else []))
                  for _, _, written in params]
        # a keyword argument cannot come before a positional one
        for i in range(1, len(styles)):
            if styles[i] == "positional" and styles[i - 1] != "positional":
                styles[i] = "keyword"
        return _Call(block, styles)

    def net(self) -> GeneratedNet:
        cfg = self.cfg
        c = self.integer(1, cfg.max_channels)
        h = self.integer(cfg.min_size, cfg.max_size)
        w = h if self.flag(0.7) else self.integer(cfg.min_size, cfg.max_size)
        body, out = self.body((c, h, w), cfg.max_depth)
        model = _Model()
        expected = model.run(body, (c, h, w))
        assert expected == out, (expected, out)
        params: dict[str, int] = {}
        if cfg.allow_params:
            widths = sorted({s.width for s, _ in _walk(body) if isinstance(s, _Layer) and s.width})
            if widths and self.flag(0.5):
                params["w"] = self.choice(widths)
            repeats = sorted({s.repeat for s, _ in _walk(body) if s.repeat > 1})
            if repeats and self.flag(0.5):
                params["n"] = self.choice(repeats)
        text = _render_file(self.blocks, body, params, (c, h, w), self)
        return GeneratedNet(text, Shape.of(c, h, w), Shape.of(*out), model.residuals, tuple(model.strides))


def _emits(stmts) -> bool:
    """Whether the statements expand to at least one op."""
    for stmt, _ in stmts:
        if stmt.repeat == 0:
            continue
        if isinstance(stmt, _Call):
            if _emits(stmt.block.body):
                return True
        else:
            return True
    return False


def _walk(stmts):
    for stmt, written in stmts:
        yield stmt, written
        if isinstance(stmt, _Residual):
            yield from _walk(stmt.body)


# -- writing ---------------------------------------------------------------------------------
def _render_file(blocks, body, params, shape, drawer: _Drawer) -> str:
    styled = drawer.cfg.styled
    parts = []
    if styled and drawer.flag(0.2):
        parts.append("# generated net\n")
    for block in blocks:
        env = {name: value for name, value, _ in block.params}
        plist = ", ".join(f"{n}={v}" if written else n for n, v, written in block.params)
        parts.append(f"block {block.name}({plist}) {{\n{_render_body(block.body, env, 1)}}}\n")
    header = "net gen"
    if params:
        header += "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    elif styled and drawer.flag(0.2):
        header += "()"
    header += f" : {shape[0]}x{shape[1]}x{shape[2]}"
    parts.append(f"{header} {{\n{_render_body(body, dict(params), 1)}}}\n")
    return ("\n" if styled and drawer.flag(0.5) else "").join(parts)


def _render_body(stmts, env: dict[str, int], depth: int) -> str:
    indent = "    " * depth
    out = []
    for i, (stmt, written) in enumerate(stmts):
        text = _render_stmt(stmt, env, depth, written.spaced)
        last = i == len(stmts) - 1
        sep = "\n" if last else written.sep
        if written.comment and "\n" in sep:
            sep = f"  {written.comment}{sep}"
        start = indent if i == 0 or "\n" in stmts[i - 1][1].sep else ""
        out.append(start + text + sep)
    return "".join(out)


def _number(value, env: dict[str, int], use_param: bool, names=("w", "c")) -> str:
    if use_param:
        for name in names:
            if name in env and env[name] == value:
                return f"{{{name}}}"
            if name in env and env[name] * 2 == value:
                return f"{{2*{name}}}"
            if name in env and env[name] + 1 == value:
                return f"{{{name}+1}}"
    return str(value)


def _value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _render_stmt(stmt, env: dict[str, int], depth: int, spaced: bool) -> str:
    if isinstance(stmt, _Layer):
        text = stmt.name
        if stmt.width is not None:
            text += ("- " if spaced else "-") + _number(stmt.width, env, stmt.use_param)
        if stmt.stride_style == "slash":
            text += ("/ " if spaced else "/") + str(stmt.stride)
        opts = list(stmt.options)
        if stmt.stride_style == "option":
            opts.append(("stride", stmt.stride))
        text += "".join(f" {k}={_value(v)}" for k, v in opts)
    elif isinstance(stmt, _Call):
        args = []
        for (name, value, _), style in zip(stmt.block.params, stmt.arg_style):
            if style == "positional":
                args.append(str(value))
            elif style == "keyword":
                args.append(f"{name}={value}")
        text = f"{stmt.block.name}({', '.join(args)})"
    else:
        head = "residual"
        if stmt.shortcut is not None:
            head += f" shortcut={stmt.shortcut}"
        if stmt.act is not None:
            head += f" act={stmt.act}"
        inner = _render_body(stmt.body, env, depth + 1)
        text = f"{head} {{\n{inner}{'    ' * depth}}}"
    if stmt.repeat != 1:
        count = "{n}" if env.get("n") == stmt.repeat else str(stmt.repeat)
        text += f" x{count}"
    return text


# -- strategies ------------------------------------------------------------------------------
def nets(config: Config | None = None, **knobs) -> st.SearchStrategy[GeneratedNet]:
    """Random valid networks with what the generator expects of them (:class:`GeneratedNet`).

    Knobs are the fields of :class:`Config`: ``max_layers``, ``max_depth`` (nesting of residual
    units and block calls), ``max_width``, ``min_size``/``max_size`` (input height and width),
    ``max_channels``, ``kinds`` (layer kinds to use), ``allow_residual``, ``allow_blocks``,
    ``allow_params``, ``allow_repeat``, ``shortcuts``, ``styled``.
    """
    cfg = replace(config or Config(), **knobs)
    unknown = set(cfg.kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown layer kinds {sorted(unknown)}; known: {KINDS}")

    @st.composite
    def build(draw):
        return _Drawer(draw, cfg).net()

    return build()


def specs(config: Config | None = None, **knobs) -> st.SearchStrategy[str]:
    """Spec text of random valid networks (see :func:`nets` for the knobs)."""
    return nets(config, **knobs).map(lambda n: n.text)


def graphs(config: Config | None = None, **knobs) -> st.SearchStrategy[ArchGraph]:
    """Checked, analysed graphs of random valid networks (see :func:`nets` for the knobs)."""
    return nets(config, **knobs).map(lambda n: archdsl.loads(n.text))
