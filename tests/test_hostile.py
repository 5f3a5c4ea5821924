"""Hostile and broken input: the front end raises SpecError (with a line and a column) and
nothing else, within a bounded time and memory; the command line never shows a traceback; no
text of a spec reaches generated code except validated names and numbers; outputs are written
atomically.

ARCHDSL_EXAMPLES=N multiplies the number of fuzzing examples by N.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
import archdsl.testing as at
from archdsl import Limits, SpecError
from archdsl.cli import main, write_atomic
from archdsl.frontend.loader import SPECS_DIR

ROOT = Path(__file__).resolve().parent.parent
_SCALE = int(os.environ.get("ARCHDSL_EXAMPLES", "1"))
SECONDS = 5.0  # a hang, not slowness: generous on a busy 2-core machine


def examples(n: int):
    return settings(max_examples=n * _SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def spec_error(text: str, *, timeout: float = SECONDS, **kwargs) -> SpecError:
    """loads(text) must raise SpecError, pointing into the text, within ``timeout`` seconds."""
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        archdsl.loads(text, **kwargs)
    assert time.perf_counter() - start < timeout
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
    return subprocess.run([sys.executable, "-m", "archdsl", *map(str, argv)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)


# -- fuzzing the front end ----------------------------------------------------------------------
@examples(2000)
@given(at.hostile_text())
def test_loads_raises_only_spec_error(text):
    start = time.perf_counter()
    try:
        archdsl.loads(text, base_dir=SPECS_DIR)  # so that the bundled imports resolve
    except SpecError as err:
        assert_located(err, text)
    assert time.perf_counter() - start < SECONDS


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
    start = time.perf_counter()
    result = run_subprocess("check", spec)
    assert time.perf_counter() - start < 30  # includes starting Python
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

    monkeypatch.setitem(cli.COMMANDS, "check", broken)
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
    start = time.perf_counter()
    try:
        archdsl.loads(text)
    except SpecError as err:
        assert_located(err, text)
        if name in ("unary minus", "long sum", "long product", "residual units"):
            assert "max_nesting" in str(err)
    assert time.perf_counter() - start < SECONDS


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
    assert "max_source_bytes" in spec_error(text, timeout=2).message
    big = tmp_path / "big.arch"
    big.write_text(text)
    start = time.perf_counter()
    with pytest.raises(SpecError, match="max_source_bytes") as info:
        archdsl.load(big)
    assert time.perf_counter() - start < 2
    assert_located(info.value)
    code, _, err = run_cli("check", big)
    assert code == 2 and "max_source_bytes" in err
    code, _, err = run_cli("check", big, "--limit", "max_source_bytes=100")
    assert code == 2 and "limit of 100 " in err


def test_huge_fc_fails_on_max_params_without_allocating():
    graph = archdsl.loads("net a : 16x256x256 { fc-1000000 }")  # 10^12 weights
    start = time.perf_counter()
    with pytest.raises(SpecError, match="max_params") as info:
        archdsl.compile(graph)
    assert time.perf_counter() - start < SECONDS
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
    start = time.perf_counter()
    err = import_error(folder, f'import "{path}"\n' + NET)
    assert message in err.message and err.line == 1
    assert time.perf_counter() - start < SECONDS
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
