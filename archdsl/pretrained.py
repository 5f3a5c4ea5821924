"""Foreign weights onto a spec, by structure: :func:`load_pretrained` and ``archdsl convert``.

A state dict from torchvision, timm or elsewhere names its tensors its own way. The mapping
does not read those names: it groups the tensors into layers (a prefix with its ``weight``,
``bias``, running statistics), takes the layers in the order the source runs them, and pairs
them one by one with the spec's layers in the order those consume data, kind for kind (conv,
fc, batch norm) and shape for shape. No key table per model.

The order of the source's layers: when the source is a module, the order its forward pass
calls them (recorded by hooks), and its convolutions' strides, padding and groups are compared
as well; when it is a state dict, the order of its keys, which is the order the layers were
registered and, for torchvision's and timm's nets, the order they run.

What a state dict cannot tell: strides and padding are not in the tensors, so a ResNet-50 v1
checkpoint (stride on the first 1x1) fits a v1.5 spec (stride on the 3x3) tensor for tensor.
Given a module, the strides are compared and the mismatch is found; given a state dict with
``source="torchvision"`` or ``"timm"``, whose ResNets are all v1.5, a spec that strides a
bottleneck's 1x1 is refused; with ``source="auto"`` the report says that this was not checked.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from archdsl.ir import ArchGraph
from archdsl.tables import fixed_width

SOURCES = ("auto", "torchvision", "timm")
# Sources whose bottleneck ResNets all put the downsampling stride on the 3x3 ("v1.5").
_STRIDE_ON_3X3 = {"torchvision", "timm"}
_OPTIONAL = ("num_batches_tracked",)  # old checkpoints lack it; the target keeps its own


@dataclass
class Layer:
    """One layer with tensors: its key prefix, tensor shapes by role (``weight``, ``bias``,
    ``running_mean``...), and for a module's conv its stride, padding, dilation and groups."""

    prefix: str
    tensors: dict[str, tuple[int, ...]]
    conv: tuple | None = None

    @property
    def kind(self) -> str:
        if "running_mean" in self.tensors:
            return "bn"
        weight = self.tensors.get("weight")
        if weight is not None and len(weight) == 4:
            return "conv"
        if weight is not None and len(weight) == 2:
            return "fc"
        return "+".join(sorted(self.tensors))

    def signature(self) -> tuple:
        return self.kind, tuple(sorted((r, s) for r, s in self.tensors.items() if r not in _OPTIONAL))

    def key(self, role: str) -> str:
        return f"{self.prefix}.{role}" if self.prefix else role

    def describe(self) -> str:
        weight = self.tensors.get("weight") or next(iter(self.tensors.values()))
        return f"{self.kind} {'x'.join(map(str, weight))}"


@dataclass
class Row:
    """One tensor of the report: where it goes, where it came from, and whether it fits."""

    target: str | None
    source: str | None
    shape: tuple[int, ...]
    status: str  # ok | missing (target has no source) | unused (source not used) | mismatch


