"""Hostile and broken input: the front end raises SpecError (with a line and a column) and
nothing else, after a bounded amount of work and memory; the command line never shows a
traceback; no text of a spec reaches generated code or a terminal except validated names,
numbers and escaped strings; outputs are written atomically and only ever replace a regular file.

"Refused quickly" is asserted as a bound on the work done (tokens parsed, expansion steps,
nodes made, bytes read: :func:`archdsl.limits.counting`), never as a time, so the tests hold
on a busy machine; ``benchmarks/bench_limits.py`` shows the times.

ARCHDSL_EXAMPLES=N multiplies the number of fuzzing examples by N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import io
import math
import os
import re
import stat
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
import archdsl.testing as at
from archdsl import Limits, SpecError
from archdsl.cli import check_output, main, write_atomic
from archdsl.errors import UsageError
from archdsl.frontend.loader import SPECS_DIR
from archdsl.limits import DEFAULT, NESTING_CEILING, counting

ROOT = Path(__file__).resolve().parent.parent
_SCALE = int(os.environ.get("ARCHDSL_EXAMPLES", "1"))
#: Fuzzing runs under small limits, so that no example (and no step of shrinking a failing
#: one) costs more than a few thousand nodes or steps: a failure shrinks in seconds.
FUZZ = Limits(max_tokens=3000, max_nodes=2000, max_steps=20_000)


def examples(n: int):
    # deadline=None: a deadline is a wall-clock assert, flaky on a busy machine; the work of
    # an example is bounded by FUZZ instead. Suppressed health checks: too_slow measures
    # time too; data_too_large fires on the generator's nested nets, which are meant to be
    # large; function_scoped_fixture: tmp_path_factory makes a fresh folder per example.
    return settings(max_examples=n * _SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def assert_bounded(work, limits: Limits = DEFAULT) -> None:
    """The work a call did stays within what its limits allow: tokens parsed, expansion steps
    (the step that crosses the limit weighs at most one statement, at most max_tokens) and
    nodes made."""
    assert work.tokens <= limits.max_tokens, work
    assert work.steps <= limits.max_steps + limits.max_tokens, work
    assert work.nodes <= limits.max_nodes, work


def spec_error(text: str, **kwargs) -> SpecError:
    """loads(text) must raise SpecError, pointing into the text, after bounded work."""
    with counting() as work, pytest.raises(SpecError) as info:
        archdsl.loads(text, **kwargs)
    assert_bounded(work, kwargs.get("limits", DEFAULT))
    assert_located(info.value, text)
    return info.value


def assert_located(err: SpecError, text: str | None = None) -> None:
    assert isinstance(err.line, int) and err.line >= 1, err
    assert isinstance(err.column, int) and err.column >= 1, err
    assert err.file
    if text is not None and err.file == "<string>":
        assert err.line <= text.count("\n") + 2, err  # the parser adds one new line at the end
    str(err)  # renders


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def run_subprocess(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The timeout catches a hang (a FIFO read, say), not slowness: far above any busy machine.
    return subprocess.run([sys.executable, "-m", "archdsl", *map(str, argv)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


# -- fuzzing the front end ----------------------------------------------------------------------
@examples(2000)
@given(at.hostile_text())
def test_loads_raises_only_spec_error(text):
    with counting() as work:
        try:
            archdsl.loads(text, base_dir=SPECS_DIR, limits=FUZZ)  # so that the bundled imports resolve
        except SpecError as err:
            assert_located(err, text)
    assert_bounded(work, FUZZ)


@examples(300)
@given(at.hostile_text())
def test_whatever_loads_lowers_to_source_that_imports_and_agrees(text):
    """Hostile text that loads (names that once shadowed an import or a method, labels, odd
    values) lowers to a module and to emitted source that imports, runs, has the module's
    state_dict keys and computes its output (check_lowering). Small graphs only, to stay fast."""
    try:
        graph = archdsl.loads(text, base_dir=SPECS_DIR, limits=FUZZ)
    except SpecError:
        return
    shape = graph.input_shape
    if len(graph) > 40 or graph.params > 10**6 or shape.c * shape.h * shape.w > 3 * 64 * 64:
        return
    # and small activations: padding can grow a map (pad=30000 on 2x2 is a 60002x60002 map)
    if max(math.prod(graph.shape(name).dims) for name in graph) > 64 * 64 * 64:
        return
    at.check_lowering(graph)


@pytest.mark.parametrize("layers,culprit", [("conv1-1 pad=65536", 0), ("conv1-1 pad=20000; conv1-1 pad=20000", 1)])
def test_a_map_grown_past_max_spatial_by_padding_is_refused_at_its_layer(layers, culprit):
    """max_spatial bounds every feature map, not only the input: padding alone can make a map
    of 131,073 x 131,073 from a 2x2 input (137 GB for one channel, found by the fuzzer)."""
    text = f"net grown : 1x2x2 {{ {layers}; gap; fc-2 }}"
    with pytest.raises(SpecError, match=r"output map .* is larger than 65536 \(limit max_spatial\)") as err:
        archdsl.loads(text)
    column = [m.start() for m in re.finditer("conv1-1", text)][culprit] + 1
    assert (err.value.span.line, err.value.span.column) == (1, column)
    archdsl.loads("net fine : 1x2x2 { conv1-1 pad=16000; gap; fc-2 }")  # 32002 x 32002: within the limit


@examples(60)
@given(at.limit_probes())
def test_texts_growing_past_the_limits_are_refused_after_bounded_work(text):
    """At the default limits: every probe compiles or is refused, and the work stays bounded
    (the parser never sees more than max_tokens; expansion stops at max_steps and max_nodes)."""
    with counting() as work:
        try:
            archdsl.loads(text)
        except SpecError as err:
            assert_located(err, text)
    assert_bounded(work)


@examples(500)
@given(at.mutated_specs(max_mutations=2), st.sampled_from([None, "3x17x23", (1, 5, 5)]))
def test_mutated_bundled_specs_compile_or_fail_cleanly(text, shape):
    try:
        graph = archdsl.loads(text, base_dir=SPECS_DIR, input=shape)
    except SpecError as err:
        assert_located(err, text)
    else:
        archdsl.verify(graph)


@examples(300)
@given(at.hostile_text())
def test_cli_exits_2_without_a_traceback(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("cli")
    spec = folder / "fuzz.arch"
    spec.write_text(text, encoding="utf-8")
    for command in ("check", "fmt"):
        code, out, err = run_cli(command, spec)
        assert "Traceback" not in err + out
        assert code in (0, 2), err
        if code == 2:  # file:line:col: error: ..., in this file or one it imports
            assert re.match(r"(\S[^\n]*:\d+:\d+: )?error: ", err), err


@pytest.mark.parametrize("content", ids=["utf16", "nul", "binary", "parentheses"], argvalues=[
    b"\xff\xfe\x00n\x00e\x00t",  # UTF-16, not UTF-8
    b"net a : 3x8x8 { conv3-4 \x00\x00 }",  # NUL bytes
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # binary
    b"net a : 3x8x8 {" + b"(" * 100_000 + b"}",
])
def test_cli_subprocess_on_bad_files(tmp_path, content):
    spec = tmp_path / "bad.arch"
    spec.write_bytes(content)
    result = run_subprocess("check", spec)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{spec}:") or result.stderr.startswith("error:")


def test_cli_subprocess_missing_file_and_directory(tmp_path):
    for target in (tmp_path / "missing.arch", tmp_path):
        result = run_subprocess("build", target, "-o", tmp_path / "out.py")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error:")
    assert not (tmp_path / "out.py").exists()


def test_internal_error_is_reported_with_exit_3(monkeypatch):
    import archdsl.cli as cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "check", dataclasses.replace(cli.COMMANDS["check"], run=broken))
    code, out, err = run_cli("check", "vgg_a")
    assert code == 3
    assert "internal error" in err and "KeyError" in err and "report" in err
    assert "Traceback" not in err


# -- nesting and recursion -----------------------------------------------------------------------
DEEP = 20_000


@pytest.mark.parametrize("name, text", [
    pytest.param(*case, id=case[0]) for case in [
    ("parentheses", "net a : 3x8x8 { conv3-{" + "(" * DEEP + "4" + ")" * DEEP + "} }"),
    ("unclosed parentheses", "net a : 3x8x8 { conv3-{" + "(" * DEEP + "4 } }"),
    ("unary minus", "net a : 3x8x8 { conv3-{" + "-" * DEEP + "4} }"),
    ("long sum", "net a : 3x8x8 { conv3-{" + "+".join(["1"] * DEEP) + "} }"),
    ("long product", "net a : 3x8x8 { conv3-{" + "*".join(["1"] * DEEP) + "} }"),
    ("braces", "net a : 3x8x8 { conv3-" + "{" * DEEP + "4" + "}" * DEEP + " }"),
    ("residual units", "net a : 3x8x8 {" + "residual {" * DEEP + "conv3-3" + "}" * DEEP + "}"),
    ("unclosed residual units", "net a : 3x8x8 {" + "residual {" * DEEP),
    ("block bodies", "block b() {" * 2000 + "}" * 2000 + "net a : 3x8x8 { relu }"),
]])
def test_deep_nesting_is_a_clear_error_or_fine(name, text):
    # At the default limits, the parser never sees these texts: too many tokens.
    err = spec_error(text)
    assert "max_tokens" in err.message
    # With max_tokens raised, the nesting checks refuse them (the parser's own, or the
    # expansion's) before anything recurses that deep.
    many = Limits(max_tokens=10 ** 6)
    with counting() as work:
        try:
            archdsl.loads(text, limits=many)
        except SpecError as err:
            assert_located(err, text)
            if name in ("unary minus", "long sum", "long product", "residual units"):
                assert "max_nesting" in str(err)
    assert_bounded(work, many)


def test_nesting_limits_stop_below_what_the_recursion_can_take():
    for name in ("max_nesting", "max_call_depth"):
        with pytest.raises(ValueError, match=f"{name} can be at most {NESTING_CEILING}"):
            Limits(**{name: 100_000})
        code, _, err = run_cli("check", "vgg_a", "--limit", f"{name}=100000")
        assert code == 2 and f"at most {NESTING_CEILING}" in err and "Traceback" not in err
    # 600 nested residual units with the limits as high as they go: a clear error
    deep = "net a : 3x8x8 {" + "residual {" * 600 + "conv3-3" + "}" * 600 + "}"
    top = Limits(max_nesting=NESTING_CEILING, max_call_depth=NESTING_CEILING)
    assert "max_nesting" in spec_error(deep, limits=top).message


@pytest.mark.parametrize("kind", ["residual units", "parentheses", "operators", "block calls"])
def test_nesting_at_the_ceiling_compiles_emits_and_prints(kind):
    """Nesting just inside the highest limits goes through every stage that recurses (the
    parser's tree, expansion, lowering, emitted source, the summary) without RecursionError."""
    from archdsl.codegen.torch_source import emit_source
    from archdsl.pipeline import lower_graph
    from archdsl.summary import table

    n = NESTING_CEILING - 2
    text = {
        "residual units": "net a : 3x4x4 {" + "residual {" * n + "conv1-3" + "}" * n + "}",
        "parentheses": "net a : 3x4x4 { conv3-{" + "(" * n + "4" + ")" * n + "} }",
        "operators": "net a : 3x4x4 { conv3-{" + "+".join(["1"] * n) + "} }",
        "block calls": "".join(f"block b{i}() {{ b{i + 1}() }}\n" for i in range(n)) + f"block b{n}() {{ conv1-3 }}\n"
                       "net a : 3x4x4 { b0() }",
    }[kind]
    top = Limits(max_nesting=NESTING_CEILING, max_call_depth=NESTING_CEILING)
    graph = archdsl.loads(text, limits=top)
    archdsl.compile(graph)
    compile(emit_source(lower_graph(graph)), "<emitted>", "exec")
    assert table(graph)


def test_nesting_limit_is_configurable():
    text = "net a : 3x8x8 {" + "residual {" * 10 + "conv3-3" + "}" * 10 + "}"
    assert len(archdsl.loads(text)) > 10
    err = spec_error(text, limits=Limits(max_nesting=5))
    assert "max_nesting" in err.message and err.line == 1
    # an expression of 70 terms is within a raised limit
    long_sum = "net a : 3x8x8 { conv3-{" + "+".join(["1"] * 70) + "} }"
    spec_error(long_sum)
    assert archdsl.loads(long_sum, limits=Limits(max_nesting=100)).nodes["conv1"]["attrs"]["out_channels"] == 70


def test_block_recursion_and_call_depth():
    assert "calls itself" in spec_error("block a() { a() }\nnet n : 3x8x8 { a() }").message
    err = spec_error("block a() { b() }\nblock b() { a() }\nnet n : 3x8x8 { a() }")
    assert "a -> b -> a" in err.message
    chain = "".join(f"block b{i}() {{ b{i + 1}() }}\n" for i in range(40)) + "block b40() { relu }\n"
    err = spec_error(chain + "net n : 3x8x8 { b0() }")
    assert "max_call_depth" in err.message
    assert len(archdsl.loads(chain + "net n : 3x8x8 { b0() }", limits=Limits(max_call_depth=64))) == 2
    # residual units inside blocks inside residual units count together
    nested = "block r() { residual { relu; r2() } }\nblock r2() { residual { relu } }\n"
    archdsl.loads(nested + "net n : 3x8x8 { r() }")
    deep = "".join(f"block b{i}() {{ residual {{ residual {{ b{i + 1}() }} }} }}\n" for i in range(30))
    err = spec_error(deep + "block b30() { relu }\nnet n : 3x8x8 { b0() }")
    assert "max_nesting" in err.message


# -- resource limits ---------------------------------------------------------------------------------
RESOURCE_CASES = [pytest.param(*case, id=f"{i}-{case[1]}") for i, case in enumerate([
    ("net a : 3x8x8 { conv3-64 x1000000000 }", "max_repeat"),
    ("net a : 3x8x8 { conv3-1000000000 }", "max_width"),
    ("net a : 3x8x8 { fc-{4294967296*4294967296} }", "too large"),
    ("net a : 3x8x8 { conv3-" + "9" * 5000 + " }", "too large"),
    ("net a : 3x8x8 { dropout p={1e999/1} }", "too large"),
    ("net a : 3x8x8 { conv3-{(1e999-1e999)/1} }", "not a number"),
    ("net a : 3x" + "9" * 5000 + "x8 { relu }", "out of range"),
    ("net a : 3x100000x8 { relu }", "max_spatial"),
    ("block a() { conv3-4 x10000 }\nnet n : 3x8x8 { a() x10000 }", "max_nodes"),
    ("block a() { relu x0 }\nblock b() { a() x10000 }\nblock c() { b() x10000 }\n"
     "net n : 3x8x8 { c() x10000; relu }", "max_steps"),
    ("block a() { relu x{" + "+".join(["0"] * 60) + "} }\nblock b() { a() x10000 }\n"
     "net n : 3x8x8 { b() x10000; relu }", "max_steps"),
    ("net a : 3x8x8 { conv3-{" + "+1" * 120_000 + "} }", "max_tokens"),  # 240 KB of {1+1+...}
    ("net a : 3x8x8 {\n" + "conv3-4\n" * 30_000 + "}\n", "max_tokens"),  # 240 KB of statements
    ("net a : 3x8x8 { conv3-4 x10000 }", "max_nodes"),  # 32 bytes that made 20,001 nodes
    ("net a : 3x8x8 { conv" + "9" * 4301 + "-4 }", "window size"),
    ("net a : 3x8x8 { conv3x" + "9" * 4301 + "-4 }", "window size"),
    ("net a : 3x8x8 { maxpool" + "9" * 4301 + " }", "window size"),
])]


@pytest.mark.parametrize("text, limit", RESOURCE_CASES)
def test_resource_limits_give_a_clear_error_quickly(text, limit):
    err = spec_error(text)
    assert limit in err.message


def test_resource_limits_hold_under_a_memory_cap():
    """The same specs in a process whose address space is capped at 1 GiB: each ends in a
    SpecError with a line, none in MemoryError."""
    cases = [case.values[0] for case in RESOURCE_CASES] + ["net a : 3x8x8 {\n" + "conv3-4\n" * 1_300_000 + "}\n"]
    script = (
        "import ast, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "import archdsl\n"
        "for text in ast.literal_eval(sys.stdin.read()):\n"
        "    try:\n"
        "        archdsl.loads(text)\n"
        "    except archdsl.SpecError as err:\n"
        "        print('SpecError at line', err.line)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], input=repr(cases), capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(cases) and all(re.fullmatch(r"SpecError at line \d+", line) for line in lines)


def test_ten_megabyte_spec(tmp_path):
    text = "net a : 3x8x8 {\n" + "conv3-4\n" * 1_300_000 + "}\n"
    assert "max_source_bytes" in spec_error(text).message
    big = tmp_path / "big.arch"
    big.write_text(text)
    with counting() as work, pytest.raises(SpecError, match="max_source_bytes") as info:
        archdsl.load(big)
    assert work.bytes_read == 0 and work.tokens == 0  # refused by its size, before reading
    assert_located(info.value)
    code, _, err = run_cli("check", big)
    assert code == 2 and "max_source_bytes" in err
    code, _, err = run_cli("check", big, "--limit", "max_source_bytes=100")
    assert code == 2 and "limit of 100 " in err


def test_huge_fc_fails_on_max_params_without_allocating():
    graph = archdsl.loads("net a : 16x256x256 { fc-1000000 }")  # 10^12 weights
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match="max_params") as info:
            archdsl.compile(graph)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing of the 4 TB was allocated
    assert_located(info.value)
    with pytest.raises(SpecError, match="max_params"):
        archdsl.compile(archdsl.loads("net a : 3x8x8 { fc-100 }"), limits=Limits(max_params=1000))


def test_limits_are_configurable_and_checked():
    text = "net a : 3x8x8 { conv3-4 x5 }"
    assert len(archdsl.loads(text)) == 10
    assert "max_nodes" in spec_error(text, limits=Limits(max_nodes=4)).message
    assert "max_repeat" in spec_error(text, limits=Limits(max_repeat=4)).message
    assert "max_steps" in spec_error(text, limits=Limits(max_steps=5)).message
    with pytest.raises(ValueError):
        Limits(max_nodes=-1)
    with pytest.raises(ValueError):
        Limits().updated(bogus=1)
    code, _, err = run_cli("check", "cifar_resnet", "--limit", "max_nodes=20")
    assert code == 2 and "max_nodes" in err
    for bad in ("bogus=1", "max_nodes=-5", "max_nodes=lots"):
        code, _, err = run_cli("check", "cifar_resnet", "--limit", bad)
        assert code == 2 and err.startswith("error: --limit") and "Traceback" not in err
    assert run_cli("check", "cifar_resnet", "--limit", "max_nodes=1000000")[0] == 0


# -- names that reach emitted code -----------------------------------------------------------------
RESERVED_LABELS = ["to", "forward", "eval", "train", "float", "cuda", "state_dict", "training", "type", "apply",
                   "paths", "backend", "block", "_modules", "_parameters", "_x", "T_destination", "None", "class",
                   "lambda", "self", "x", "F", "torch", "nn", "to_", "forward__", "_"]


@pytest.mark.parametrize("how", ["layer", "call"])
def test_labels_never_replace_a_module_attribute_or_break_the_source(how):
    """A label is the attribute of its layer or block call (``stem = conv7-64/2``): named like a
    method of nn.Module (``to``, ``forward``), an attribute of the module (``training``,
    ``paths``) or a keyword (``class``), it once ended in KeyError (exit 3) or a SyntaxError in
    the emitted source. ``to`` and ``to_`` stay two attributes."""
    for label in RESERVED_LABELS:
        if how == "layer":
            text = f"net a : 3x8x8 {{ {label} = conv3-4; to_ = conv3-4; gap; fc-3 }}"
        else:
            text = f"block b() {{ conv3-4 }}\nnet a : 3x8x8 {{ {label} = b(); to_ = b(); gap; fc-3 }}"
        try:
            graph = archdsl.loads(text)
        except SpecError as err:  # a keyword may be refused as a name; then clearly
            assert_located(err, text)
            continue
        at.check_lowering(graph)  # the emitted source too, against the in-process module
        model = archdsl.compile(graph)
        model.train().eval().float()
        assert len(model.state_dict()) == 6, (label, list(model.state_dict()))
        assert tuple(model(torch.zeros(1, 3, 8, 8)).shape) == (1, 3)
        assert isinstance(model.training, bool) and callable(model.to) and callable(model.forward)


def test_reserved_attributes_cover_what_torch_defines():
    """The front end keeps its list of nn.Module's attributes without importing torch: every
    public name the installed torch defines on a module is on it."""
    from archdsl.frontend.expand import _MODULE_ATTRIBUTES

    defined = set(dir(torch.nn.Module)) | set(dir(torch.nn.Module()))
    public = {n for n in defined if not n.startswith("_")}
    assert public <= _MODULE_ATTRIBUTES, sorted(public - _MODULE_ATTRIBUTES)
    model = archdsl.compile(archdsl.loads("net a : 3x8x8 { conv3-4 }"))
    own = {n for n in vars(model) if not n.startswith("_")}
    assert own <= _MODULE_ATTRIBUTES, sorted(own - _MODULE_ATTRIBUTES)


# -- numbers that reach a layer ------------------------------------------------------------------
@pytest.mark.parametrize("layer, says", [
    ("lrn alpha=1e308 size=2", "at most"),  # once emitted as alpha=inf: a NameError on import
    ("lrn alpha={1e999/1}", "too large"),
    ("lrn k={(1e999-1e999)/1}", "not a number"),
    ("lrn beta=200", "zeros whatever its input"),  # 2 ** 200 overflows float32: the module output zeros
    ("lrn k=1e6 beta=10", "zeros whatever its input"),
    ("lrn k=0", "NaN"),  # 0 / 0 over a window of zeros, as after a ReLU
    ("bn eps=0", "at least 2**-126"),
    ("bn eps=1e-320", "at least 2**-126"),  # 0 in float32
    ("bn eps=1e300", "at most"),
    ("dropout p=1", "below 1"),
    ("dropout p={(1e999-1e999)/1}", "not a number"),
])
def test_non_finite_or_absurd_norm_and_dropout_values_are_spec_errors(tmp_path, layer, says):
    text = f"net a : 3x8x8 {{\n  conv3-4\n  {layer}\n  gap; fc-3\n}}\n"
    err = spec_error(text)
    assert says in err.message and err.line == 3, err
    spec = tmp_path / "a.arch"
    spec.write_text(text)
    code, _, err_text = run_cli("build", spec, "-o", tmp_path / "a.py")
    assert code == 2 and f"{spec}:3:" in err_text and "Traceback" not in err_text
    assert not (tmp_path / "a.py").exists()


@pytest.mark.parametrize("layer", ["lrn k=1e-30", "lrn k=0 beta=0", "lrn alpha=1e6 size=1000 mode=avg",
                                   "lrn k=10 beta=8", "bn eps=1e-30", "bn eps=1e6", "dropout p=0.9999999"])
def test_extreme_values_within_the_bounds_give_finite_outputs(layer):
    """Just inside the bounds, the module computes finite numbers that depend on the input,
    and the emitted source agrees with it."""
    graph = archdsl.loads(f"net a : 3x8x8 {{ conv3-4; {layer}; gap; fc-3 }}")
    at.check_lowering(graph)
    model = archdsl.compile(graph).eval()
    outputs = []
    for module in model.modules():
        if isinstance(module, (torch.nn.LocalResponseNorm, torch.nn.BatchNorm2d, torch.nn.Dropout)):
            module.register_forward_hook(lambda m, args, out: outputs.append(out))
    with torch.no_grad():
        y = model(torch.randn(4, 3, 8, 8))
    assert len(outputs) == 1 and torch.isfinite(y).all() and torch.isfinite(outputs[0]).all()
    assert outputs[0].abs().max() > 0  # not all zeros: the layer passes something on


# -- imports ---------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


NET = "net n : 3x8x8 { blk() }\n"


def import_error(folder, text, name="main.arch") -> SpecError:
    spec = folder / name
    spec.write_text(text)
    with pytest.raises(SpecError) as info:
        archdsl.load(spec)
    assert_located(info.value)
    code, _, err = run_cli("check", spec)
    assert code == 2 and "Traceback" not in err
    return info.value


def test_import_of_a_missing_file(folder):
    err = import_error(folder, 'import "nope.arch"\n' + NET)
    assert "cannot find" in err.message and err.line == 1 and err.file.endswith("main.arch")


def test_import_of_itself_and_cycles(folder):
    assert "import cycle: main.arch -> main.arch" in import_error(folder, 'import "main.arch"\n' + NET).message
    (folder / "a.arch").write_text('import "b.arch"\nblock blk() { relu }\n')
    (folder / "b.arch").write_text('import "a.arch"\nblock other() { relu }\n')
    err = import_error(folder, 'import "a.arch"\n' + NET)
    assert "import cycle: a.arch -> b.arch -> a.arch" in err.message and err.file.endswith("b.arch")
    (folder / "lib").mkdir()
    (folder / "lib" / "self.arch").write_text('import "self.arch"\nblock blk() { relu }\n')
    assert "import cycle" in import_error(folder, 'import "lib/self.arch"\n' + NET).message


def test_diamond_imports_are_fine(folder):
    (folder / "base.arch").write_text("block blk() { conv3-4 }\n")
    (folder / "l.arch").write_text('import "base.arch"\nblock left() { blk() }\n')
    (folder / "r.arch").write_text('import "base.arch"\nblock right() { blk() }\n')
    (folder / "main.arch").write_text('import "l.arch"\nimport "r.arch"\nnet n : 3x8x8 { left(); right() }\n')
    assert len(archdsl.load(folder / "main.arch")) == 4  # input, conv, relu, conv


@pytest.mark.parametrize("make, message", [
    (lambda f: (f / "lib.py").write_text("block blk() { relu }"), "an .arch file"),
    (lambda f: (f / "lib.arch").mkdir(), "not a file"),
    (lambda f: (f / "lib.arch").write_bytes(b"\xff\xfe\xfa block"), "not UTF-8"),
    (lambda f: (f / "lib.arch").write_bytes(b"block blk() { relu \x00 }"), "unexpected character"),
    (lambda f: (f / "lib.arch").write_text("net x : 3x8x8 { relu }"), "defines nets"),
    (lambda f: (f / "lib.arch").write_text("block blk() { relu }\n" + "#" * 300_000), "max_source_bytes"),
])
def test_bad_imported_files(folder, make, message):
    make(folder)
    target = "lib.py" if message == "an .arch file" else "lib.arch"
    err = import_error(folder, f'import "{target}"\n' + NET)
    assert message in err.message


@pytest.mark.parametrize("path, message", [
    ("a\x00b.arch", "embedded null byte"),
    ("a" * 300 + ".arch", "cannot use the imported path"),
    ("a/" * 2100 + "x.arch", "cannot use the imported path"),
    ("loop.arch", "loop"),
    ("fifo.arch", "not a file"),
    ("/", "an .arch file"),
])
def test_import_paths_that_cannot_be_opened(folder, path, message):
    (folder / "loop.arch").symlink_to("loop.arch")
    os.mkfifo(folder / "fifo.arch")  # reading it would block: it must not be opened
    err = import_error(folder, f'import "{path}"\n' + NET)
    assert message in err.message and err.line == 1
    code, _, err_text = run_cli("check", folder / "fifo.arch")
    assert code == 2 and "Traceback" not in err_text


# -- nothing from a spec runs as code ---------------------------------------------------------------
INJECTIONS = [
    'net x"""\n__import__("os").system("touch {marker}")\n""" : 3x8x8 {{ relu }}',
    "net a : 3x8x8 {{ relu }}\nblock b'); __import__('os').system('touch {marker}'); ('() {{ relu }}",
    "net a__import__('os').system('touch {marker}') : 3x8x8 {{ relu }}",
    'net a : 3x8x8 {{ conv3-4 pad="1); __import__(\'os\').system(\'touch {marker}\')#" }}',
    "net a : 3x8x8 {{ conv3-4 act={{__import__('os').system('touch {marker}')}} }}",
    'import "{marker}.arch\\"); import os; os.system(\\"touch {marker}"\nnet a : 3x8x8 {{ relu }}',
]


@pytest.mark.parametrize("template", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injected_names_never_reach_generated_code(tmp_path, template):
    marker = tmp_path / "pwned"
    spec = tmp_path / "evil.arch"
    spec.write_text(template.format(marker=marker))
    out = tmp_path / "out.py"
    code, _, err = run_cli("build", spec, "-o", out)
    assert code == 2 and "Traceback" not in err
    assert not out.exists() and not marker.exists()


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"built_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_built_module_with_hostile_parameter_values_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "tagged.arch"
    spec.write_text("block b(tag=x) { conv3-4 }\nnet tagged(tag=a, n=1) : 3x8x8 { b(); relu x{n} }\n")
    out = tmp_path / "out.py"
    payload = f'a"""\n__import__("os").system("touch {marker}")\n"""'
    code, _, err = run_cli("build", spec, "-o", out, "--set", f"tag={payload}", "--set", "n=1")
    assert code == 0, err
    source = out.read_text()
    assert "__import__" not in source and "system" not in source
    module = import_file(out)
    assert not marker.exists()
    import torch

    net = module.Tagged()
    assert tuple(net(torch.zeros(1, 3, 8, 8)).shape) == (1, 4, 8, 8)


def test_emitted_source_of_a_graph_with_a_hostile_name(tmp_path):
    from archdsl.codegen.torch_source import emit_source

    marker = tmp_path / "pwned"
    graph = archdsl.loads("net a : 3x8x8 { conv3-4 }")
    graph.graph["name"] = f'a"""\n__import__("os").system("touch {marker}")\n"""'
    graph.graph["params"] = {"k": f'"""; __import__("os").system("touch {marker}"); """'}
    out = tmp_path / "hostile.py"
    out.write_text(emit_source(graph))
    import_file(out)
    assert not marker.exists()


# -- atomic output ----------------------------------------------------------------------------------
def test_failed_build_leaves_the_old_output_alone(tmp_path):
    out = tmp_path / "net.py"
    out.write_text("# the previous build\n")
    before = out.stat()
    bad = tmp_path / "bad.arch"
    bad.write_text("net a : 3x8x8 { conv3-4; fc-2; conv3-4 }\n")  # conv after fc: a shape error
    code, _, err = run_cli("build", bad, "-o", out)
    assert code == 2 and "bad.arch:1:" in err
    assert out.read_text() == "# the previous build\n" and out.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arch", "net.py"]

    good = tmp_path / "good.arch"
    good.write_text("net good : 3x8x8 { conv3-4 }\n")
    out.chmod(0o640)
    assert run_cli("build", good, "-o", out)[0] == 0
    assert "class Good" in out.read_text() and (out.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arch", "good.arch", "net.py"]


def test_write_atomic_that_fails_leaves_no_trace(tmp_path):
    out = tmp_path / "out.py"
    out.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(out, "half written \udc80 then it fails")
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.py"]
    new = tmp_path / "sub" / "new.py"
    write_atomic(new, "x = 1\n")
    umask = os.umask(0)
    os.umask(umask)
    assert new.read_text() == "x = 1\n" and (new.stat().st_mode & 0o777) == 0o666 & ~umask


# -- outputs only ever replace a regular file ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory symlink", "dangling symlink"])
def test_build_refuses_an_output_that_is_not_a_regular_file(tmp_path, kind):
    target = tmp_path / "out.py"
    real = tmp_path / "real.py"
    real.write_text("# the real file\n")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(real)
    elif kind == "directory symlink":
        (tmp_path / "d").mkdir()
        target.symlink_to(tmp_path / "d")
    else:
        target.symlink_to(tmp_path / "nowhere.py")
    before = os.lstat(target)
    code, out, err = run_cli("build", "vgg_a", "-o", target)
    assert code == 2 and "refusing to write" in err and "Traceback" not in err
    assert out == ""  # refused before the summary was printed
    after = os.lstat(target)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    assert real.read_text() == "# the real file\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full", "/dev/zero"])
def test_a_device_is_never_an_output(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    # check_output, not a build: were it broken, a build run as root would replace the device
    with pytest.raises(UsageError, match="character device"):
        check_output(Path(device))
    with pytest.raises(UsageError, match="character device"):
        write_atomic(Path(device), "x = 1\n")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def _not_a_regular_file(tmp_path, kind: str) -> Path:
    """A path in ``tmp_path`` that is a FIFO, a symbolic link, a folder, or (as root) a
    character device made with mknod: a copy of /dev/null, so that a broken check replaces
    only the copy."""
    target = tmp_path / "out.txt"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "real.txt").write_text("# the real file\n")
        target.symlink_to(tmp_path / "real.txt")
    elif kind == "directory":
        target.mkdir()
    else:
        if os.geteuid() != 0:
            pytest.skip("making a character device needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return target


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "device"])
def test_sweep_jobs_and_run_files_only_replace_a_regular_file(tmp_path, kind):
    """``sweep --jobs FILE`` and every file of a run folder go through write_atomic_bytes,
    which once renamed its temporary file over whatever was there (``--jobs /dev/null``)."""
    from archdsl.workflow.runs import write_atomic_bytes

    target = _not_a_regular_file(tmp_path, kind)
    before = os.lstat(target)
    with pytest.raises(UsageError, match="refusing to write"):
        write_atomic_bytes(target, lambda f: f.write(b"x"))
    code, out, err = run_cli("sweep", "cifar_resnet", "--set", "n=1", "--data", "digits", "--jobs", target)
    assert code == 2 and "refusing to write" in err and "Traceback" not in err
    assert out == ""  # refused before the table was printed
    after = os.lstat(target)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    if kind == "symlink":
        assert (tmp_path / "real.txt").read_text() == "# the real file\n"
    jobs = tmp_path / "jobs.jsonl"
    assert run_cli("sweep", "cifar_resnet", "--set", "n=1", "--data", "digits", "--jobs", jobs)[0] == 0
    assert json.loads(jobs.read_text().splitlines()[0])["arguments"] == {"n": 1}


