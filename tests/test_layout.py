"""The repository's layout and what ships from it.

The top-level folders ``codegen/``, ``grammars/`` and ``specs/`` are mapped into the package by
``pyproject.toml`` (setuptools' ``package-dir``), not linked: these tests check that no symlink
is tracked, that every folder of the package is listed there, that an sdist carries the
package, its data and the test-suite, and that the wheel built from that sdist holds the
grammar, every bundled spec and every code generator.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: The folders that make up the package (pyproject.toml's package-dir and the package itself).
PACKAGE_DIRS = {"archdsl": ROOT / "archdsl", **{
    name: ROOT / folder for name, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items() if name}}


def _tracked() -> list[str] | None:
    """The files of this checkout, tracked or new but not ignored, or None outside a git
    checkout (an unpacked sdist)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True)
    # A virtual environment made inside the checkout under a name .gitignore does not list
    # (`python -m venv venv`) is not part of it.
    venvs = {cfg.parent.name for cfg in ROOT.glob("*/pyvenv.cfg")}
    return [p for p in out.stdout.decode().split("\0") if p and p.split("/", 1)[0] not in venvs]


def test_no_symlink_is_tracked():
    if _tracked() is None:
        pytest.skip("not a git checkout (an unpacked sdist has no index to read)")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-s"], capture_output=True, text=True, check=True)
    links = [line.split("\t", 1)[1] for line in out.stdout.splitlines() if line.startswith("120000 ")]
    assert not links, f"symlinks in the repository: {links}"


def _folders_with_files(name: str, folder: Path):
    """(dotted package name, folder) of ``folder`` and every folder below it holding a file."""
    for path in sorted({p.parent for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}):
        yield ".".join((name, *path.relative_to(folder).parts)), path


