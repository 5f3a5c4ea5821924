"""What a row of the op table holds (:class:`OpDef`), and the helpers rows share.

Nothing here imports torch or the front end: a row describes its PyTorch lowering as data
(:class:`Layer`, :class:`Lowered`: class paths, source templates, the name of a forward helper
in :mod:`archdsl.codegen.torch_ops`) and reads a written layer through the few methods of
:class:`archdsl.frontend.layers.Written` (``width``, ``stride``, ``int``, ``float``, ...).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from archdsl.shape import Shape


class ShapeError(Exception):
    """A shape rule failed; the caller attaches the node's span and turns it into SpecError."""


@dataclass(frozen=True)
class Layer:
    """A layer object to construct: ``module.cls(*args, **kwargs)``."""

    module: str  # import path, e.g. "torch.nn"
    cls: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self):
        return getattr(importlib.import_module(self.module), self.cls)(*self.args, **self.kwargs)


def nn(cls: str, *args, **kwargs) -> Layer:
    return Layer("torch.nn", cls, args, kwargs)


@dataclass(frozen=True)
class Lowered:
    """One node in PyTorch terms.

    ``layer``: the object stored as an attribute named after the node (None for pure functions).
    ``expr``: the forward expression as source, with ``{self}`` for the layer and ``{0}``, ``{1}``
    for the inputs. ``fn``: the name of the function in :mod:`archdsl.codegen.torch_ops` that
    computes the same in-process, called as ``fn(*fn_args, layer, *inputs, **roles)`` (a named
    module-level function, so the module pickles). ``extra``: further layers the node owns, as
    ``(role, attribute name, Layer)``: stored as attributes under those names, written
    ``{role}`` in ``expr`` and passed to ``fn`` as the keyword argument ``role`` (a fused conv
    keeps its batch norm under the BN node's name, so state_dict keys are those of the unfused
    graph). ``imports``: lines the source needs. ``module``: for a node without a layer, the
    module that computes it in-process (``nn.ReLU()``), so that ``print(model)`` shows every
    activation and merge; the source keeps the plain call of ``expr``.
    """

    layer: Layer | None
    expr: str
    fn: str = "call_layer"
    fn_args: tuple = ()
    extra: tuple[tuple[str, str, Layer], ...] = ()
    imports: tuple[str, ...] = ()
    module: Layer | None = None


@dataclass(frozen=True)
class Dsl:
    """How the spec language writes an op: ``names`` (the first is the one error messages and
    the README use; the others are aliases), ``build(written) -> (attrs, implied activation)``,
    the ``key=value`` options it takes, whether the name carries a window size (``conv3``,
    ``maxpool3``, ``conv1x7``) and a one-line ``doc``."""

    names: tuple[str, ...]
    build: Callable[[Any], tuple[dict[str, Any], str | None]]
    options: tuple[str, ...] = ()
    kernel: bool = False
    doc: str = ""


def _no_counts(attrs: dict, x: Shape | None, y: Shape) -> tuple[int, int]:
    return 0, 0


def _same_field(attrs: dict, x: Shape, rf: int, jump: int) -> tuple[int, int]:
    return rf, jump


def _no_subsampling(attrs: dict) -> tuple[int, int] | None:
    return 1, 1


