"""The compiled module as an ONNX model or a ``torch.export`` program (``archdsl export``).

What is exported is what :func:`archdsl.compile` returns, in eval mode. The spec's names
stay: initializers and the program's parameters are the module's state-dict keys
(``basic_stage2.basic1.conv1.weight``), and each ONNX node is named after the layer it belongs
to (its module path, then the op where a layer gives several nodes or none).

The batch dimension is dynamic; with ``dense`` the fully-convolutional form is exported and
its height and width are dynamic too, from the spec's own input size up.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from archdsl.ir import ArchGraph, Op, Shape

#: Largest model an in-memory ONNX protobuf can hold.
_PROTOBUF_LIMIT = 2**31 - 1


class ExportError(RuntimeError):
    """The module cannot be exported as asked (a missing library, a model too large)."""


def prepare(spec: str | Path | ArchGraph, *, weights: str | Path | dict | None = None, dense: bool = False,
            batch: int = 2, **kwargs: Any) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """The module to export (eval mode, weights loaded), an example input and the dynamic shapes.

    Args:
        spec: a spec path, a bundled spec's name or a graph (as for :func:`archdsl.compile`).
        weights: a state dict of the ordinary module, or a file holding one (``torch.save`` or
            ``.safetensors``); None keeps the initial weights.
        dense: export the fully-convolutional form with a dynamic height and width.
        batch: the example input's batch size, at least 2 (the exported batch is dynamic either way).
        kwargs: ``net``, ``input``, ``params`` and net parameters, as for :func:`archdsl.compile`.
    """
    from archdsl.pipeline import compile, load, load_for_dense

    if dense:
        graph, dense_input = load_for_dense(spec, **kwargs)
        # The dense form is traced where its score map is at least 2x2: torch.export fixes a
        # dimension that is 1 in the example, and at the spec's own size the map is 1x1 (there
        # the dense net is the ordinary one). One step of the feature map's grid past it will do.
        step = max(d["meta"]["jump"] for _, d in graph.nodes(data=True)
                   if d["meta"]["shape"].is_map and d["op"] is not Op.GLOBAL_AVGPOOL)
        low = Shape.of(graph.input_shape.c, graph.input_shape.h + step, graph.input_shape.w + step)
        shape = dense_input if dense_input and dense_input.h >= low.h and dense_input.w >= low.w else low
    else:
        graph = spec if isinstance(spec, ArchGraph) else load(spec, **kwargs)
        shape = graph.input_shape
    module = compile(graph, dense=dense, input=shape if dense else None)
    if weights is not None:
        if not isinstance(weights, dict):
            from archdsl.evaluation import EvalError, load_weights

            try:
                weights = load_weights(weights)
            except EvalError as err:
                raise ExportError(str(err)) from None
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:
            raise ExportError(f"the weights do not fit {graph.name}: {err}") from None
    module.eval()
    example = torch.randn(max(batch, 2), *shape.dims)  # batch 1 would fix the batch size
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dense:
        dims[2] = torch.export.Dim("height", min=low.h, max=max(low.h, 8192))
        dims[3] = torch.export.Dim("width", min=low.w, max=max(low.w, 8192))
    return module, example, {"x": dims}


def trace(module: torch.nn.Module, example: torch.Tensor, dynamic_shapes: dict | None = None):
    """``module`` captured by ``torch.export`` (one capture serves both file formats)."""
    try:
        return torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    except Exception as err:  # torch.export's many error types; its message says what failed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.export cannot capture the module with these dynamic sizes: {first}") from err


def to_pt2(program) -> bytes:
    """An exported program as a ``.pt2`` file's bytes (load with ``torch.export.load``)."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def to_onnx(program, opset: int | None = None) -> bytes:
    """An exported program as a serialised ONNX model (input ``input``, output ``output``),
    its nodes named after the spec's layers. Batch norm stays a node of its own (onnxruntime
    folds it into the conv when it loads the model), so the file has the spec's layers."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs both; say so in our words)
        import onnxscript.optimizer
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'archdsl[export]'") from None
    kwargs = {} if opset is None else {"opset_version": opset}
    onnx_program = torch.onnx.export(program, input_names=["input"], output_names=["output"], verbose=False,
                                     optimize=False, dynamo=True, **kwargs)
    # Fold the exporter's constants (a conv without bias gets a zero bias computed at run time),
    # but do not run its default rewrites: they fold batch norm into the conv's weight, so the
    # initializers would no longer be the state dict's tensors.
    onnxscript.optimizer.fold_constants(onnx_program.model)
    onnxscript.optimizer.remove_unused_nodes(onnx_program.model)
    model = onnx_program.model_proto
    _name_nodes(model)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise ExportError(f"the ONNX model is {model.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB")
    return model.SerializeToString()


def _name_nodes(model) -> None:
    """Name each ONNX node after the module it came from (the exporter records the module path
    in ``pkg.torch.onnx.name_scopes``): ``stage2.basic1.conv1``, or ``stage2.basic1.conv1/Relu`` where that
    module gives several nodes, ``Relu_2`` for a node outside any layer."""
    scopes = []
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        path = _scope_path(meta.get("pkg.torch.onnx.name_scopes", ""))
        scopes.append(path)
    per_scope: dict[str, int] = {}
    for path in scopes:
        per_scope[path] = per_scope.get(path, 0) + 1
    taken: dict[str, int] = {}
    for node, path in zip(model.graph.node, scopes):
        base = path if path and per_scope[path] == 1 else "/".join(p for p in (path, node.op_type) if p)
        count = taken[base] = taken.get(base, 0) + 1
        node.name = base if count == 1 else f"{base}_{count - 1}"


def _scope_path(text: str) -> str:
    """``"['', 'stage1', 'stage1.basic1', 'stage1.basic1.conv1', 'conv2d']"`` ->
    ``"stage1.basic1.conv1"``: the innermost module's qualified name (each entry names one
    module around the node, outermost first; the last entry is the op)."""
    import ast

    try:
        parts = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return ""
    modules = [str(p) for p in parts[:-1] if p and not str(p).startswith("_")]
    return modules[-1] if modules else ""


def check_onnx(data: bytes, module: torch.nn.Module, example: torch.Tensor) -> float:
    """Run the ONNX model in onnxruntime on ``example`` and return the largest absolute
    difference from ``module``'s output."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("checking the ONNX file needs onnxruntime: pip install 'archdsl[export]'") from None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = module(example)
    return float((torch.from_numpy(got) - want).abs().max())
