"""The compiler, top to bottom: spec text -> checked graph -> transformed graph -> module.

    parse        text -> syntax tree, imports read            frontend/parser.py, loader.py
    expand       repeats, blocks, residuals, implied ReLUs;   frontend/expand.py
                 each node's shape inferred as it is added    ops/ (each op's shape rule)
    analyse      parameters, MACs, receptive field            passes/analysis.py
    verify       IR invariants                                ir.py
    transform    dense form; the backend's rewrite rules      passes/fc_to_conv.py, rewrite.py, fuse.py
    lower        nn.Module in process, or module source       codegen/torch_module.py, torch_source.py

:func:`loads`/:func:`load` run the first four stages, :func:`lower_graph` the transforms (the
one place they are assembled: :func:`compile`, ``archdsl build`` and the offline kernel
compiler all call it), :func:`compile` all of them.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Any

from archdsl.backends import Backend, get, resolve
from archdsl.errors import SpecError
from archdsl.frontend.expand import build
from archdsl.frontend.loader import load_program, read_source
from archdsl.frontend.values import Value
from archdsl.ir import ArchGraph, Shape, verify
from archdsl.limits import DEFAULT, Limits
from archdsl.passes.analysis import analyse
from archdsl.registry import resolve_spec


def _shape(value) -> Shape | None:
    """An ``input=`` argument as a Shape: ``"3x384x384"``, ``(3, 384, 384)`` or a Shape."""
    if value is None:
        return None
    try:
        shape = value if isinstance(value, Shape) else (
            Shape.parse(value) if isinstance(value, str) else Shape.of(*value))
    except (TypeError, ValueError) as err:
        raise SpecError(f"input: expected a shape such as 3x224x224, found {value!r} ({err})") from None
    if len(shape.dims) != 3 or min(shape.dims) < 1:
        raise SpecError(f"input: expected three positive dimensions CxHxW, found {shape}")
    return shape


def loads(text: str, *, net: str | None = None, input: Any = None, file: str = "<string>",
          limits: Limits = DEFAULT, params: dict[str, Value] | None = None,
          base_dir: str | Path | None = None, **kwargs: Value) -> ArchGraph:
    """Compile spec text to a checked, counted graph.

    Args:
        text: the spec.
        net: which net of the text to build (needed only when it defines several).
        input: input shape overriding the spec's, as ``"3x384x384"`` or ``(3, 384, 384)``.
        file: the name errors give for the text.
        limits: resource limits (:class:`archdsl.Limits`).
        params: net parameters, e.g. ``{"n": 18}``; keyword arguments are added to them.
        base_dir: folder that relative imports start from (default: the working directory).

    Raises:
        SpecError: anything wrong with the spec, pointing at the line.
    """
    program, net_def = _parse(text, net, file, limits, base_dir)
    return _expand(program, net_def, _shape(input), limits, {**(params or {}), **kwargs})


def _parse(text: str, net: str | None, file: str, limits: Limits, base_dir) -> tuple:
    with _gc_paused():
        program = load_program(text, file, limits, Path(base_dir) if base_dir else Path.cwd())
    return program, program.net(net)


def _expand(program, net_def, input: Shape | None, limits: Limits, values: dict) -> ArchGraph:
    with _gc_paused():
        graph = build(program, net_def, values, input, limits)
        graph.graph["spec_input"] = net_def.input_shape
        analyse(graph)
        verify(graph)
    return graph


@contextlib.contextmanager
def _gc_paused():
    """Building a graph allocates many small, long-lived objects and no cycles worth
    collecting; the collector's full passes over them made the cost grow faster than the
    depth. The limits (max_nodes, max_steps) bound what is allocated meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load(path: str | Path, *, net: str | None = None, input: Any = None, limits: Limits = DEFAULT,
         params: dict[str, Value] | None = None, **kwargs: Value) -> ArchGraph:
    """Compile a spec file (or a bundled spec's name, such as ``"resnet50"``) to a checked graph.

    Arguments as for :func:`loads`.
    """
    text, file, base_dir = _read(path, limits)
    return loads(text, net=net, input=input, file=file, limits=limits, params=params, base_dir=base_dir,
                 **kwargs)


def _read(path: str | Path, limits: Limits) -> tuple[str, str, Path]:
    """(text, the file name errors give, the folder imports start from) of a spec file."""
    file = resolve_spec(path)
    return read_source(file, limits), str(path) if Path(path).is_file() else str(file), file.parent


