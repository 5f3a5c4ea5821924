"""Resource limits: what a spec may ask for before the compiler refuses, with a clear error.

They keep a hostile or mistaken spec (``conv3-64 x1000000000``) from hanging the compiler
or exhausting memory. Override per call (``archdsl.load(path, limits=Limits(max_nodes=10**6))``)
or on the command line (``--limit max_nodes=1000000``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Limits:
    max_source_bytes: int = 1_000_000  # one spec file
    max_nodes: int = 100_000  # ops in one expanded graph (ResNet-1202 has about 4,300)
    max_repeat: int = 10_000  # one ``xN``
    max_call_depth: int = 32  # blocks calling blocks
    max_imports: int = 64  # files one spec may pull in, transitively
    max_width: int = 1 << 20  # channels or features of one layer
    max_spatial: int = 1 << 16  # height or width of the input
    max_params: int = 10_000_000_000  # parameters of a module to be allocated by compile()

    def updated(self, **changes: int) -> "Limits":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)


DEFAULT = Limits()
