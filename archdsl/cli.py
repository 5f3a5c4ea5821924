"""The command line: ``archdsl build | check | summary | list``.

Errors in a spec print as ``file:line:col: error: ...`` with the line and a caret, and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from archdsl.errors import SpecError
from archdsl.frontend.values import parse_cli_value
from archdsl.ir import Shape
from archdsl.limits import DEFAULT
from archdsl.registry import list_specs


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {text!r}")
    return key.strip(), value


def _shape(text: str) -> Shape:
    try:
        return Shape.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .arch file, or the name of a bundled spec (see 'archdsl list')")
    p.add_argument("--set", dest="params", metavar="NAME=VALUE", type=_key_value, action="append", default=[],
                   help="set a net parameter, e.g. --set n=18 or --set shortcut=A (repeatable)")
    p.add_argument("--input", type=_shape, metavar="CxHxW", help="input shape, overriding the spec's")
    p.add_argument("--net", help="which net of the file (when it defines several)")
    p.add_argument("--limit", dest="limits", metavar="NAME=VALUE", type=_key_value, action="append", default=[],
                   help="raise or lower a resource limit, e.g. --limit max_nodes=1000000")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="archdsl", description="Compile CNN architecture specs to PyTorch.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="check a spec, print its summary, write the PyTorch module")
    _spec_args(p)
    p.add_argument("-o", "--output", help="output file (default build/<net>.py)")
    p.add_argument("--backend", choices=("torch", "triton"), default="torch")
    p.add_argument("--brief", action="store_true", help="summary rows for weighted layers only")

    p = sub.add_parser("check", help="check a spec: parse, expand, shapes")
    _spec_args(p)

    p = sub.add_parser("summary", help="per-layer shapes, parameters, MACs, receptive field")
    _spec_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--brief", action="store_true", help="rows for weighted layers only")

    sub.add_parser("list", help="the bundled specs")
    return ap


def _load(args):
    from archdsl.pipeline import load

    limits = DEFAULT
    if args.limits:
        try:
            limits = DEFAULT.updated(**{k: int(v) for k, v in args.limits})
        except ValueError as err:
            raise SpecError(f"--limit: {err}") from None
    params = {k: parse_cli_value(v) for k, v in args.params}
    return load(args.spec, net=args.net, input=args.input, limits=limits, params=params)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _build(args) -> int:
    from archdsl.codegen.torch_source import emit_source
    from archdsl.passes import lowering_pipeline
    from archdsl.summary import table

    graph = _load(args)
    lowered = lowering_pipeline(graph, backend=args.backend)
    source = emit_source(lowered, backend=args.backend)
    out = Path(args.output) if args.output else Path("build") / f"{graph.name}.py"
    print(table(lowered, brief=args.brief))
    write_atomic(out, source)
    print(f"\nwrote {out}")
    return 0


def _check(args) -> int:
    graph = _load(args)
    print(f"ok: {graph.name}: {graph.input_shape} -> {graph.output_shape}, {graph.params:,} parameters, "
          f"{graph.macs:,} MACs")
    return 0


def _summary(args) -> int:
    from archdsl.summary import table, to_json

    graph = _load(args)
    print(to_json(graph) if args.json else table(graph, brief=args.brief))
    return 0


def _list(args) -> int:
    specs = list_specs()
    width = max(len(s.name) for s in specs)
    for s in specs:
        print(f"{s.name:<{width}}  {s.description}")
    return 0


COMMANDS = {"build": _build, "check": _check, "summary": _summary, "list": _list}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
