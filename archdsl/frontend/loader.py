"""Reading spec files and their imports into one table of nets and blocks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast
from archdsl.frontend.parser import parse
from archdsl.limits import Limits

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


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
    try:
        size = path.stat().st_size
        if size > limits.max_source_bytes:
            raise SpecError(f"{path} is {size} bytes, over the limit of {limits.max_source_bytes} "
                            "(limit max_source_bytes)", span)
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not UTF-8 text", span) from None
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror or err}", span) from None


def check_size(text: str, file: str, limits: Limits) -> None:
    if len(text) > limits.max_source_bytes:
        raise SpecError(f"{file}: the spec is {len(text)} characters, over the limit of "
                        f"{limits.max_source_bytes} (limit max_source_bytes)", None)


def load_program(text: str, file: str, limits: Limits, base_dir: Path | None) -> Program:
    """Parse ``text`` and, transitively, the files it imports.

    An import path is relative to the importing file's folder, then to the bundled specs
    folder; it must name an ``.arch`` file. Imports may not form a cycle.
    """
    check_size(text, file, limits)
    entry = parse(text, file)
    program = Program(entry, files=[file])
    _add_blocks(program, entry)
    seen: set[Path] = set()
    pending = [(imp, base_dir) for imp in entry.imports]
    while pending:
        imp, folder = pending.pop(0)
        path = _find(imp, folder)
        if path in seen:
            continue
        seen.add(path)
        if len(seen) > limits.max_imports:
            raise SpecError(f"more than {limits.max_imports} imported files (limit max_imports)", imp.span)
        spec = parse(read_source(path, limits, imp.span), str(path))
        if spec.nets:
            raise SpecError(f"imported file {imp.path!r} defines nets; a library file holds only blocks",
                            spec.nets[0].span)
        program.files.append(str(path))
        _add_blocks(program, spec)
        pending.extend((i, path.parent) for i in spec.imports)
    return program


def _find(imp: ast.Import, folder: Path | None) -> Path:
    if not imp.path.endswith(".arch"):
        raise SpecError(f"an import names an .arch file, found {imp.path!r}", imp.span)
    for base in ([folder] if folder else []) + [SPECS_DIR]:
        candidate = (base / imp.path).resolve()
        if candidate.is_file():
            return candidate
    raise SpecError(f"cannot find imported file {imp.path!r} (looked beside the spec and in the bundled specs)",
                    imp.span)


def _add_blocks(program: Program, spec: ast.SpecFile) -> None:
    for block in spec.blocks:
        previous = program.blocks.get(block.name)
        if previous is not None:
            raise SpecError(f"block {block.name!r} is defined twice", block.span).with_note(
                "first defined here", previous.span)
        program.blocks[block.name] = block
