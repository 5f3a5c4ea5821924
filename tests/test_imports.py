"""The import graph of the package: no cycles (function-level imports count), and
``import archdsl`` does not import torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import archdsl

ROOT = Path(__file__).resolve().parents[1]
#: Where each package's source lives (pyproject.toml's package-dir).
SOURCES = {"archdsl": ROOT / "archdsl", "archdsl.codegen": ROOT / "codegen"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if name.startswith("archdsl.codegen") and package == "archdsl":
                continue
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, wherever in the file (functions included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name imported from a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in _imports(name, path, modules):
            graph.add_edge(name, target)
    return graph


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert "archdsl.ops" in graph and graph.has_edge("archdsl.ir", "archdsl.ops")  # the walk sees imports
    assert graph.has_edge("archdsl.codegen.torch_ops", "archdsl.codegen.triton.runtime")  # function level
    # A module importing its own parent package (``from archdsl import x`` inside archdsl) finds
    # it already initialising: that edge cannot close a cycle at import time, so it is left out.
    edges = [(a, b) for a, b in graph.edges if b not in _parents(a)]
    cycles = list(nx.simple_cycles(nx.DiGraph(edges)))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_import_archdsl_does_not_import_torch():
    code = "import sys, archdsl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
    assert archdsl.compile  # the public API is there without torch


def test_every_module_loads_once_even_with_the_checkout_on_the_path():
    """With the checkout on ``sys.path`` as well (``PYTHONPATH=.``), importing every module of
    the package and compiling a net for the triton backend loads each source file as one
    module object: nothing imports the folders as top-level ``codegen``, ``grammars``, ``specs``."""
    if not archdsl.__file__.startswith(str(ROOT)):
        pytest.skip("the package under test is installed, not this checkout")
    names = sorted(n for n in import_graph() if not n.endswith("__main__"))  # that one runs the CLI
    code = (
        "import importlib, os, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "import archdsl\n"
        "archdsl.compile(archdsl.loads('net t : 3x8x8 { conv3-4; bn; maxpool; LRN; fc-2 }'), backend='triton')\n"
        f"root = {str(ROOT)!r} + os.sep\n"
        "files = {}\n"
        "for name, mod in list(sys.modules.items()):\n"
        "    f = getattr(mod, '__file__', None)\n"
        "    if f and os.path.realpath(f).startswith(root) and 'site-packages' not in f:\n"  # a venv in the checkout
        "        files.setdefault(os.path.realpath(f), []).append(name)\n"
        "print(len(files)); print({f: n for f, n in files.items() if len(n) > 1})\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('codegen', 'grammars', 'specs')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded, twice, top_level = out.stdout.splitlines()[-3:]
    assert int(loaded) >= len(names), out.stdout  # every module seen, each from this checkout
    assert twice == "{}" and top_level == "[]", out.stdout
