"""Rows of results as text, CSV, Markdown, JSON or LaTeX: one renderer for every table the
ablation commands print (``sweep``, ``summary --format``, ``report``).

A table is a list of dicts with the same keys; a :class:`Column` says how one key is shown.
CSV and JSON carry the raw values (numbers stay numbers); text, Markdown and LaTeX show them
for people (thousands separators, shapes as ``16x32x32``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from archdsl.tables import fixed_width

FORMATS = ("text", "csv", "md", "json", "latex")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    show: Callable[[Any], str] | None = None  # how people read the value (default: see _show)


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return _joined(value)
    return str(value)


def _joined(values) -> str:
    """A shape as ``16x32x32``, a list of names as ``a, b``."""
    numbers = all(isinstance(v, int) for v in values)
    return ("x" if numbers else ", ").join(map(str, values))


def _raw(value: Any) -> Any:
    """A value for CSV: shapes as ``16x32x32``, everything else as it is."""
    if isinstance(value, (list, tuple)):
        return _joined(value)
    return "" if value is None else value


def columns_of(rows: Sequence[dict]) -> list[Column]:
    """One column per key of the rows, in first-seen order, headed by the key itself."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return [Column(k, k) for k in keys]


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _numeric(rows: Sequence[dict], key: str) -> bool:
    values = [r.get(key) for r in rows if r.get(key) is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def render(rows: Sequence[dict], fmt: str = "text", columns: Sequence[Column] | None = None,
           title: str | None = None) -> str:
    """The rows as a table in ``fmt`` (one of :data:`FORMATS`).

    Args:
        rows: one dict per row.
        fmt: ``text`` (aligned columns), ``csv``, ``md`` (GitHub Markdown), ``json`` (a list of
            objects with the raw values) or ``latex`` (a booktabs ``tabular``).
        columns: which keys to show, in order, and their headers (default: every key).
        title: a line above a text table, or a caption comment in Markdown and LaTeX.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    columns = list(columns) if columns is not None else columns_of(rows)
    if fmt == "json":
        return json.dumps([{c.key: row.get(c.key) for c in columns} for row in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        for row in rows:
            writer.writerow([_raw(row.get(c.key)) for c in columns])
        return out.getvalue().rstrip("\n")
    cells = [[(c.show or _show)(row.get(c.key)) for c in columns] for row in rows]
    right = [_numeric(rows, c.key) for c in columns]
    headers = [c.header for c in columns]
    if fmt == "md":
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("| " + " | ".join("---:" if r else "---" for r in right) + " |")
        lines += ["| " + " | ".join(c.replace("|", r"\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    if fmt == "latex":
        spec = "".join("r" if r else "l" for r in right)
        lines = [f"% {title}"] if title else []
        lines += [f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
                  " & ".join(_latex(h) for h in headers) + r" \\", r"\midrule"]
        lines += [" & ".join(_latex(c) for c in row) + r" \\" for row in cells]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)
    lines = [title] if title else []
    lines += fixed_width(headers, cells, right=[i for i, r in enumerate(right) if r])
    return "\n".join(lines)