def test_a_directory_at_the_output_gets_the_net_file(tmp_path):
    assert run_cli("build", "vgg_a", "-o", tmp_path)[0] == 0
    assert (tmp_path / "vgg_a.py").is_file()
    with pytest.raises(UsageError, match="a directory"):
        write_atomic(tmp_path, "x = 1\n")


def test_fmt_in_place_refuses_a_link_and_a_fifo(tmp_path):
    spec = tmp_path / "real.arch"
    messy = "net n : 3x8x8 { conv3-4;   bn }\n"
    spec.write_text(messy)
    link = tmp_path / "link.arch"
    link.symlink_to(spec)
    code, _, err = run_cli("fmt", "-i", link)
    assert code == 2 and "symbolic link" in err and str(spec) in err
    assert link.is_symlink() and spec.read_text() == messy
    os.mkfifo(tmp_path / "fifo.arch")
    code, _, err = run_cli("fmt", "-i", tmp_path / "fifo.arch")
    assert code == 2 and "not a regular file" in err
    assert run_cli("fmt", "-i", spec)[0] == 0 and spec.read_text() != messy


def test_emitted_source_over_max_output_bytes_is_refused(tmp_path):
    out = tmp_path / "out.py"
    code, _, err = run_cli("build", "resnet50", "-o", out, "--limit", "max_output_bytes=2000")  # it is ~4 KB
    assert code == 2 and "max_output_bytes" in err and not out.exists()
    with counting() as work:
        assert run_cli("build", "resnet50", "-o", out)[0] == 0
    assert work.emitted_bytes == len(out.read_text()) <= DEFAULT.max_output_bytes


