"""The README's layer table keeps up with the language: every option a layer takes is listed in
that layer's row. (``stride=`` and ``k=`` were once options that only the code knew of.)"""

from __future__ import annotations

import re
from pathlib import Path

from archdsl.ops import TABLE

README = Path(__file__).resolve().parent.parent / "README.md"


def layer_rows(readme: str) -> list[str]:
    """The rows of the table under **Layers** in the README's language section."""
    section = readme.split("## The language", 1)[1].split("\n## ", 1)[0]
    table = section.split("**Layers**", 1)[1].split("\n\n", 2)[1]
    return [line for line in table.splitlines() if line.startswith("| `")]


def missing_options(readme: str) -> list[str]:
    """``layer option`` for each option of a written layer that its README row does not name
    (as `` `opt` `` or `` `opt=...` ``), and ``layer (no row)`` for a layer with options and no row."""
    rows = layer_rows(readme)
    missing = []
    for row in (r for r in TABLE.values() if r.dsl and r.dsl.options):
        # The row whose first column writes the layer: a backticked example starting with one of its names.
        names = "|".join(re.escape(n) for n in row.dsl.names)
        ours = [r for r in rows if re.search(rf"`(?:{names})(?![a-z_])", r.split(" | ")[0], re.I)]
        if not ours:
            missing.append(f"{row.dsl.names[0]} (no row)")
            continue
        for option in row.dsl.options:
            if not any(re.search(rf"`{re.escape(option)}(?:=[^`]*)?`", r) for r in ours):
                missing.append(f"{row.dsl.names[0]} {option}")
    return missing


def test_the_readme_layer_table_lists_every_option_of_every_layer():
    assert len(layer_rows(README.read_text())) >= 10
    assert missing_options(README.read_text()) == []


def test_the_check_finds_an_option_left_out():
    # Without stride= and k= in the conv row (the README before they were listed), both are found.
    text = README.read_text()
    row = next(r for r in layer_rows(text) if r.startswith("| `conv3-64`"))
    trimmed = row.replace(", `stride=` (instead of `/S`), `k=` (the window, instead of `convK`)", "")
    assert trimmed != row
    assert missing_options(text.replace(row, trimmed)) == ["conv stride", "conv k"]
