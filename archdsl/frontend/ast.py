"""The syntax tree of a spec file, as the parser produces it (before any expansion).

Every node carries the :class:`~archdsl.errors.Span` it was written at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from archdsl.errors import Span
from archdsl.ir import Shape


# -- values and expressions ---------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Word:
    """A bare word used as a value: ``shortcut=B``, ``bias=false``, ``mode=sum``."""

    text: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Str:
    text: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Ref:
    """A parameter named inside braces: ``{classes}``."""

    name: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * // / %
    left: "Expr"
    right: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class ListOf:
    """``[3, 4, 6, 3]``: a list value (its items values, or expressions inside braces)."""

    items: tuple["Expr", ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Index:
    """``depths[2]``: an item of a list (counted from 0; negative counts from the end)."""

    target: "Expr"
    index: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Compare:
    op: str  # one of == != < <= > >=
    left: "Expr"
    right: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Cond:
    """``2 if first else 1``."""

    then: "Expr"
    test: "Expr"
    other: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Func:
    """``divisible(32*alpha, 8)``: one of the functions of :data:`archdsl.frontend.values.FUNCTIONS`."""

    name: str
    args: tuple["Expr", ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Braced:
    """``{expr}``: kept as a node so that the canonical printer can write the braces back."""

    expr: "Expr"
    span: Span = field(compare=False)


Expr = Union[Num, Word, Str, Ref, BinOp, Neg, Braced, ListOf, Index, Compare, Cond, Func]


@dataclass(frozen=True)
class Option:
    name: str
    value: Expr
    span: Span = field(compare=False)


# -- statements ---------------------------------------------------------------------------
# Every statement may carry: ``repeat`` (``x{n}``), ``index`` (the name ``for i`` gives the
# copy's number 0, 1, ..., a Label), and ``label`` (``x = ...``: its output becomes the value ``x``).
@dataclass(frozen=True)
class Label:
    name: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Layer:
    """``conv3-64/2 pad=1``: name ``conv3``, width ``64``, stride ``2``, options."""

    name: str
    width: Expr | None
    stride: Expr | None
    options: tuple[Option, ...]
    span: Span = field(compare=False)
    repeat: Expr | None = None
    index: "Label | None" = None
    label: Label | None = None


@dataclass(frozen=True)
class Call:
    """``basic(64, stride=2)``: an instance of a block."""

    name: str
    args: tuple[Expr, ...]
    kwargs: tuple[Option, ...]
    span: Span = field(compare=False)
    repeat: Expr | None = None
    index: "Label | None" = None
    label: Label | None = None


@dataclass(frozen=True)
class Residual:
    options: tuple[Option, ...]
    body: tuple["Stmt", ...]
    span: Span = field(compare=False)
    repeat: Expr | None = None
    index: "Label | None" = None
    label: Label | None = None
    end_line: int = field(default=0, compare=False)  # the line of the closing brace


@dataclass(frozen=True)
class Merge:
    """``concat { a | b }``: branches from the same input, merged by ``kind`` (concat, add,
    multiply)."""

    kind: str
    options: tuple[Option, ...]
    branches: tuple[tuple["Stmt", ...], ...]
    span: Span = field(compare=False)
    repeat: Expr | None = None
    index: "Label | None" = None
    label: Label | None = None
    end_line: int = field(default=0, compare=False)  # the line of the closing brace


@dataclass(frozen=True)
class Group:
    """``{ conv3-64; bn } x2``: statements grouped, to be repeated together."""

    body: tuple["Stmt", ...]
    span: Span = field(compare=False)
    repeat: Expr | None = None
    index: "Label | None" = None
    label: Label | None = None
    end_line: int = field(default=0, compare=False)


Stmt = Union[Layer, Call, Residual, Merge, Group]


# -- definitions --------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span = field(compare=False)


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span = field(compare=False)
    end_line: int = field(default=0, compare=False)  # the line of the closing brace


@dataclass(frozen=True)
class NetDef:
    name: str
    params: tuple[Param, ...]
    input_shape: Shape | None
    body: tuple[Stmt, ...]
    span: Span = field(compare=False)
    end_line: int = field(default=0, compare=False)  # the line of the closing brace


@dataclass(frozen=True)
class Import:
    path: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Comment:
    """``# ...`` (the text includes the ``#``); kept so that the canonical printer keeps it."""

    text: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class SpecFile:
    file: str
    imports: tuple[Import, ...]
    blocks: tuple[BlockDef, ...]
    nets: tuple[NetDef, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
