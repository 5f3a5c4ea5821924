"""Random DAG-shaped specs for property tests: branches merged by concat, add and multiply,
named values used later, repeated groups and loop indices, and the ops of the nets built that
way (ceil-mode and adaptive pooling, channel shuffle, the gates' activations).

:func:`dag_specs` is a Hypothesis strategy of :class:`GeneratedDag` (the spec text and the
output shape a small shape model predicts). Every spec it draws is valid by construction, so
a test can hold the compiler to it: the spec loads, and :func:`archdsl.testing.check_lowering`
finds every inferred shape, the parameters and the MACs equal to what PyTorch's module reports.

    from hypothesis import given
    from archdsl.testing import check_lowering
    from archdsl.testing.dags import dag_specs

    @given(dag_specs())
    def test_dags_lower_as_analysed(dag):
        check_lowering(dag.graph())
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

import archdsl
from archdsl.ir import ArchGraph

__all__ = ["GeneratedDag", "dag_specs"]

Map = tuple[int, int, int]  # (C, H, W)

_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hardsigmoid", "silu", "hardswish")


@dataclass(frozen=True)
class GeneratedDag:
    """A drawn spec: its text, the output shape the generator's model expects, and the merges
    it holds by kind (``{"concat": 2, "add": 1, ...}``)."""

    text: str
    output: tuple[int, ...]
    merges: dict[str, int]

    def graph(self, **kwargs) -> ArchGraph:
        return archdsl.loads(self.text, **kwargs)


def _same(size: int, stride: int) -> int:
    """A "same"-padded window's output size at ``stride``: odd kernel K, pad K//2."""
    return (size - 1) // stride + 1


