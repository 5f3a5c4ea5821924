"""The fully-convolutional form of a net, for dense evaluation (Simonyan & Zisserman 2014, 3.2).

:func:`fc_to_conv` turns the fully connected layers of a checked graph into convolutions so
that the net slides over an image larger than the one it was specified for and yields a
**class score map** (N x classes x h x w) instead of one vector:

* The first fc after the conv stack sees a C x k x k map at the spec's own input size; it
  becomes a k x k convolution with no padding (7x7 on VGG at 224, 6x6 on AlexNet). Every
  later fc sees a vector and becomes a 1x1 convolution. The kernel size comes from the graph
  the pass is given, built at the spec's input size, never from the size the dense form is
  run at (``dense_input``), so a VGG built at 224 and run at 384 gives a 6x6 map.
* ReLU, dropout, softmax (over channels, dim 1) and residual additions apply per location and
  carry over unchanged; batch norm on fc outputs becomes 2-D batch norm with the same state.
* On nets that pool globally before the classifier (ResNets: ``gap; fc; softmax``) the
  classifier becomes a 1x1 convolution applied *before* the pooling (a linear map commutes
  with the spatial average), and the pooling is removed: the dense output is the score map
  **before** global pooling, and spatially averaging it (the evaluation protocol's job, see
  :mod:`archdsl.evaluation`) gives back exactly the ordinary net's pre-softmax scores. Only
  ops that commute with the spatial average in eval mode may follow the pooling for this
  to hold: fc / 1x1 convolutions, batch norm, dropout, and a softmax that ends the net (kept
  per location). Anything else after a global pooling (a ReLU between two fc layers, say) has
  no score map: the pass raises :class:`~archdsl.errors.SpecError` at that op.

Each converted node keeps its name (so ``state_dict`` keys are unchanged) and records where it
came from in ``attrs["from_linear"] = (C, kh, kw)``: the fc's input read as a map, i.e. how its
``(out, C*kh*kw)`` weight matrix reshapes into an ``(out, C, kh, kw)`` kernel (the fc flattens
its input in (C, H, W) order, which is exactly the kernel's layout). Both PyTorch lowerings
read this mark and reshape such 2-D weights when a state dict is loaded, so the dense module
accepts the ordinary module's ``state_dict()`` as it is. The graph-level ``dense`` entry holds
the input shape the fc layers were converted at.
"""

from __future__ import annotations

import networkx as nx

from archdsl.errors import SpecError
from archdsl.ir import ArchGraph, Op, Shape, verify
from archdsl.ops import COMMUTES_WITH_AVERAGE, describe
from archdsl.passes.analysis import analyse
from archdsl.passes.shapes import infer_shapes


def is_dense(graph: ArchGraph) -> bool:
    """Whether ``graph`` is already in fully-convolutional form (the result of :func:`fc_to_conv`)."""
    return graph.graph.get("dense") is not None


def fc_to_conv(graph: ArchGraph, dense_input: Shape | str | None = None) -> ArchGraph:
    """The fully-convolutional form of ``graph`` (a new graph; ``graph`` is left as it is).

    Args:
        graph: a checked graph built at the spec's own input size, the size its fc layers are
            defined at. An already dense graph is copied (and re-inferred at ``dense_input``).
        dense_input: the input shape to infer the dense form's shapes at (``"3x384x384"``);
            default the graph's own. It changes the score map's size, never the kernels.

    Returns:
        A checked, analysed graph whose output is the class score map, N x classes x h x w
        (the map before global pooling on nets that pool globally before the classifier).

    Raises:
        SpecError: where the dense form is undefined (ops after a global pooling that do not
            commute with it), or where ``dense_input`` is too small for the converted kernels.
    """
    if isinstance(dense_input, str):
        dense_input = Shape.parse(dense_input)
    new = graph.copy()
    if not is_dense(graph):
        for name in new.order():
            data = new.nodes[name]
            if data["op"] is Op.LINEAR:
                x = graph.shape(data["args"][0])
                data["op"] = Op.CONV
                data["attrs"] = {
                    "out_channels": data["attrs"]["out_features"],
                    "kernel": (x.h, x.w), "stride": (1, 1), "padding": (0, 0),
                    "groups": 1, "bias": data["attrs"]["bias"],
                    "from_linear": (x.c, x.h, x.w),
                }
        _move_global_pooling(new)
        new.graph["dense"] = graph.input_shape
    return _reinfer(new, dense_input)


