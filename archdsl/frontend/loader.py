"""Reading spec files and their imports into one table of nets and blocks."""

from __future__ import annotations

import functools
import os
import re
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast
from archdsl.frontend.parser import parse
from archdsl.limits import Limits, tally

# The bundled specs: package data of archdsl.specs (the repository's specs/ folder).
SPECS_DIR = Path(str(resources.files("archdsl.specs")))


@dataclass
class Program:
    """The entry file's nets plus every block visible to them (its own and imported ones)."""

    entry: ast.SpecFile
    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def net(self, name: str | None) -> ast.NetDef:
        nets = self.entry.nets
        if not nets:
            raise SpecError(f"{self.entry.file} defines no net", Span(self.entry.file, 1, 1))
        if name is None:
            if len(nets) == 1:
                return nets[0]
            stem = Path(self.entry.file).stem
            for net in nets:
                if net.name == stem:
                    return net
            names = ", ".join(n.name for n in nets)
            raise SpecError(f"{self.entry.file} defines several nets ({names}); choose one with --net",
                            nets[0].span)
        for net in nets:
            if net.name == name:
                return net
        names = ", ".join(n.name for n in nets)
        raise SpecError(f"no net named {name!r} in {self.entry.file} (it defines {names})", nets[0].span)


def read_source(path: Path, limits: Limits, span: Span | None = None) -> str:
    """The text of a spec file. Errors point at ``span`` (the import that names the file), or
    at the start of the file itself.

    Only a regular file is read, and only up to ``max_source_bytes``, checked before reading:
    a device, a FIFO or a file of ``/proc`` (whose reads can block forever) is refused unread.
    A file that does not begin as a spec does (``net``, ``block``, ``import`` or a comment) is
    refused without an excerpt: an ``.arch`` link to some other file must not print its lines.
    """
    span = span or Span(str(path), 1, 1)
    try:
        resolved = path.resolve()
        if resolved.parts[1:2] and resolved.parts[1] in _SYSTEM_DIRS:
            raise SpecError(f"{path} is a system file ({resolved}), not a spec", span)
        # O_NONBLOCK: should a FIFO appear between the check and the open, opening it does not hang.
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise SpecError(f"{path} is not a regular file", span)
            if info.st_size > limits.max_source_bytes:
                raise SpecError(f"{path} is {info.st_size} bytes, over the limit of {limits.max_source_bytes} "
                                "(limit max_source_bytes)", span)
            data = f.read(limits.max_source_bytes + 1)  # at most the limit, should the file grow meanwhile
        tally(bytes_read=len(data))
        if len(data) > limits.max_source_bytes:
            raise SpecError(f"{path} is over the limit of {limits.max_source_bytes} bytes "
                            "(limit max_source_bytes)", span)
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not UTF-8 text", span) from None
    except (OSError, RuntimeError, ValueError) as err:  # a name too long, a NUL byte, a symlink loop
        raise SpecError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}", span) from None
    if not looks_like_a_spec(text):
        raise SpecError(f"{path} does not look like an archdsl spec: expected its first statement, after "
                        "comments, to be net NAME, block NAME or import \"FILE\"",
                        Span(span.file, span.line, span.column))  # no excerpt
    return text


def looks_like_a_spec(text: str) -> bool:
    """Whether the first line of ``text`` that is not blank or a comment begins a statement of
    the language (``net a``, ``block b``, ``import "f"``), or there is none. A configuration file
    or a script begins with comments too (``# config``, ``#!/bin/sh``): the line after them is
    where a parse error would point, and that line must not be printed."""
    for line in text.removeprefix("\ufeff").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return _FIRST_STATEMENT.match(stripped) is not None
    return True


# Top-level folders of kernel interfaces, never specs.
_SYSTEM_DIRS = frozenset({"proc", "sys", "dev"})
# The first statement of a spec, after its comments.
_FIRST_STATEMENT = re.compile(r'(?:net|block)\s+[A-Za-z_]|import\s*"')
# Tokens as the parser will see them, roughly: comments and strings are one each (and skipped).
_TOKENS = re.compile(r'#[^\n]*|"[^"\n]*"?|\w+|[^\w\s]')


