"""End-to-end checks of a graph against PyTorch: shapes through forward hooks and through the
emitted source, parameters, MACs counted from real tensors, and the emitted module's output."""

from __future__ import annotations

import ast as pyast
from typing import Any, Callable

import archdsl
from archdsl.ir import ArchGraph, Op
from archdsl.ops.conv import conv_shape

def _prepared(graph: ArchGraph, module=None, seed: int = 0):
    import torch

    if module is None:
        module = archdsl.compile(graph, softmax=True)  # the graph as it is, final softmax included
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():  # batch norm with statistics of its own, not the identity
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                sub.running_mean.copy_(torch.randn(sub.running_mean.shape, generator=gen))
                sub.running_var.copy_(torch.rand(sub.running_var.shape, generator=gen) + 0.5)
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=gen))
                sub.bias.copy_(torch.randn(sub.bias.shape, generator=gen))
    return module.eval()


def _input(graph: ArchGraph, batch: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn((batch, *graph.input_shape.dims), generator=gen)


def real_shapes(module, x, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """Run ``module`` on ``x`` and return, for every submodule (named as its node), the shape of
    one sample of its real output, recorded by forward hooks. With ``expected``, raise
    AssertionError at the first layer whose output differs (before later layers fail on it)."""

    seen: dict[str, tuple[int, ...]] = {}

    def recorder(name):
        def hook(_, __, out):
            seen[name] = tuple(out.shape[1:])
            if expected is not None and name in expected and seen[name] != tuple(expected[name]):
                raise AssertionError(f"node {name!r}: inferred shape {tuple(expected[name])}, "
                                     f"PyTorch produces {seen[name]}")
        return hook

    modules = dict(module.named_modules())
    _run_hooked(module, x, [(modules[path], recorder(node)) for node, path in module.paths.items()
                            if path in modules])
    return seen


def count_macs(module, x) -> int:
    """Multiply-accumulates per sample of the conv and linear layers, counted from the real
    tensors of a forward pass on ``x`` (forward hooks)."""
    import torch

    total = 0

    def hook(sub, inputs, out):
        nonlocal total
        per_sample = out[0].numel()
        if isinstance(sub, torch.nn.Conv2d):  # each output element: (C_in / groups) * kh * kw
            total += per_sample * sub.weight[0].numel()
        else:  # each output feature: one multiply-accumulate per input feature
            total += per_sample * inputs[0].shape[-1]

    _run_hooked(module, x, [(m, hook) for m in module.modules()
                            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    return total


def _run_hooked(module, x, hooks) -> None:
    """One forward pass of ``module`` on ``x`` without gradients, with ``(submodule, hook)``
    forward hooks registered for its duration."""
    import torch

    handles = [sub.register_forward_hook(hook) for sub, hook in hooks]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()


def count_params(module) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def source_module(graph: ArchGraph, backend: str = "torch", capture: Callable | None = None):
    """Emit ``graph`` as Python source, run it, and return an instance of its module class.

    With ``capture``, the i-th assignment of every ``forward`` is followed by
    ``capture(self, i, value)`` (a tuple of values where it assigns several).
    """
    import torch

    from archdsl.codegen.torch_source import class_name, emit_source

    source = emit_source(graph, backend=backend)
    tree = pyast.parse(source)
    if capture is not None:
        for cls in (n for n in tree.body if isinstance(n, pyast.ClassDef)):
            for fn in (n for n in cls.body if isinstance(n, pyast.FunctionDef) and n.name == "forward"):
                body, step = [], 0
                for stmt in fn.body:
                    body.append(stmt)
                    if isinstance(stmt, pyast.Assign) and len(stmt.targets) == 1:
                        value = pyast.unparse(stmt.targets[0])
                        body.append(pyast.parse(f"__archdsl_capture__(self, {step}, ({value}))").body[0])
                        step += 1
                fn.body = body
        pyast.fix_missing_locations(tree)
    namespace: dict[str, Any] = {"__name__": "archdsl_generated", "__archdsl_capture__": capture}
    exec(compile(tree, f"<archdsl source of {graph.name}>", "exec"), namespace)  # noqa: S102
    net = namespace.get(class_name(graph.name))
    if not (isinstance(net, type) and issubclass(net, torch.nn.Module)):
        raise AssertionError(f"the emitted source defines no module class {class_name(graph.name)!r}")
    return net()


def emitted_shapes(graph: ArchGraph, module, x, expected: dict[str, tuple[int, ...]] | None = None):
    """Run the emitted source of ``graph`` with ``module``'s weights on ``x``: the shape of one
    sample of every node's value as the emitted ``forward`` methods assign it (each line of a
    block's forward is a step of its level in :mod:`archdsl.codegen.hierarchy`), and the output. With
    ``expected``, raise AssertionError at the first value whose shape differs."""
    import torch

    from archdsl.codegen import hierarchy

    root = hierarchy.tree(graph)
    steps: dict[tuple[str, ...], list] = {}  # module path -> its level's steps
    for level in hierarchy.levels(root):
        steps[level.path] = level.steps
    where: dict[int, tuple[str, ...]] = {}  # id(instance) -> its module path
    seen: dict[str, tuple[int, ...]] = {}

    def capture(instance, i, value):
        step = steps[where[id(instance)]][i]
        values = value if len(step.outputs) > 1 else (value,)
        for node, v in zip(step.outputs, values, strict=True):
            if node not in graph.nodes or graph.nodes[node]["op"] is Op.INPUT:
                continue
            seen[node] = tuple(v.shape[1:])
            if expected is not None and node in expected and seen[node] != tuple(expected[node]):
                raise AssertionError(f"node {node!r}: inferred shape {tuple(expected[node])}, "
                                     f"the emitted source produces {seen[node]}")

    emitted = source_module(graph, capture=capture)
    for path, sub in emitted.named_modules():
        key = tuple(path.split(".")) if path else ()
        if key in steps:
            where[id(sub)] = key
    emitted.load_state_dict(module.state_dict(), strict=True)
    emitted.eval()
    with torch.no_grad():
        out = emitted(x)
    return seen, out


def check_lowering(graph: ArchGraph, *, batch: int = 2, seed: int = 0, source: bool = True) -> dict[str, int]:
    """Check a graph against PyTorch; raise AssertionError naming the first disagreement.

    * every node's inferred shape is the shape PyTorch produces: layer nodes through forward
      hooks on the in-process module, every node through the emitted source run with
      ``__archdsl_capture__`` after each assignment (``source=False`` skips this);
    * the analysed parameter count is the module's;
    * the analysed MACs are those counted from the real tensors of a forward pass;
    * the emitted source, given the in-process module's weights, computes the same output.

    Returns counts of what was checked: ``nodes``, ``layer_nodes``, ``params``, ``macs``.
    """
    import torch

    module = _prepared(graph, seed=seed)
    x = _input(graph, batch, seed)
    expected = {name: graph.shape(name).dims for name in graph.nodes}

    # A fused conv's layer is the conv: with a fused pool it outputs the map before the pool.
    layer_out = {**expected, **{name: conv_shape(d["attrs"], graph.shape(d["args"][0])).dims
                                for name, d in graph.nodes(data=True)
                                if d["op"] is Op.FUSED_CONV and d["attrs"].get("pool")}}
    real = real_shapes(module, x, layer_out)
    layer_nodes = [n for n in expected if n in real]
    weighted = [n for n, d in graph.nodes(data=True) if d["op"] in (Op.CONV, Op.LINEAR, Op.BATCHNORM)]
    missing = [n for n in weighted if n not in real]
    if missing:
        raise AssertionError(f"nodes {missing} have no layer in the module")

    with torch.no_grad():
        out = module(x)
    if tuple(out.shape[1:]) != graph.output_shape.dims:
        raise AssertionError(f"output: inferred {graph.output_shape.dims}, PyTorch produces {tuple(out.shape[1:])}")

    params = count_params(module)
    if params != graph.params:
        raise AssertionError(f"parameters: analysis says {graph.params}, the module has {params}")
    macs = count_macs(module, x)
    if macs != graph.macs:
        raise AssertionError(f"MACs: analysis says {graph.macs}, a forward pass performs {macs}")

    checked = len(real)
    if source:
        seen, emitted_out = emitted_shapes(graph, module, x, expected)
        for name, shape in expected.items():
            if name == graph.graph["input"]:
                continue
            if name not in seen:
                raise AssertionError(f"node {name!r} is not assigned in the emitted forward")
            if seen[name] != shape:
                raise AssertionError(f"node {name!r}: inferred shape {shape}, the emitted source produces {seen[name]}")
        torch.testing.assert_close(emitted_out, out, rtol=1e-5, atol=1e-6)
        checked = len(expected) - 1
    return {"nodes": checked, "layer_nodes": len(layer_nodes), "params": params, "macs": macs}
