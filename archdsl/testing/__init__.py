"""Property testing for architectures: Hypothesis strategies and end-to-end checks.

Strategies generate random *valid* networks -- chains of conv / pool / fc / bn / LRN /
dropout / activations, residual units with each shortcut option, blocks with parameters,
repeats -- as spec text written in varied styles, or as checked graphs::

    from hypothesis import given, settings
    import archdsl.testing as at

    @settings(max_examples=50, deadline=None)
    @given(at.graphs(max_width=16, allow_residual=True))
    def test_my_pass_keeps_the_function(graph):
        at.check_lowering(graph)   # shapes, parameters and MACs against PyTorch

:func:`check_lowering` runs a graph through PyTorch and checks every node's inferred shape,
the parameter count and the MACs against what the lowered module really does. For fuzzing,
:func:`mutated_specs`, :func:`token_soup` and :func:`bundled_sources` give hostile text, and
:func:`hostile_images` hostile image files.

The package holds four modules: :mod:`~archdsl.testing.generator` (random valid nets),
:mod:`~archdsl.testing.dags` (random DAGs: branches merged by concat, add and multiply),
:mod:`~archdsl.testing.hostile` (text and images for fuzzing) and :mod:`~archdsl.testing.checks` (checks
against PyTorch); everything public is re-exported here.

Needs ``hypothesis`` (installed with the ``test`` extra); archdsl itself does not import this module.
"""

from archdsl.testing.checks import (
    check_lowering, count_macs, count_params, emitted_shapes, real_shapes, source_module,
)
from archdsl.testing.dags import dag_specs
from archdsl.testing.generator import KINDS, SHORTCUTS, Config, GeneratedNet, graphs, nets, specs
from archdsl.testing.hostile import (
    BOMBS, TOKENS, bundled_sources, hostile_images, hostile_text, limit_probes, mutated_specs, small_images,
    token_soup,
)

__all__ = [
    "Config", "GeneratedNet", "KINDS", "SHORTCUTS", "TOKENS",
    "nets", "specs", "graphs", "dag_specs",
    "bundled_sources", "mutated_specs", "token_soup", "hostile_text", "limit_probes",
    "BOMBS", "small_images", "hostile_images",
    "check_lowering", "count_macs", "count_params", "real_shapes", "source_module", "emitted_shapes",
]