# -- images for eval -------------------------------------------------------------------------------
POOLED = "net pooled(classes=2) : 3x32x32 { conv3-4 act=none; gap; fc-{classes}; softmax }\n"


def eval_folder(tmp_path, name: str, content: bytes) -> list:
    """``archdsl eval`` arguments over a folder of two plain images and ``content`` as ``name``."""
    from PIL import Image

    for cls, colour in (("blue", (20, 40, 230)), ("red", (230, 30, 20))):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 36), colour).save(tmp_path / "data" / cls / "0.png")
    (tmp_path / "data" / "red" / name).write_bytes(content)
    (tmp_path / "pooled.arch").write_text(POOLED)
    torch.save(archdsl.compile(archdsl.loads(POOLED)).state_dict(), tmp_path / "w.pt")
    return ["eval", tmp_path / "pooled.arch", "--weights", tmp_path / "w.pt", "--data", tmp_path / "data"]


@pytest.mark.parametrize("name", list(at.BOMBS))
def test_decompression_bombs_are_refused_from_the_header(tmp_path, name):
    from archdsl import evaluation as ev

    content = at.BOMBS[name]()
    assert len(content) < 200
    bomb = tmp_path / ("bomb." + name.split()[0])
    bomb.write_bytes(content)
    with pytest.raises(ev.EvalError, match="cannot read image") as info:
        ev.load_image(bomb)
    assert re.search(r"pixels|decompression", str(info.value), re.I)
    code, _, err = run_cli(*eval_folder(tmp_path, bomb.name, content), "--scales", "32")
    assert code == 2 and "cannot read image" in err and "Traceback" not in err and "internal" not in err


