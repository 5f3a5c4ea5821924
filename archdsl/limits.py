"""Resource limits: what a spec may ask for before the compiler refuses, with a clear error.

They keep a hostile or mistaken spec (``conv3-64 x1000000000``) from hanging the compiler
or exhausting memory, and bound what a small spec can make: each default refuses within a
fraction of a second of CPU (``benchmarks/bench_limits.py`` measures it). Override per call
(``archdsl.load(path, limits=Limits(max_nodes=10**5))``) or on the command line
(``--limit max_nodes=100000``).

``max_tokens`` is counted before the parser runs, so text the parser would take seconds over
is refused unread by it. ``max_nesting`` bounds how deeply the text nests (a residual inside a
residual, ``{(a+b)*c}`` inside braces, a chain of operators) and, while expanding, block calls
plus residual units; ``max_steps`` bounds the expansion work, so that repeats of blocks that
emit nothing (``block a() { relu x0 }`` called ``x10000`` inside a block called ``x10000``)
still end.

:func:`counting` records the work one call did (bytes read, tokens parsed, expansion steps,
nodes made, bytes emitted): tests bound the work a refusal costs with it, not the time.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from typing import Iterator

#: How far ``max_nesting`` and ``max_call_depth`` may be raised. The passes after the parser
#: recurse once per level (a few Python frames each), and Python's own limit (1,000 frames)
#: broke at about 500 levels: 200 leaves room for the caller's frames.
NESTING_CEILING = 200


@dataclass(frozen=True)
class Limits:
    max_source_bytes: int = 256 * 1024  # one spec file, checked before it is read
    max_tokens: int = 10_000  # words, numbers and symbols of one spec file, counted before parsing
    max_nodes: int = 10_000  # ops in one expanded graph (ResNet-1202 has about 4,200)
    max_repeat: int = 10_000  # one ``xN``
    max_call_depth: int = 32  # blocks calling blocks
    max_nesting: int = 64  # residual units, braces and operators nested in one another
    max_steps: int = 250_000  # expansion work: statements expanded, weighted by their size
    max_imports: int = 64  # files one spec may pull in, transitively
    max_width: int = 1 << 20  # channels or features of one layer
    max_spatial: int = 1 << 16  # height or width of the input, and of every feature map
    max_params: int = 1_000_000_000  # parameters of a module to be allocated by compile() (4 GB)
    max_output_bytes: int = 8 << 20  # emitted module source (ResNet-1202's is about 0.5 MB)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"limit {f.name} must be an integer >= 0, found {value!r}")
        for name in ("max_nesting", "max_call_depth"):
            if getattr(self, name) > NESTING_CEILING:
                raise ValueError(f"limit {name} can be at most {NESTING_CEILING}, found {getattr(self, name)} "
                                 "(deeper nesting would exhaust Python's recursion)")

    def updated(self, **changes: int) -> "Limits":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)


DEFAULT = Limits()


@dataclass
class Work:
    """What the compiler did during a :func:`counting` block."""

    bytes_read: int = 0  # spec file bytes read from disk
    tokens: int = 0  # tokens of the texts handed to the parser
    steps: int = 0  # expansion steps (as limited by max_steps)
    nodes: int = 0  # graph nodes made by expansion
    emitted_bytes: int = 0  # characters of module source emitted


_WORK: ContextVar[Work | None] = ContextVar("archdsl_work", default=None)


@contextlib.contextmanager
def counting() -> Iterator[Work]:
    """Count the work done inside the block::

        with counting() as work:
            archdsl.loads(text)
        work.steps, work.nodes
    """
    work = Work()
    token = _WORK.set(work)
    try:
        yield work
    finally:
        _WORK.reset(token)


def tally(**amounts: int) -> None:
    """Add to the :class:`Work` being counted, if any (a no-op outside :func:`counting`)."""
    work = _WORK.get()
    if work is not None:
        for name, amount in amounts.items():
            setattr(work, name, getattr(work, name) + amount)
