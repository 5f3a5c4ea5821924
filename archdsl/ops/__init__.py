"""The op table: everything the compiler knows about each op, one row per op.

A row (:class:`~archdsl.ops.base.OpDef`) holds an op's schema (inputs, required attributes),
how specs write it (DSL names, options, the builder of its attributes), its shape rule, its
parameter and MAC counts, its receptive-field rule, its description, and its PyTorch lowering
(used by both the in-process module and the emitted source). The rows live in one module per
op family -- ``conv``, ``fc``, ``pools``, ``norm``, ``pointwise``, ``merges``, ``graph_input`` -- each
calling :func:`~archdsl.ops.base.register`; the :class:`Op` enum is made from the registered
rows, in registration order.

Why this form: a table of callables keeps all of an op's facts on one screen, and the compiler
stages (front end, shape inference, analyses, lowering) read the same row instead of each
keeping an if-chain over ops. Families share their helpers (window arithmetic, ``nn.Conv2d``
keyword arguments) inside one module, so a row stays a few lines. Building the enum from the
rows means adding an op is one row (with its DSL name) in its family module and a test; no
second list of ops exists to forget. Rows describe the lowering as data (class paths, source
templates, the name of a forward helper) so that the table, and ``import archdsl``, never
import torch.

Op groups (sets of :class:`Op`), which passes match instead of naming ops:

* :data:`CONV_LIKE` -- convolutions, fused or not
* :data:`POOLS` -- pooling, windowed or global; :data:`GLOBAL_POOLS` the latter
* :data:`POINTWISE` -- elementwise, shape-keeping; :data:`ACTIVATIONS` the activation functions
* :data:`NORMS` -- normalisations; :data:`BEFORE_ACTIVATION` those a layer's implied ReLU follows
* :data:`MERGES` -- ops that combine two tensors
* :data:`WEIGHTED` -- ops owning a weight whose multiply-accumulates count as MACs
* :data:`COMMUTES_WITH_AVERAGE` -- per-channel ops that commute with a spatial average in eval
  mode, so a global average pooling can move past them (:mod:`archdsl.passes.fc_to_conv`)
* :data:`STATEFUL` -- ops whose layer holds parameters or running statistics (state_dict entries)
"""

from __future__ import annotations

import enum

from archdsl.errors import Span, SpecError
from archdsl.ops import base
from archdsl.ops import graph_input, conv, fc, pools, norm, pointwise, merges  # noqa: F401  (register rows)
from archdsl.ops.base import Dsl, Layer, Lowered, OpDef, ShapeError
from archdsl.shape import Shape

__all__ = [
    "ACTIVATIONS", "BEFORE_ACTIVATION", "COMMUTES_WITH_AVERAGE", "CONV_LIKE", "DSL_NAMES", "Dsl", "GLOBAL_POOLS", "Layer",
    "Lowered", "MERGES", "NORMS", "Op", "OpDef", "POINTWISE", "POOLS", "ShapeError", "TABLE",
    "WEIGHTED", "STATEFUL", "describe", "output_shape",
]


class _OpEnum(enum.Enum):
    def __repr__(self) -> str:
        return f"Op.{self.name}"


#: The op vocabulary: one member per row of the table (``Op.CONV.value == "conv"``).
Op = _OpEnum("Op", [(row.name, row.value) for row in base._ROWS], module=__name__, qualname="Op")

#: Op -> its row.
TABLE: dict[Op, OpDef] = {Op[row.name]: row for row in base._ROWS}


def _group(name: str) -> frozenset:
    return frozenset(op for op, row in TABLE.items() if name in row.groups)


CONV_LIKE = _group("conv_like")
POOLS = _group("pool")
GLOBAL_POOLS = _group("global_pool")
POINTWISE = _group("pointwise")
ACTIVATIONS = _group("activation")
NORMS = _group("norm")
BEFORE_ACTIVATION = _group("before_activation")
MERGES = _group("merge")
WEIGHTED = _group("weighted")
COMMUTES_WITH_AVERAGE = _group("commutes_with_average")
STATEFUL = _group("stateful")

#: Every name a spec may write for a layer (lower case, aliases included) -> its op.
DSL_NAMES: dict[str, Op] = {name: op for op, row in TABLE.items() if row.dsl for name in row.dsl.names}


def output_shape(op: Op, attrs: dict, inputs: list[Shape], span: Span | None = None) -> Shape:
    """The output shape of one op; a failed rule becomes a SpecError at ``span``."""
    try:
        return TABLE[op].shape(attrs, inputs)
    except ShapeError as err:
        raise SpecError(str(err), span) from None


def describe(op: Op, attrs: dict) -> str:
    """A short, paper-like description of one op: ``conv 3x3/1 pad 1, 64``."""
    row = TABLE[op]
    return row.describe(attrs) if row.describe else op.value
