"""Fixed-width text tables, the one helper behind every table the command line prints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["fixed_width"]


def fixed_width(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """The lines of a table: the header, a rule of dashes under each column, then the rows.

    Args:
        header: the column titles.
        rows: the cells, as strings, one sequence per row.
        right: indices of the columns aligned right (numbers); the others are aligned left.
    """
    rows = [tuple(r) for r in rows]
    right = set(right)
    widths = [max(len(r[i]) for r in [tuple(header), *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]
