"""The command line's ``draw``, ``export`` and ``convert``: pictures of a spec, the compiled
module as ONNX or a torch.export program, and foreign weights mapped onto a spec.

Each subcommand stores its handler as ``run``; :func:`archdsl.cli.main` calls it and turns a
SpecError or an OSError into exit code 2. The errors these commands foresee (a missing optional
library, weights that do not fit) print as one line and exit 2 as well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``draw``, ``export`` and ``convert`` to the ``archdsl`` command line."""
    from archdsl.cli import _spec_args
    from archdsl.draw import FORMATS

    p = sub.add_parser("draw", help="a picture of the net: one box per statement, shapes on the edges, "
                                    "parameters and MACs in the boxes (Graphviz dot layout)")
    _spec_args(p)
    p.add_argument("-o", "--output", help="output file (default build/<net>.<format>)")
    p.add_argument("--format", choices=FORMATS, help="svg, png, pdf, or the dot source (default: from the "
                                                     "output file's suffix, else svg)")
    p.add_argument("--expand", action="store_true",
                   help="one box per repeat of a repeated statement or block call")
    p.add_argument("--style", choices=("graph", "figure"), default="graph",
                   help="graph: every statement, laid out by Graphviz (default); figure: a compact "
                        "paper-style picture, a box per stage or block, width by channels and height by "
                        "resolution (matplotlib)")
    p.set_defaults(run=_draw)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _output(args, name: str, suffix: str) -> Path:
    return Path(args.output) if args.output else Path("build") / f"{name}.{suffix}"


def _draw(args) -> int:
    from archdsl.cli import _load, write_atomic
    from archdsl.draw import FORMATS, DrawError, render

    graph = _load(args)
    fmt = args.format
    if fmt is None and args.output:
        fmt = Path(args.output).suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            return _fail(f"cannot tell the picture format from {args.output!r}: give --format "
                         f"({', '.join(FORMATS)})")
    fmt = fmt or "svg"
    out = _output(args, graph.name, fmt)
    try:
        if args.style == "figure":
            from archdsl.draw_figure import figure

            if fmt == "dot":
                return _fail("--style figure draws with matplotlib: give --format svg, png or pdf")
            data = figure(graph, format=fmt)
        else:
            data = render(graph, format=fmt, expand=args.expand)
    except DrawError as err:
        return _fail(str(err))
    write_atomic(out, data)
    print(f"wrote {out}")
    return 0