def load_for_dense(spec: str | Path | ArchGraph, *, net: str | None = None, input: Any = None,
                   limits: Limits = DEFAULT, params: dict[str, Value] | None = None,
                   **kwargs: Value) -> tuple[ArchGraph, Shape | None]:
    """The graph that the dense form of ``spec`` is converted from, and the input to run it at.

    The fc layers are defined at the spec's own input size (VGG's first fc sees 7x7 at 224), so
    the graph is built there whatever ``input`` says; ``input`` is returned as the shape to infer
    the dense form at (None: the spec's own). A spec that declares no input size is built at
    ``input``. A graph ``spec`` is taken as built, with ``input`` (if any) as its dense input.
    """
    if isinstance(spec, ArchGraph):
        return spec, _shape(input)
    text, file, base_dir = _read(spec, limits)
    program, net_def = _parse(text, net, file, limits, base_dir)
    values = {**(params or {}), **kwargs}
    declared, wanted = net_def.input_shape, _shape(input)
    if wanted is None or declared is None or declared == wanted:
        return _expand(program, net_def, wanted, limits, values), None
    return _expand(program, net_def, None, limits, values), wanted


def lower_graph(graph: ArchGraph, backend: Backend | str = "torch", *, dense: bool = False,
                dense_input: Shape | None = None, softmax: bool = False) -> ArchGraph:
    """The transforms between a checked graph and a module, in order; each result verified.

    Args:
        graph: a checked graph (:func:`load`); it is not modified.
        backend: the backend (or its name) whose rewrite rules to run.
        dense: the fully-convolutional form (:func:`~archdsl.passes.fc_to_conv.fc_to_conv`).
        dense_input: the input shape the dense form runs at (default the graph's own, which is
            also the size the fc layers are converted at).
        softmax: keep a softmax that ends the net; by default the module returns the scores
            before it (logits, what ``F.cross_entropy`` takes).
    """
    from archdsl.passes.fc_to_conv import fc_to_conv
    from archdsl.passes.logits import drop_output_softmax
    from archdsl.passes.rewrite import rewrite

    backend = get(backend)
    if not softmax:
        graph = drop_output_softmax(graph)  # logits out
    if dense:
        graph = fc_to_conv(graph, dense_input)  # dense form: fc layers become convolutions
    verify(graph)
    graph, _ = rewrite(graph, backend.rules)  # the backend's fusions
    verify(graph)
    return graph


def compile(spec: str | Path | ArchGraph, *, backend: str = "torch", dense: bool = False,
            softmax: bool = False, net: str | None = None, input: Any = None, limits: Limits = DEFAULT,
            params: dict[str, Value] | None = None, **kwargs: Value):
    """Compile a spec (path, bundled name, or a graph from :func:`load`) to a ``torch.nn.Module``.

    Args:
        spec: what to compile.
        backend: ``"torch"`` (PyTorch layers) or ``"triton"`` (archdsl's Triton kernels where
            they apply; without a CUDA device it falls back to PyTorch and says so once).
        dense: fully-convolutional form for dense evaluation (FC layers become convolutions,
            :mod:`archdsl.passes.fc_to_conv`): its output is a class score map, N x classes x h x w,
            and its ``load_state_dict`` takes the ordinary module's ``state_dict()`` unchanged.
            ``input`` then sets the size the shapes are inferred at, never the converted kernels,
            which come from the spec's own input size (see :func:`load_for_dense`).
        softmax: end in the spec's final softmax. By default the module returns the scores
            before it (logits), as torchvision and timm models do, for ``F.cross_entropy``;
            the graph and its counts keep the softmax either way.
        net, input, limits, params, kwargs: as for :func:`loads`, when ``spec`` is not a graph.
    """
    from archdsl.codegen.torch_module import build_module

    wanted = get(backend)  # an unknown name fails before any work
    dense_input = None
    if dense:
        graph, dense_input = load_for_dense(spec, net=net, input=input, limits=limits, params=params,
                                            **kwargs)
    else:
        graph = spec if isinstance(spec, ArchGraph) else load(
            spec, net=net, input=input, limits=limits, params=params, **kwargs)
    graph = lower_graph(graph, wanted, dense=dense, dense_input=dense_input, softmax=softmax)
    if graph.params > limits.max_params:
        raise SpecError(f"net {graph.name!r} has {graph.params:,} parameters, over the limit of "
                        f"{limits.max_params:,} (limit max_params)", graph.graph.get("spec"))
    wanted, here = resolve(wanted)
    return build_module(graph, here, wanted)
