"""Property tests on random DAGs (archdsl.testing.dags): branches merged by concat, add and
multiply, named values, repeated groups and loop indices, ceil-mode and adaptive pooling,
channel shuffles and the gates' activations. Every drawn spec must load, and its
inferred shapes, parameters and MACs must equal what PyTorch's module reports; the emitted
source must compute the same; the printer must round-trip it; fusion must leave it verified.

Bounded: 300 graphs checked against PyTorch, 750 in all (counted with pytest's
--hypothesis-show-statistics), no deadline (graph sizes vary), no long shrinking.
"""

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

import archdsl
from archdsl.frontend.parser import parse
from archdsl.frontend.printer import format_text
from archdsl.ir import verify
from archdsl.testing import check_lowering
from archdsl.testing.dags import dag_specs

# Drawing a DAG takes many small choices, so some draws are slow to generate; that is the
# generator's cost, not the code under test, hence the too_slow health check is off.
BOUNDED = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=300, **BOUNDED)
@given(dag_specs())
def test_random_dags_lower_as_analysed(dag):
    graph = dag.graph()
    assert graph.output_shape.dims == dag.output
    counted = check_lowering(graph)  # shapes, parameters, MACs, emitted source vs PyTorch
    assert counted["nodes"] >= 1


@pytest.mark.parametrize("wanted", ["concat", "add", "multiply", "sigmoid", "hardsigmoid", "hardswish", "silu",
                                    "relu6", "adaptive_avgpool", "shuffle", "ceil"])
def test_random_dags_hold_every_merge_and_graph_op(wanted):
    # The draws above are only as good as what they hold: each kind of merge and each op the
    # graph language added turns up within the first hundred draws.
    def holds(dag):
        ops = {d["op"].value for _, d in dag.graph().ops()}
        return wanted in ops or (wanted == "ceil" and "ceil=true" in dag.text)

    found = find(dag_specs(), holds, settings=settings(max_examples=100, phases=[Phase.generate], **BOUNDED))
    assert holds(found)


@settings(max_examples=150, **BOUNDED)
@given(dag_specs())
def test_random_dags_round_trip_through_the_printer(dag):
    canonical = format_text(dag.text)
    assert format_text(canonical) == canonical
    assert parse(canonical).nets == parse(dag.text).nets
    a, b = dag.graph(), archdsl.loads(canonical)
    assert [(n, d["op"], d["attrs"], d["args"]) for n, d in a.ops()] == \
           [(n, d["op"], d["attrs"], d["args"]) for n, d in b.ops()]


@settings(max_examples=300, **BOUNDED)
@given(dag_specs())
def test_fusion_on_random_dags_fuses_only_sole_consumers(dag):
    from archdsl.passes.fuse import TRITON_RULES
    from archdsl.passes.rewrite import rewrite

    graph = dag.graph()
    fused, _ = rewrite(graph, TRITON_RULES)
    verify(fused)
    assert fused.params == graph.params and fused.macs == graph.macs
    for name, data in fused.nodes(data=True):
        if data["op"] is archdsl.Op.FUSED_CONV:
            # what the conv was fused with fed nothing else: the conv's own users in the
            # original graph were exactly one (the BN or ReLU it absorbed)
            assert len(graph.users(name)) == 1