def _ceil_mode(size: int, kernel: int, stride: int) -> int:
    """An unpadded window's output size with ``ceil=true``, by PyTorch's documented rule: the
    division rounded up, less one where the last window would start past the input."""
    out = -(-(size - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= size else out


class _Drawer:
    """Draws statements while tracking the current shape and the named values in scope."""

    def __init__(self, draw, max_width: int):
        self.draw = draw
        self.max_width = max_width
        self.names: dict[str, Map] = {}
        self.merges: dict[str, int] = {}
        self.counter = 0

    def width(self) -> int:
        return self.draw(st.integers(1, self.max_width))

    def fresh(self) -> str:
        self.counter += 1
        return f"v{self.counter}"

    # -- chains (shape-changing only in channels, or by one "same" window at a stride) ------
    def conv(self, shape: Map, stride: int = 1, width: int | None = None, end_raw: bool = False) -> tuple[str, Map]:
        c, h, w = shape
        k = self.draw(st.sampled_from((1, 3)))
        out = width or self.width()
        groups = 1
        if out % 2 == 0 and c % 2 == 0 and self.draw(st.booleans()):
            groups = 2
        text = f"conv{k}-{out}" + (f"/{stride}" if stride != 1 else "")
        if groups != 1:
            text += " groups=2" if self.draw(st.booleans()) else " groups={in//(in//2)}"
        if self.draw(st.booleans()):
            text += " bias=false"
        if end_raw or self.draw(st.integers(0, 4)) == 0:
            text += " act=none"
        return text, (out, _same(h, stride), _same(w, stride))

    def pointwise(self, shape: Map) -> str:
        return self.draw(st.sampled_from(("bn", "bn eps=0.001", *_ACTIVATIONS, "dropout p=0.1")))

    def chain(self, shape: Map, stride: int, width: int | None, depth: int, end_raw: bool = False) -> tuple[list[str], Map]:
        """Statements from ``shape`` that apply ``stride`` once and end at ``width`` channels."""
        stmts: list[str] = []
        n = self.draw(st.integers(0, 2))
        for _ in range(n):  # stride-1 prefix
            if self.draw(st.booleans()):
                text, shape = self.conv(shape)
                stmts.append(text)
            else:
                stmts.append(self.pointwise(shape))
        if stride != 1 and width is None and self.draw(st.booleans()):
            stmts.append(f"maxpool3/{stride} pad=1")
            shape = (shape[0], _same(shape[1], stride), _same(shape[2], stride))
        elif stride != 1 or width is not None or not stmts:
            text, shape = self.conv(shape, stride, width, end_raw)
            stmts.append(text)
        if depth > 0 and self.draw(st.integers(0, 3)) == 0:  # a merge in a branch: keeps the map's size
            inner, shape = self.stmt(shape, depth - 1, keep_size=True)
            stmts.append(inner)
        if width is not None and shape[0] != width:  # the nested statement changed the width back
            text, shape = self.conv(shape, 1, width, end_raw)
            stmts.append(text)
        return stmts, shape

    # -- statements ---------------------------------------------------------------------------
    def stmt(self, shape: Map, depth: int, keep_size: bool = False) -> tuple[str, Map]:
        """One statement from ``shape``; with ``keep_size``, one that keeps the map's height and width."""
        kinds = ["conv", "pointwise", "group", "loop", "shuffle"]
        if not keep_size and min(shape[1:]) >= 3:
            kinds.append("pool")
        if depth > 0:
            kinds += ["concat", "concat", "add", "multiply", "name"]
        kind = self.draw(st.sampled_from(kinds))
        shrink = not keep_size and min(shape[1:]) >= 4
        if kind == "conv":
            stride = 2 if shrink and self.draw(st.integers(0, 3)) == 0 else 1
            return self.conv(shape, stride)
        if kind == "pointwise":
            return self.pointwise(shape), shape
        if kind == "group":  # the first copy maps C to W channels, the others W to W
            width, times = self.width(), self.draw(st.integers(0, 2))
            k = self.draw(st.sampled_from((1, 3)))
            return "{ " + f"conv{k}-{width}; bn" + " }" + f" x{times}", (width, *shape[1:]) if times else shape
        if kind == "shuffle":
            return self.shuffle(shape), shape
        if kind == "pool":
            return self.pool(shape)
        if kind == "loop":  # widths grow with the copy's number
            base, times = self.width(), self.draw(st.integers(1, 3))
            return f"conv1-{{{base}+i}} x{times} for i", (base + times - 1, shape[1], shape[2])
        if kind == "concat":
            return self.concat(shape, depth, keep_size)
        if kind == "add":
            return self.add(shape, depth)
        if kind == "multiply":
            return self.multiply(shape)
        return self.named(shape, depth)

    def shuffle(self, shape: Map) -> str:
        """ShuffleNet's channel shuffle across a number of groups that divides the channels;
        where only 1 does (1 or a prime number of channels), a pointwise op instead."""
        groups = [g for g in range(2, shape[0] + 1) if shape[0] % g == 0 and g <= 4]
        if not groups:
            return self.pointwise(shape)
        return f"shuffle groups={self.draw(st.sampled_from(groups))}"

    def pool(self, shape: Map) -> tuple[str, Map]:
        """Ceil-mode max or average pooling (GoogLeNet's, SqueezeNet's), or adaptive average
        pooling to a fixed size (torchvision's VGG before its classifier)."""
        c, h, w = shape
        if self.draw(st.booleans()):
            size = self.draw(st.integers(1, min(h, w, 3)))
            return f"adaptive_avgpool size={size}", (c, size, size)
        kind, kernel, stride = self.draw(st.sampled_from((("maxpool", 3, 2), ("avgpool", 2, 2), ("maxpool", 2, 2),
                                                          ("avgpool", 3, 1))))
        head = f"{kind}{kernel}" + (f"/{stride}" if stride != kernel else "")
        return f"{head} ceil=true", (c, _ceil_mode(h, kernel, stride), _ceil_mode(w, kernel, stride))

    def concat(self, shape: Map, depth: int, keep_size: bool) -> tuple[str, Map]:
        stride = 2 if not keep_size and min(shape[1:]) >= 4 and self.draw(st.booleans()) else 1
        branches, widths, out = [], [], shape
        for _ in range(self.draw(st.integers(2, 4))):
            if stride == 1 and ["identity"] not in branches and self.draw(st.integers(0, 3)) == 0:
                branches.append(["identity"])
                widths.append(shape[0])
                continue
            stmts, out = self.chain(shape, stride, None, depth - 1)
            branches.append(stmts)
            widths.append(out[0])
        if all(b == ["identity"] for b in branches):
            text, out = self.conv(shape)
            branches[-1], widths[-1] = [text], out[0]
        self.merges["concat"] = self.merges.get("concat", 0) + 1
        spatial = (_same(shape[1], stride), _same(shape[2], stride))
        return self._merge("concat", branches), (sum(widths), *spatial)

    def add(self, shape: Map, depth: int) -> tuple[str, Map]:
        width = self.width()
        branches = []
        for _ in range(self.draw(st.integers(2, 3))):
            stmts, out = self.chain(shape, 1, width, depth - 1, end_raw=True)
            branches.append(stmts)
        if width == shape[0] and self.draw(st.booleans()):
            branches[0] = ["identity"]
        act = self.draw(st.sampled_from(("", " act=none", " act=relu")))
        self.merges["add"] = self.merges.get("add", 0) + 1
        return self._merge("add" + act, branches), (width, shape[1], shape[2])

    def multiply(self, shape: Map) -> tuple[str, Map]:
        squeeze = max(1, shape[0] // 2)
        gate = self.draw(st.sampled_from((
            f"gap; conv1-{squeeze}; conv1-{{in*0+{shape[0]}}} act=none; sigmoid",
            f"gap; conv1-{squeeze} act=none; relu6; conv1-{shape[0]} act=none; hardsigmoid",
            "sigmoid",  # a same-shaped multiplier
        )))
        self.merges["multiply"] = self.merges.get("multiply", 0) + 1
        return f"multiply {{ identity | {gate} }}", shape

    def named(self, shape: Map, depth: int) -> tuple[str, Map]:
        """``v = ...`` now, statements, then the value merged back in (a long skip)."""
        name = self.fresh()
        first, here = self.conv(shape)
        stmts, out = self.chain(here, 1, here[0], depth - 1, end_raw=True)
        self.merges["add"] = self.merges.get("add", 0) + 1
        return "{ " + f"{name} = {first}; " + "; ".join(stmts) + f"; add {{ identity | {name} }}" + " }", out

    def _merge(self, head: str, branches: list[list[str]]) -> str:
        if self.draw(st.booleans()):  # one line
            return f"{head} {{ " + " | ".join("; ".join(b) for b in branches) + " }"
        lines = [f"{head} {{"]
        for i, branch in enumerate(branches):
            lines.append(("      | " if i else "        ") + "; ".join(branch))
        return "\n".join(lines) + "\n    }"


@st.composite
def _dag(draw, max_statements: int, max_depth: int, max_width: int) -> GeneratedDag:
    drawer = _Drawer(draw, max_width)
    c = draw(st.integers(1, 4))
    h = draw(st.integers(4, 12))
    w = draw(st.integers(4, 12))
    first, shape = drawer.conv((c, h, w))  # a net has at least one layer
    lines = [first]
    for _ in range(draw(st.integers(1, max_statements))):
        text, shape = drawer.stmt(shape, draw(st.integers(1, max_depth)))
        lines.append(text)
    output: tuple[int, ...] = shape
    if draw(st.booleans()):
        classes = draw(st.integers(1, 10))
        lines.append(f"gap; fc-{classes}" + ("; softmax" if draw(st.booleans()) else ""))
        output = (classes,)
    body = "\n".join(f"    {line}" for line in lines)
    return GeneratedDag(f"net dag : {c}x{h}x{w} {{\n{body}\n}}\n", output, dict(drawer.merges))


def dag_specs(max_statements: int = 6, max_depth: int = 2, max_width: int = 8) -> st.SearchStrategy[GeneratedDag]:
    """Random DAG specs: chains of convs, pooling and activations, with concat, add and
    multiply merges (nested up to ``max_depth``), named values merged back later, repeated
    groups and loop indices, ceil-mode and adaptive pooling and channel shuffles; every spec
    is valid.

    Args:
        max_statements: top-level statements (each may hold branches).
        max_depth: how deeply merges nest in merges.
        max_width: the most channels a drawn layer has (widths of concats add up).
    """
    return _dag(max_statements, max_depth, max_width)
