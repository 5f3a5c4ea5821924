"""The bundled specs: ``archdsl list``, and bare names (``vgg_e``) on the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from archdsl.errors import SpecError
from archdsl.frontend.loader import SPECS_DIR


@dataclass(frozen=True)
class SpecInfo:
    name: str
    path: Path
    description: str


def _description(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line:
            break
    return ""


def list_specs() -> list[SpecInfo]:
    """Every bundled entry spec (library files under specs/lib are not listed), by name."""
    return [SpecInfo(p.stem, p, _description(p)) for p in sorted(SPECS_DIR.glob("*.arch"))]


def resolve_spec(spec: str | Path) -> Path:
    """A spec file path as given, or the bundled spec of that name (``vgg_e`` or ``vgg_e.arch``)."""
    path = Path(spec)
    try:
        if path.is_file():
            return path
        if path.exists():  # a folder, a FIFO, a device: never read as a spec
            raise SpecError(f"{str(spec)!r} is not a regular file")
        bundled = SPECS_DIR / (path.name if path.suffix == ".arch" else f"{path.name}.arch")
        if path.parent == Path(".") and bundled.is_file():
            return bundled
    except (OSError, ValueError) as err:  # a name too long, a NUL byte, a symlink loop
        shown = str(spec) if len(str(spec)) <= 60 else f"{str(spec)[:40]}... ({len(str(spec))} characters)"
        raise SpecError(f"cannot use the spec path {shown!r}: {getattr(err, 'strerror', None) or err}") from None
    names = ", ".join(s.name for s in list_specs())
    raise SpecError(f"no spec file {str(spec)!r} (bundled specs: {names})")