@dataclass
class WeightMap:
    """The mapping from a foreign state dict onto a module's, tensor by tensor.

    Attributes:
        rows: one per tensor, in the target's order (then the unused source tensors).
        pairs: target key -> source key, for the tensors that fit.
        problems: what did not fit, one line each, naming the tensors.
        notes: what was assumed or could not be checked.
    """

    rows: list[Row] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        """The per-tensor report as a fixed-width table, then the problems and notes."""
        head = ("target", "source", "shape", "status")
        body = [(r.target or "-", r.source or "-", "x".join(map(str, r.shape)) or "scalar", r.status)
                for r in self.rows]
        lines = fixed_width(head, body)
        fitted = sum(r.status == "ok" for r in self.rows)
        lines.append(f"\n{fitted} of {sum(r.target is not None for r in self.rows)} target tensors mapped")
        lines += [f"problem: {p}" for p in self.problems] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def state_dict(self, source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The source's tensors under the target's keys (only those that fit)."""
        return {target: source[key] for target, key in self.pairs.items()}


class WeightMismatch(ValueError):
    """Foreign weights do not fit the spec (or fit only partly or ambiguously); ``report``
    is the :class:`WeightMap` with every tensor's status."""

    def __init__(self, report: WeightMap, what: str):
        self.report = report
        shown = report.problems[:12] + ([f"... and {len(report.problems) - 12} more"]
                                        if len(report.problems) > 12 else [])
        super().__init__(f"{what}:\n  " + "\n  ".join(shown))


# -- layers of each side ---------------------------------------------------------------------

def module_layers(module: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[list[Layer], list[Layer]]:
    """The layers of ``module`` with tensors, in the order a forward pass calls them (one pass
    on zeros, in eval mode, the module's mode restored after), and those it never calls."""
    called: list[torch.nn.Module] = []
    seen: set[int] = set()

    def hook(mod, _inputs, _output):
        if id(mod) not in seen:
            seen.add(id(mod))
            called.append(mod)

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    training = module.training
    device = next((t.device for t in module.state_dict().values()), torch.device("cpu"))
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        module.train(training)
    names = {id(m): n for n, m in module.named_modules()}

    def layer(mod) -> Layer | None:
        tensors = {r: tuple(t.shape) for r, t in [*mod.named_parameters(recurse=False),
                                                  *mod.named_buffers(recurse=False)] if t is not None}
        if not tensors:
            return None
        conv = None
        if isinstance(mod, torch.nn.modules.conv._ConvNd):
            conv = (tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation), mod.groups)
        return Layer(names[id(mod)], tensors, conv)

    run = [lay for lay in map(layer, called) if lay is not None]
    idle = [lay for m in module.modules() if id(m) not in seen and (lay := layer(m)) is not None]
    return run, idle


def state_dict_layers(state: Mapping[str, Any]) -> list[Layer]:
    """The layers of a state dict: keys grouped by prefix, in the order of their first key."""
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, value in state.items():
        prefix, _, role = key.rpartition(".")
        groups.setdefault(prefix, {})[role] = tuple(getattr(value, "shape", ()))
    return [Layer(prefix, tensors) for prefix, tensors in groups.items()]


def _strip_wrapper(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict saved from ``nn.DataParallel`` or DDP has every key under ``module.``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# -- the mapping -----------------------------------------------------------------------------

def map_layers(target: list[Layer], source: list[Layer], *, target_idle: list[Layer] = (),
               source_idle: list[Layer] = ()) -> WeightMap:
    """Pair ``target``'s layers with ``source``'s in order, kind for kind and shape for shape;
    where the counts differ, the longest runs that fit are paired and the rest reported."""
    report = WeightMap()
    a = [lay.signature() for lay in target]
    b = [lay.signature() for lay in source]
    if a == b:
        pairs = list(zip(range(len(a)), range(len(b))))
    else:
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        pairs = [(blk.a + k, blk.b + k) for blk in matcher.get_matching_blocks() for k in range(blk.size)]
        _explain(report, matcher, target, source)
    paired_b = {j for _, j in pairs}
    by_target = dict(pairs)
    for i, lay in enumerate(target):
        j = by_target.get(i)
        src = source[j] if j is not None else None
        if src is not None and lay.conv and src.conv and lay.conv != src.conv:
            report.problems.append(
                f"{lay.key('weight')} <- {src.key('weight')}: same shape, but stride, padding, dilation, "
                f"groups {lay.conv} in the spec and {src.conv} in the source")
        for role, shape in lay.tensors.items():
            if src is not None and role in src.tensors:
                report.rows.append(Row(lay.key(role), src.key(role), shape, "ok"))
                report.pairs[lay.key(role)] = src.key(role)
            elif src is not None and role in _OPTIONAL:
                continue  # the target keeps its own
            else:
                report.rows.append(Row(lay.key(role), None, shape, "missing"))
    for j, lay in enumerate(source):
        if j not in paired_b:
            report.rows += [Row(None, lay.key(r), s, "unused") for r, s in lay.tensors.items()]
    for lay in target_idle:
        report.notes.append(f"{lay.prefix}: a layer with tensors that the forward pass does not call; "
                            "left as it is")
    for lay in source_idle:
        report.rows += [Row(None, lay.key(r), s, "unused") for r, s in lay.tensors.items()]
        report.problems.append(f"{lay.prefix}: the source's forward pass never calls this layer")
    return report


def _explain(report: WeightMap, matcher: difflib.SequenceMatcher, target: list[Layer], source: list[Layer]) -> None:
    """Problems for each stretch of layers that did not pair, and whether the pairing is
    ambiguous (a missing layer could as well be its same-shaped neighbour)."""
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        tgt = ", ".join(f"{t.prefix} ({t.describe()})" for t in target[i1:i2]) or "nothing"
        src = ", ".join(f"{s.prefix} ({s.describe()})" for s in source[j1:j2]) or "nothing"
        report.problems.append(f"the spec's {tgt} against the source's {src}")
        for i in range(i1, i2):
            for k in (i1 - 1, i2):
                if 0 <= k < len(target) and target[k].signature() == target[i].signature():
                    report.problems.append(
                        f"ambiguous: {target[i].prefix} and {target[k].prefix} are alike, so which of them "
                        f"the source's weights belong to is a guess")
                    break
    report.problems.insert(0, f"the spec has {len(target)} layers with weights, the source {len(source)}; "
                              "they do not pair one to one")


def _stride_on_1x1(layers: list[Layer]) -> list[str]:
    """Bottleneck units that downsample on their first 1x1 conv (v1): in call order, a strided
    1x1 conv, an unstrided 3x3, a 1x1 (a projection shortcut is followed by the next unit's
    convs instead: 3x3, 3x3 in a basic net, 1x1, 3x3 in a bottleneck net)."""
    convs = [lay for lay in layers if lay.kind == "conv" and lay.conv]
    found = []
    for first, middle, last in zip(convs, convs[1:], convs[2:]):
        kernels = [c.tensors["weight"][2:] for c in (first, middle, last)]
        if kernels == [(1, 1), (3, 3), (1, 1)] and max(first.conv[0]) > 1 and max(middle.conv[0]) == 1:
            found.append(first.prefix)
    return found


def map_weights(module: torch.nn.Module, source: Mapping[str, Any] | torch.nn.Module,
                input_shape: tuple[int, ...], source_kind: str = "auto",
                source_input_shape: tuple[int, ...] | None = None) -> WeightMap:
    """The mapping of ``source``'s tensors onto ``module``'s, with a per-tensor report.

    Args:
        module: the target (an archdsl module; any module works); may live on the meta device.
        source: a state dict, or a module (then its call order and conv strides are used).
        input_shape: ``(C, H, W)`` that ``module`` runs at (one forward pass records its order).
        source_kind: ``"torchvision"``, ``"timm"`` or ``"auto"``: what the weights' source
            is known to do (torchvision's and timm's bottleneck ResNets stride the 3x3).
        source_input_shape: the input size of a module ``source`` (default ``input_shape``).
    """
    if source_kind not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source_kind!r}")
    target, target_idle = module_layers(module, input_shape)
    if isinstance(source, torch.nn.Module):
        src, src_idle = module_layers(source, source_input_shape or input_shape)
        order = "the order the source's forward pass calls its layers"
    else:
        src, src_idle = state_dict_layers(_strip_wrapper(source)), []
        order = "the order of the state dict's keys (the order the source registered its layers)"
    report = map_layers(target, src, target_idle=target_idle, source_idle=src_idle)
    report.notes.insert(0, f"source layers taken in {order}")
    if not isinstance(source, torch.nn.Module):
        strided = _stride_on_1x1(target)
        if strided and source_kind in _STRIDE_ON_3X3:
            report.problems.append(
                f"{source_kind}'s bottleneck ResNets downsample on the 3x3 conv (v1.5), but the spec "
                f"strides the first 1x1 ({', '.join(strided[:3])}{', ...' if len(strided) > 3 else ''}): "
                "build the spec with v1_5=1")
        elif strided or source_kind == "auto":
            report.notes.append("a state dict holds no strides or padding: that the source downsamples where "
                                "the spec does (e.g. ResNet v1's 1x1 against v1.5's 3x3) was not checked")
    return report


def _spec_module(spec, device: str | None = None, **kwargs):
    from archdsl.pipeline import compile, load

    graph = spec if isinstance(spec, ArchGraph) else load(spec, **kwargs)
    if device == "meta":
        with torch.device("meta"):  # names and shapes without allocating the weights
            return compile(graph), graph
    return compile(graph), graph


def load_pretrained(module_or_spec: torch.nn.Module | str | Path | ArchGraph,
                    state_dict: Mapping[str, torch.Tensor] | torch.nn.Module | str | Path,
                    source: str = "auto", *, strict: bool = True, input_shape: tuple[int, ...] | None = None,
                    **spec_kwargs: Any) -> torch.nn.Module:
    """Load foreign weights into an archdsl module by structure, not by name.

    Args:
        module_or_spec: the module to load into, or a spec (path, bundled name or graph) to
            compile first.
        state_dict: the foreign weights: a state dict, a file holding one (``torch.save``, read
            with ``weights_only=True``, or ``.safetensors``), or the foreign module itself
            (then its forward order and conv strides are checked too).
        source: ``"torchvision"``, ``"timm"`` or ``"auto"`` (see :func:`map_weights`).
        strict: refuse a partial or ambiguous mapping (raise :class:`WeightMismatch`); with
            False, load what fits and leave the rest as it is.
        input_shape: ``(C, H, W)`` the module runs at, when it is given as a module (default
            3x224x224; a spec says its own).
        spec_kwargs: net parameters and options for :func:`archdsl.load` (e.g. ``v1_5=1``).

    Returns:
        The module with the weights loaded; ``module.weight_map`` is the per-tensor report.

    Raises:
        WeightMismatch: the weights do not fit (with ``strict``: do not fit completely), naming
            the tensors.
    """
    if isinstance(module_or_spec, torch.nn.Module):
        module = twin = module_or_spec
        shape = tuple(input_shape or (3, 224, 224))
    else:
        module, graph = _spec_module(module_or_spec, **spec_kwargs)
        twin, _ = _spec_module(graph, device="meta")  # the same names and order, run for free
        shape = graph.input_shape.dims
    if isinstance(state_dict, (str, Path)):
        state_dict = read_weights(state_dict)
    report = map_weights(twin, state_dict, shape, source)
    if not report.ok and strict:
        raise WeightMismatch(report, "the weights do not fit the spec")
    weights = state_dict.state_dict() if isinstance(state_dict, torch.nn.Module) else _strip_wrapper(state_dict)
    module.load_state_dict(report.state_dict(weights), strict=False)
    module.weight_map = report
    return module


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (``weights_only=True``) or a ``.safetensors`` file."""
    from archdsl.evaluation import EvalError, load_weights

    try:
        return load_weights(path)
    except EvalError as err:
        raise WeightMismatch(WeightMap(problems=[str(err)]), "cannot read the weights") from None


def convert(spec: str | Path | ArchGraph, source_file: str | Path, source: str = "auto", *,
            strict: bool = True, **spec_kwargs: Any) -> tuple[dict[str, torch.Tensor], WeightMap]:
    """Foreign weights as a state dict for ``spec``'s module (and the emitted source's), with the
    report. The target is built on the meta device: nothing is allocated but the weights read.

    Raises:
        WeightMismatch: as for :func:`load_pretrained`.
    """
    module, graph = _spec_module(spec, device="meta", **spec_kwargs)
    weights = _strip_wrapper(read_weights(source_file))
    report = map_weights(module, weights, graph.input_shape.dims, source)
    if not report.ok and strict:
        raise WeightMismatch(report, f"the weights in {source_file} do not fit {graph.name}")
    return report.state_dict(weights), report