def _is_pointwise_conv(attrs: dict) -> bool:
    return attrs["kernel"] == (1, 1) and attrs["stride"] == (1, 1) and attrs["padding"] == (0, 0)


def _move_global_pooling(graph: ArchGraph) -> None:
    """Remove the global pooling that the classifier follows, so the output is the score map.

    Walks back from the output through ops that commute with the spatial average; each global
    pooling met on the way is removed (a pooling of a pooled map is the same pooling). Any
    global pooling left is behind an op that does not commute with it: an error.
    """
    node = graph.graph["output"]
    while True:
        data = graph.nodes[node]
        op = data["op"]
        if op is Op.GLOBAL_AVGPOOL:
            (source,) = data["args"]
            graph.replace_uses(node, source)
            graph.remove_node(node)
            node = source
            continue
        if op in COMMUTES_WITH_AVERAGE or (op is Op.SOFTMAX and node == graph.graph["output"]) \
                or (op is Op.CONV and _is_pointwise_conv(data["attrs"])):
            node = data["args"][0]
            continue
        break
    blocker = node  # the first op, back from the output, that does not commute
    # A pooling that only makes a gate (squeeze-and-excitation: a map times gate(gap(map)))
    # has a dense form: the gate pools the whole image it is run on.
    pools = [n for n in graph.order() if graph.nodes[n]["op"] is Op.GLOBAL_AVGPOOL and not _gates_only(graph, n)]
    if pools:
        pool = pools[-1]
        if blocker not in nx.descendants(graph, pool):
            blocker = graph.users(pool)[0]
        after = graph.nodes[blocker]
        if after["op"] is Op.SOFTMAX:
            what = "a softmax that does not end the net"
        elif "from_linear" in after["attrs"]:
            what = f"fc-{after['attrs']['out_channels']}"
        else:
            what = describe(after["op"], after["attrs"])
        err = SpecError(
            f"the dense form of net {graph.name!r} has no class score map: global average pooling "
            f"is followed by {what}, which does not commute with the spatial average, so the "
            "pooling cannot move past the classifier (only fc layers, 1x1 convolutions, batch "
            "norm, dropout and a final softmax may follow it)", after["span"])
        span = graph.nodes[pool]["span"]
        raise err.with_note("the global average pooling", span) if span else err


def _gates_only(graph: ArchGraph, pool: str) -> bool:
    """Whether everything ``pool`` computes reaches the output only as the gate (second input)
    of a multiply, as in squeeze-and-excitation."""
    gate, stack, exits = {pool}, [pool], 0
    while stack:
        node = stack.pop()
        if node == graph.graph["output"]:
            return False
        for user in graph.users(node):
            data = graph.nodes[user]
            if data["op"] is Op.MULTIPLY and data["args"][1] == node and data["args"][0] != node:
                exits += 1
            elif user not in gate:
                gate.add(user)
                stack.append(user)
    return exits > 0


def _reinfer(graph: ArchGraph, dense_input: Shape | None) -> ArchGraph:
    spec_input = graph.graph["dense"]
    if dense_input is not None:
        if not dense_input.is_map or dense_input.c != spec_input.c:
            raise SpecError(f"the dense form of net {graph.name!r} takes {spec_input.c}-channel "
                            f"images, found input {dense_input}", graph.graph.get("spec"))
        graph.nodes[graph.graph["input"]]["attrs"]["shape"] = dense_input
    try:
        infer_shapes(graph)
    except SpecError as err:
        span = graph.graph.get("spec")
        note = (f"in the dense form of net {graph.name!r} at input {graph.input_shape} (its fc "
                f"layers are converted at {spec_input}; the dense input must be at least as large)")
        raise (err.with_note(note, span) if span else err) from None
    analyse(graph)
    verify(graph)
    return graph