def test_every_folder_of_the_package_is_listed_in_pyproject():
    """A folder not in ``packages`` is left out of the wheel (setuptools only warns, "Package
    would be ignored"); every folder's files are code or listed package data."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing, unshipped = [], []
    for name, folder in PACKAGE_DIRS.items():
        for package, path in _folders_with_files(name, folder):
            if package not in listed:
                missing.append(package)
            for file in path.iterdir():
                if file.is_file() and file.suffix not in (".py", ".pyc") and \
                        not any(file.match(glob) for glob in data.get(package, ())):
                    unshipped.append(str(file.relative_to(ROOT)))
    assert not missing, f"folders of the package missing from pyproject.toml's packages: {missing}"
    assert not unshipped, f"files no package-data pattern ships: {unshipped}"


def test_documents_the_code_cites_exist():
    """A top-level document named in the code, tests or docs (``README.md``) is in the repository."""
    files = _tracked()
    if files is None:
        pytest.skip("not a git checkout")
    cited: dict[str, str] = {}
    for rel in files:
        if Path(rel).suffix in (".py", ".md", ".sh", ".toml", ".arch") or rel == ".ci/run":
            for name in re.findall(r"\b[A-Z][A-Z_]+\.md\b", (ROOT / rel).read_text(encoding="utf-8")):
                cited.setdefault(name, rel)
    assert "README.md" in cited  # the scan sees citations
    missing = {name: rel for name, rel in cited.items() if not (ROOT / name).is_file()}
    assert not missing, f"documents cited but not in the repository (document -> first citing file): {missing}"


@pytest.mark.slow
def test_sdist_and_the_wheel_built_from_it(tmp_path):
    """The sdist carries the package, its data and the tests; the wheel built from the unpacked
    sdist holds the grammar, every bundled spec and every code generator, and setuptools warns
    of no ignored package on the way."""
    pytest.importorskip("setuptools", minversion="68", reason="building needs setuptools >= 68 (pyproject.toml)")
    files = _tracked()
    if files is None:
        pytest.skip("not a git checkout: the sdist is built from a copy of the tracked files")
    source = tmp_path / "src"
    for rel in files:  # a clean copy: no build/, egg-info or virtual environment of this checkout
        if (ROOT / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, source / rel)
    build = ("import sys; from setuptools import build_meta as b; "
             "print(getattr(b, sys.argv[1])(sys.argv[2]))")

    def run(step: str, cwd: Path, out: Path) -> str:
        proc = subprocess.run([sys.executable, "-c", build, step, str(out)], cwd=cwd, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "would be ignored" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    sdist = tmp_path / run("build_sdist", source, tmp_path)
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", filter="data")
    wanted = [f for f in files if f.split("/")[0] in ("archdsl", "codegen", "grammars", "specs", "tests", "benchmarks")]
    assert "tests/conftest.py" in wanted and "specs/lib/resnet.arch" in wanted
    assert not sorted(set(wanted) - members), f"the sdist lacks {sorted(set(wanted) - members)}"

    wheel = tmp_path / run("build_wheel", tmp_path / "unpacked" / top, tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {"archdsl/grammars/archdsl.lark"}
    want |= {f"archdsl/{f}" for f in files if f.startswith("specs/") and f.endswith(".arch")}
    want |= {f"archdsl/{f}" for f in files if f.startswith("codegen/") and f.endswith(".py")}
    assert len(want) > 40 and "archdsl/codegen/triton/conv.py" in want
    assert not sorted(want - names), f"the wheel lacks {sorted(want - names)}"
    assert not [n for n in names if n.split("/")[0] in ("codegen", "grammars", "specs", "tests")]


def test_one_table_printer():
    """Every fixed-width table the package prints goes through :func:`archdsl.tables.fixed_width`:
    no other module pads cells itself."""
    padding = re.compile(r"\.(l|r)just\(|:[<>]\{")
    found = [str(path.relative_to(ROOT)) for folder in PACKAGE_DIRS.values() for path in folder.rglob("*.py")
             if padding.search(path.read_text(encoding="utf-8"))]
    assert found == ["archdsl/tables.py"], f"modules padding table cells themselves: {found}"


def test_readme_layout_names_every_module():
    """README's "How the code is laid out" names only paths that exist, and every module of the
    package's own folders: each one in ``archdsl/``, ``archdsl/frontend/`` and ``codegen/`` by
    its file name, the folders of one concern each (``archdsl/ops/``, ``passes/``, ...) by name."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    quoted = set(re.findall(r"`([^`\s]+)`", section))
    paths = {q.rstrip("/") for q in quoted if "/" in q and not q.startswith("archdsl.")}
    assert "archdsl/pipeline.py" in paths
    assert not [p for p in sorted(paths) if not (ROOT / p).exists()], "paths in the layout that do not exist"
    folders = {"archdsl/ops", "archdsl/passes", "archdsl/workflow", "archdsl/testing"}
    assert folders <= paths, f"folders the layout leaves out: {sorted(folders - paths)}"
    modules = [p for folder in ("archdsl", "archdsl/frontend", "codegen", "codegen/triton")
               for p in sorted((ROOT / folder).glob("*.py")) if p.stem not in ("__init__", "__main__")]
    unnamed = [str(p.relative_to(ROOT)) for p in modules if p.name not in quoted and
               str(p.relative_to(ROOT)) not in quoted]
    assert not unnamed, f"modules the README's layout does not name: {unnamed}"


def test_module_references_in_docstrings_resolve():
    """``:mod:`` references name modules that import: ``archdsl.codegen.hierarchy``, not the
    folder path ``codegen.hierarchy`` (no such module is installed)."""
    def exists(name: str) -> bool:
        parts = name.split(".")
        for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0])):
            if name == package or name.startswith(package + "."):
                rest = parts[len(package.split(".")):]
                path = folder.joinpath(*rest)
                return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() or \
                    (rest and path.parent.with_suffix(".py").is_file())  # a name inside a module
        return False

    broken = []
    for folder in PACKAGE_DIRS.values():
        for path in folder.rglob("*.py"):
            for name in re.findall(r":mod:`~?([\w.]+)`", path.read_text(encoding="utf-8")):
                if name.split(".")[0] in ("archdsl", "codegen", "grammars", "specs") and not exists(name):
                    broken.append(f"{path.relative_to(ROOT)}: {name}")
    assert not broken, f"module references that do not resolve: {broken}"
