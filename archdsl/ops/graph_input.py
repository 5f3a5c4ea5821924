"""The network input, INPUT: no inputs, its shape is its attribute."""

from __future__ import annotations

from archdsl.ops.base import OpDef, register

register(
    OpDef("INPUT", "input", 0, {"shape": object}, lambda attrs, inputs: attrs["shape"], None,
          doc="the network input; attrs.shape is a Shape", node_name="input"),
)