def test_a_strip_image_is_refused_before_it_is_rescaled(tmp_path):
    """1 x 20,000 pixels is a 300-byte PNG under the decompression-bomb limit; at scale 1024
    it would be 1024 x 20,480,000 pixels (240 GB as floats), once an internal error after an
    attempt to allocate them."""
    from archdsl import evaluation as ev

    strip = at.small_images()["strip png"]
    (tmp_path / "strip.png").write_bytes(strip)
    img = ev.load_image(tmp_path / "strip.png")
    assert img.size == (1, 20000)
    with pytest.raises(ev.EvalError, match="1x20000 pixels .* would be 1024x20480000"):
        ev.check_rescaled(img, 1024, tmp_path / "strip.png")
    with pytest.raises(ev.EvalError, match="over the limit"):
        ev.rescale(img, 1024)
    ev.check_rescaled(img, 4)  # 4 x 80,000 is fine
    code, _, err = run_cli(*eval_folder(tmp_path, "strip.png", strip), "--scales", "32,1024")
    assert code == 2 and "cannot rescale image" in err and "strip.png" in err and "Traceback" not in err


@examples(300)
@given(at.hostile_images())
def test_mutated_images_decode_or_fail_with_eval_error(tmp_path_factory, content):
    """Every decoding failure of a mutated PNG/BMP/GIF/TIFF/JPEG is an EvalError (exit 2 in
    the command), and what decodes is an RGB image within the pixel limit."""
    from archdsl import evaluation as ev

    path = tmp_path_factory.mktemp("img") / "x.img"
    path.write_bytes(content)
    try:
        img = ev.load_image(path)
    except ev.EvalError as err:
        assert str(err).startswith(f"cannot read image {path}")
        return
    assert img.mode == "RGB" and img.size[0] * img.size[1] <= ev.MAX_PIXELS
    try:
        x = ev.to_tensor(ev.rescale(img, 32))
    except ev.EvalError as err:
        assert "cannot rescale" in str(err)
    else:
        assert x.shape[0] == 3 and min(x.shape[1:]) == 32


