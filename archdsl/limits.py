"""Resource limits: what a spec may ask for before the compiler refuses, with a clear error.

They keep a hostile or mistaken spec (``conv3-64 x1000000000``) from hanging the compiler
or exhausting memory. Override per call (``archdsl.load(path, limits=Limits(max_nodes=10**6))``)
or on the command line (``--limit max_nodes=1000000``).

``max_nesting`` bounds how deeply the text nests (a residual inside a residual, ``{(a+b)*c}``
inside braces, a chain of operators) and, while expanding, block calls plus residual units;
``max_steps`` bounds the expansion work, so that repeats of blocks that emit nothing
(``block a() { relu x0 }`` called ``x10000`` inside a block called ``x10000``) still end.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Limits:
    max_source_bytes: int = 256 * 1024  # one spec file (parsing runs at about 100 KB a second)
    max_nodes: int = 100_000  # ops in one expanded graph (ResNet-1202 has about 4,300)
    max_repeat: int = 10_000  # one ``xN``
    max_call_depth: int = 32  # blocks calling blocks
    max_nesting: int = 64  # residual units, braces and operators nested in one another
    max_steps: int = 2_000_000  # expansion work: statements expanded, weighted by their size
    max_imports: int = 64  # files one spec may pull in, transitively
    max_width: int = 1 << 20  # channels or features of one layer
    max_spatial: int = 1 << 16  # height or width of the input
    max_params: int = 1_000_000_000  # parameters of a module to be allocated by compile() (4 GB)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"limit {f.name} must be an integer >= 0, found {value!r}")

    def updated(self, **changes: int) -> "Limits":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)


DEFAULT = Limits()