@dataclass(frozen=True)
class OpDef:
    """Everything the compiler knows about one op.

    Args:
        name: the :class:`~archdsl.ops.Op` member's name (``"CONV"``).
        value: its value, also the word :func:`describe` falls back to (``"conv"``).
        arity: inputs: a number, or (fewest, most).
        attrs: the attributes a node must carry, and their types (checked by ``verify``).
        shape: ``shape(attrs, inputs) -> Shape``; raises :class:`ShapeError`.
        lower: ``lower(attrs, x) -> Lowered``, the PyTorch form (``x``: the first input's shape).
        doc: what the op means.
        node_name: the stem of node names the front end gives it (``conv`` -> ``conv3``).
        groups: the op groups it belongs to (see :mod:`archdsl.ops`).
        dsl: how specs write it, or None for ops only passes make.
        counts: ``counts(attrs, x, y) -> (parameters, MACs)``.
        field: ``field(attrs, x, rf, jump) -> (rf, jump)``, receptive field and stride in pixels.
        subsampling: ``subsampling(attrs) -> (sh, sw)``, the stride it applies, or None where
            it has no single one (global pooling, fc).
        describe: ``describe(attrs) -> str``, a paper-like description (default: ``value``).
        check: ``check(attrs, args) -> str | None``, an invariant beyond the attribute types
            (the broken rule, for ``verify``).
    """

    name: str
    value: str
    arity: int | tuple[int, int]
    attrs: dict[str, type | tuple[type, ...]]
    shape: Callable[[dict, list[Shape]], Shape]
    lower: Callable[[dict, Shape | None], Lowered] | None
    doc: str = ""
    node_name: str = ""
    groups: frozenset[str] = frozenset()
    dsl: Dsl | None = None
    counts: Callable[[dict, Shape | None, Shape], tuple[int, int]] = _no_counts
    field: Callable[[dict, Shape, int, int], tuple[int, int]] = _same_field
    subsampling: Callable[[dict], tuple[int, int] | None] = _no_subsampling
    describe: Callable[[dict], str] | None = None
    check: Callable[[dict, tuple], str | None] | None = None

    @property
    def weighted(self) -> bool:
        return "weighted" in self.groups


_ROWS: list[OpDef] = []


def register(*rows: OpDef) -> None:
    """Add rows to the op table (each op family module calls this once, at import)."""
    _ROWS.extend(rows)


# -- helpers shared by rows --------------------------------------------------------------------


def same_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    return inputs[0]


def need_map(what: str, x: Shape) -> None:
    if not x.is_map:
        raise ShapeError(f"{what} needs a CxHxW feature map, but receives a vector of {x.c} features")


def spatial(what: str, x: Shape, kernel, stride, padding) -> tuple[int, int]:
    """Output height and width of a window op; raises ShapeError when it leaves nothing."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h = (x.h + 2 * ph - kh) // sh + 1
    w = (x.w + 2 * pw - kw) // sw + 1
    if h < 1 or w < 1:
        raise ShapeError(
            f"{what} {kh}x{kw}/{sh} (pad {ph}) shrinks the {x.h}x{x.w} map of its {x} input below 1x1: "
            f"expected an input of at least {max(kh - 2 * ph, 1)}x{max(kw - 2 * pw, 1)}, found {x.h}x{x.w}"
        )
    return h, w


def window_field(attrs: dict, x: Shape, rf: int, jump: int) -> tuple[int, int]:
    """A window op (conv, pooling) grows the field by (kernel - 1) steps of the input grid."""
    return rf + (attrs["kernel"][0] - 1) * jump, jump * attrs["stride"][0]


def whole_map_field(attrs: dict, x: Shape, rf: int, jump: int) -> tuple[int, int]:
    """An op that sees the whole map (global pooling, an fc on a map)."""
    if not x.is_map:
        return rf, jump
    return rf + (x.h - 1) * jump, jump * x.h


def window_stride(attrs: dict) -> tuple[int, int]:
    return tuple(attrs["stride"])


def no_single_stride(attrs: dict) -> None:
    return None


def pair(v: int) -> tuple[int, int]:
    return (v, v)


def call(module: str, cls: str, *args, **kwargs) -> Lowered:
    """A node that is one layer called on its input: ``self.name(x)``."""
    return Lowered(Layer(module, cls, args, kwargs), "{self}({0})")


def simple_dsl(*, check: Callable[[Any, dict], None] | None = None, **defaults) -> Callable:
    """The builder of a layer written with no width and no stride, only ``key=value`` options
    with ``defaults`` (a float: a number >= 0; an int: an integer >= 1; ``(default, choices)``:
    one of the words). ``check(written, attrs)`` may refuse the values."""

    def build(w):
        w.no_width()
        w.no_stride()
        attrs = {}
        for name, default in defaults.items():
            if isinstance(default, tuple):  # (default, choices)
                attrs[name] = w.choice(name, default[0], default[1])
            elif isinstance(default, float):
                attrs[name] = w.float(name, default, low=0.0)
            else:
                attrs[name] = w.int(name, default, minimum=1)
        if check is not None:
            check(w, attrs)
        return attrs, None

    return build