# -- spec text reaching a terminal ------------------------------------------------------------------
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\u202e"
CONTROL = {"\x1b", "\x07", "\u202e"}  # what a terminal acts on


def test_string_values_are_escaped_before_they_reach_the_terminal(tmp_path):
    spec = tmp_path / "tagged.arch"
    spec.write_text("net tagged(tag=x) : 3x8x8 { conv3-4 }\n")
    for argv in (["summary", spec], ["build", spec, "-o", tmp_path / "out.py"]):
        code, out, err = run_cli(*argv, "--set", f"tag={ESCAPES}")
        assert code == 0, err
        assert not CONTROL & set(out + err), out
        assert "\\x1b]0;owned\\x07" in out  # shown, escaped
    code, out, err = run_cli("summary", spec, "--set", f"tag={ESCAPES}", "--json")
    assert code == 0 and not CONTROL & set(out)
    assert json.loads(out)["arguments"]["tag"] == ESCAPES  # the JSON still carries the value


# -- what a spec may read ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["/proc/self/status", "/dev/zero", "/dev/null"])
def test_imports_and_specs_read_only_regular_files(folder, target):
    if not os.path.exists(target):
        pytest.skip(f"{target} does not exist here")
    (folder / "sys.arch").symlink_to(target)
    refused = re.compile(r"not a (regular )?file|not a spec")
    err = import_error(folder, 'import "sys.arch"\n' + NET)
    assert refused.search(err.message), err
    code, _, err_text = run_cli("check", folder / "sys.arch")
    assert code == 2 and refused.search(err_text), err_text