def check_text(text: str, file: str, limits: Limits) -> None:
    """Refuse text over ``max_source_bytes`` or ``max_tokens`` before the parser sees it."""
    if len(text) > limits.max_source_bytes:
        raise SpecError(f"the spec is {len(text)} characters, over the limit of "
                        f"{limits.max_source_bytes} (limit max_source_bytes)", Span(file, 1, 1))
    tokens = 0
    for match in _TOKENS.finditer(text):
        if match.group()[0] != "#":
            tokens += 1
            if tokens > limits.max_tokens:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                raise SpecError(f"the spec has more than {limits.max_tokens} tokens (limit max_tokens)",
                                Span(file, line, column))
    tally(tokens=tokens)


def load_program(text: str, file: str, limits: Limits, base_dir: Path | None) -> Program:
    """Parse ``text`` and, transitively, the files it imports.

    An import path is relative to the importing file's folder, then to the bundled specs
    folder; it must name an ``.arch`` file. Imports may not form a cycle (a file importing
    itself, or ``a`` importing ``b`` importing ``a``); two files may import the same third one.
    """
    check_text(text, file, limits)
    entry = parse(text, file, limits)
    program = Program(entry, files=[file])
    _add_blocks(program, entry)
    entry_path = _resolved(file) if file and file.endswith(".arch") else None
    done: set[Path] = set()
    # Depth first, each entry carrying the chain of files that led to it, to see cycles.
    pending = [(imp, base_dir, (entry_path,) if entry_path else ()) for imp in reversed(entry.imports)]
    while pending:
        imp, folder, chain = pending.pop()
        path = _find(imp, folder)
        if path in chain:
            names = " -> ".join(p.name for p in chain[chain.index(path):] + (path,))
            raise SpecError(f"import cycle: {names}", imp.span)
        if path in done:
            continue
        done.add(path)
        if len(done) > limits.max_imports:
            raise SpecError(f"more than {limits.max_imports} imported files (limit max_imports)", imp.span)
        text = read_source(path, limits, imp.span)
        check_text(text, str(path), limits)
        spec = parse(text, str(path), limits)
        if spec.nets:
            raise SpecError(f"imported file {imp.path!r} defines nets; a library file holds only blocks",
                            spec.nets[0].span)
        program.files.append(str(path))
        _add_blocks(program, spec)
        pending.extend((i, path.parent, chain + (path,)) for i in reversed(spec.imports))
    return program


@functools.lru_cache(maxsize=None)
def _bundled_blocks() -> dict[str, str]:
    """Block name -> the bundled library file (``lib/resnet.arch``) that defines it."""
    found: dict[str, str] = {}
    for path in sorted((SPECS_DIR / "lib").glob("*.arch")):
        for block in parse(path.read_text(encoding="utf-8"), str(path)).blocks:
            found.setdefault(block.name, path.relative_to(SPECS_DIR).as_posix())
    return found


def bundled_library_of(block: str) -> str | None:
    """The bundled library file that defines ``block`` (for "add import ..." hints), if any."""
    return _bundled_blocks().get(block)


def _resolved(file: str) -> Path | None:
    try:
        return Path(file).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _find(imp: ast.Import, folder: Path | None) -> Path:
    if not imp.path.endswith(".arch"):
        raise SpecError(f"an import names an .arch file, found {imp.path!r}", imp.span)
    for base in ([folder] if folder else []) + [SPECS_DIR]:
        try:
            candidate = (base / imp.path).resolve()
            if candidate.is_file():
                return candidate
            exists = candidate.exists()
        except (OSError, RuntimeError, ValueError) as err:  # too long, a NUL byte, a symlink loop
            raise SpecError(f"cannot use the imported path {imp.path!r}: {getattr(err, 'strerror', None) or err}",
                            imp.span) from None
        if exists:
            raise SpecError(f"imported {imp.path!r} is not a file ({candidate})", imp.span)
    raise SpecError(f"cannot find imported file {imp.path!r} (looked beside the spec and in the bundled specs)",
                    imp.span)


def _add_blocks(program: Program, spec: ast.SpecFile) -> None:
    for block in spec.blocks:
        previous = program.blocks.get(block.name)
        if previous is not None:
            raise SpecError(f"block {block.name!r} is defined twice", block.span).with_note(
                "first defined here", previous.span)
        program.blocks[block.name] = block