def test_a_link_to_proc_kmsg_is_refused_unopened(folder, monkeypatch):
    """/proc/kmsg is a regular file to stat, and reading it as root blocks until the kernel
    logs something (forever, once). It is refused by its place, before any open: os.open is
    made to fail on /proc here, so a regression fails the test instead of hanging it."""
    import archdsl.frontend.loader as loader

    if not os.path.exists("/proc/kmsg"):
        pytest.skip("/proc/kmsg does not exist here")
    (folder / "kmsg.arch").symlink_to("/proc/kmsg")

    real_open = os.open

    def no_open(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise AssertionError(f"opened {path}")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(loader.os, "open", no_open)
    err = import_error(folder, 'import "kmsg.arch"\n' + NET)
    assert "system file" in err.message and "/proc/kmsg" in err.message
    code, _, err_text = run_cli("check", folder / "kmsg.arch")
    assert code == 2 and "system file" in err_text and "Traceback" not in err_text


def test_a_file_that_is_not_a_spec_is_not_quoted(folder):
    secret = "root:$6$s3cr3t-hash:19000:0:99999:7:::"
    (folder / "shadow").write_text(secret + "\nbin:*:19000:0:99999:7:::\n")
    (folder / "shadow.arch").symlink_to(folder / "shadow")
    code, out, err = run_cli("check", folder / "shadow.arch")
    assert code == 2 and "does not look like an archdsl spec" in err
    assert "s3cr3t" not in out + err
    err = import_error(folder, 'import "shadow.arch"\n' + NET)
    assert "s3cr3t" not in str(err)
    # a spec with a mistake is still quoted, with its caret
    (folder / "typo.arch").write_text("net a : 3x8x8 { conv3-4 ) }\n")
    code, _, err_text = run_cli("check", folder / "typo.arch")
    assert code == 2 and "conv3-4 )" in err_text and "^" in err_text


@pytest.mark.parametrize("content", [
    "# sshd_config\n\nPermitRootLogin s3cr3t-value\n",  # comments first, as a config file
    "#!/bin/sh\nexport TOKEN=s3cr3t\n",  # a script
    "import os\nTOKEN = 's3cr3t'\n",  # Python: 'import' without a quoted file
    "network s3cr3t\n",  # a word that begins like 'net'
])
def test_a_file_that_begins_with_comments_but_is_not_a_spec_is_not_quoted(folder, content):
    (folder / "conf").write_text(content)
    (folder / "conf.arch").symlink_to(folder / "conf")
    code, out, err = run_cli("check", folder / "conf.arch")
    assert code == 2 and "does not look like an archdsl spec" in err and "s3cr3t" not in out + err
    err = import_error(folder, 'import "conf.arch"\n' + NET)
    assert "s3cr3t" not in str(err)
    # a spec whose statements follow comments and blank lines is read, and quoted where wrong
    (folder / "typo.arch").write_text("\ufeff# a note\n\n  net a : 3x8x8 { conv3-4 ) }\n")
    code, _, err_text = run_cli("check", folder / "typo.arch")
    assert code == 2 and "typo.arch:3:" in err_text and "conv3-4 )" in err_text


def test_an_unusable_spec_path_is_a_spec_error():
    for path in ("a" * 5000 + ".arch", "a\x00b.arch"):
        with pytest.raises(SpecError):
            archdsl.load(path)
        code, _, err = run_cli("check", path)
        assert code == 2 and err.startswith("error:")


def test_in_is_checked_against_the_true_input_size():
    # 64x256x256 flattens to 4,194,304 features, above max_width (2^20): in= says just that
    graph = archdsl.loads("net a : 64x256x256 { fc-10 in=4194304 }")
    assert graph.params == 4_194_304 * 10 + 10
    err = spec_error("net a : 64x256x256 { fc-10 in=4194305 }")
    assert "4194305" in err.message and "4194304" in err.message
    assert "max_width" in spec_error("net a : 3x8x8 { fc-2000000 }").message  # widths are still capped


def test_a_file_name_with_escapes_is_escaped_in_errors(tmp_path):
    spec = tmp_path / "\x1b]0;owned\x07.arch"
    spec.write_text("net a : 3x8x8 { conv3-4 ) }\n")
    code, out, err = run_cli("check", spec)
    assert code == 2 and not CONTROL & set(out + err) and "\\x1b]0;owned\\x07.arch:1:" in err
