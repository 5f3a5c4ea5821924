"""The command line: ``archdsl build | check | summary | list | eval | fmt | kernels``.

Errors in a spec print as ``file:line:col: error: ...`` with the line and a caret, and exit 2;
an internal error (a bug in archdsl) prints as one, without a traceback, and exits 3.
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
    p.add_argument("--dense", action="store_true",
                   help="the fully-convolutional form for dense evaluation (fc layers become convolutions "
                        "converted at the spec's input size; --input sets the size it is summarised at); "
                        "it loads the ordinary module's state dict unchanged (default output build/<net>_dense.py)")

    p = sub.add_parser("check", help="check a spec: parse, expand, shapes")
    _spec_args(p)

    p = sub.add_parser("summary", help="per-layer shapes, parameters, MACs, receptive field")
    _spec_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--brief", action="store_true", help="rows for weighted layers only")

    sub.add_parser("list", help="the bundled specs")

    p = sub.add_parser("fmt", help="print a spec in the canonical layout (comments kept)")
    p.add_argument("spec", help="a .arch file, or the name of a bundled spec")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="print nothing; exit 1 if the file is not in the canonical layout")
    mode.add_argument("-i", "--in-place", action="store_true", help="rewrite the file in the canonical layout")

    p = sub.add_parser("eval", help="top-1/top-5 error on a labelled image folder, by the VGG test protocol "
                                    "(dense multi-scale, multi-crop, or both)")
    _spec_args(p)
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="state dict of the ordinary module: torch.save file or .safetensors")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="one sub-folder of images per class; sorted folder names are the class indices")
    p.add_argument("--scales", type=_ints, default=(256, 384, 512), metavar="Q,Q,...",
                   help="test scales, the rescaled image's smallest side (default 256,384,512)")
    p.add_argument("--multi-crop", action="store_true",
                   help="multi-crop evaluation instead of dense: a grid of crops of the net's input size "
                        "and their flips per scale, through the ordinary net")
    p.add_argument("--combine", action="store_true", help="dense, multi-crop, and the average of the two")
    p.add_argument("--grid", type=int, default=5, help="multi-crop grid size (default 5: 5x5 crops x 2 flips)")
    p.add_argument("--mean", type=_floats, default=None, metavar="R,G,B",
                   help="per-channel mean subtracted from 0..255 pixels (default ImageNet's 123.68,116.779,103.939)")
    p.add_argument("--std", type=_floats, default=(1.0, 1.0, 1.0), metavar="R,G,B",
                   help="per-channel divisor after the mean, on the 0..255 scale (default 1,1,1; "
                        "torchvision-trained weights: 58.395,57.12,57.375)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, default=50, help="crops per forward pass in multi-crop evaluation")

    p = sub.add_parser("kernels", help="compile the triton backend's kernels for a GPU, offline (no GPU needed), "
                                       "and report each config's shared memory, registers and spills")
    _spec_args(p)
    p.add_argument("--arch", type=int, default=90, choices=(80, 86, 87, 89, 90, 100), metavar="CC",
                   help="compute capability to compile for: 80, 86, 87, 89, 90 or 100 (default 90, the H100)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--batch", type=int, default=64, help="batch size of the launches (default 64)")
    p.add_argument("--training", action="store_true",
                   help="the launches of a training step: BN unfolded, and LRN's backward kernel")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if a config does not compile, does not fit or spills, or a launch has no config")

    from archdsl import export_commands  # draw, export, convert: each sets its handler as `run`

    export_commands.register(sub)
    return ap


def _numbers(kind, text: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, found {text!r}") from None
    if not values or any(v <= 0 for v in values if kind is int):
        raise argparse.ArgumentTypeError(f"expected positive numbers, found {text!r}")
    return values


def _ints(text: str) -> tuple[int, ...]:
    return _numbers(int, text)


def _floats(text: str) -> tuple[float, ...]:
    values = _numbers(float, text)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three values R,G,B, found {text!r}")
    return values


def _load(args, dense: bool = False):
    """The graph of the spec the arguments name; with ``dense``, (graph, dense input) for the
    dense form (see :func:`archdsl.pipeline.load_for_dense`)."""
    from archdsl.pipeline import load, load_for_dense

    limits = DEFAULT
    if args.limits:
        try:
            limits = DEFAULT.updated(**{k: int(v) for k, v in args.limits})
        except ValueError as err:
            raise SpecError(f"--limit: {err}") from None
    params = {k: parse_cli_value(v) for k, v in args.params}
    if dense:
        return load_for_dense(args.spec, net=args.net, input=args.input, limits=limits, params=params)
    return load(args.spec, net=args.net, input=args.input, limits=limits, params=params)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``text`` (or bytes) to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # keep an existing file's permissions; a new one gets the usual (mkstemp's are 0600)
        mode = path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _build(args) -> int:
    from archdsl.codegen.torch_source import emit_source
    from archdsl.passes import lowering_pipeline
    from archdsl.summary import table

    if args.dense:
        graph, dense_input = _load(args, dense=True)
        lowered = lowering_pipeline(graph, backend=args.backend, dense=True, dense_input=dense_input)
    else:
        graph = _load(args)
        lowered = lowering_pipeline(graph, backend=args.backend)
    source = emit_source(lowered, backend=args.backend)
    default = f"{graph.name}_dense.py" if args.dense else f"{graph.name}.py"
    out = Path(args.output) if args.output else Path("build") / default
    print(table(lowered, brief=args.brief))
    if args.backend == "triton":
        from archdsl.passes.fuse import fusion_summary

        print(f"backend triton: {fusion_summary(lowered)}")
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


def _eval(args) -> int:
    import torch

    from archdsl import evaluation as ev

    graph = _load(args)
    try:
        if str(args.device).startswith("cuda") and not torch.cuda.is_available():
            raise ev.EvalError(f"--device {args.device}: no CUDA device is available")
        try:
            torch.device(args.device)
        except RuntimeError as err:
            raise ev.EvalError(f"--device: {err}") from None
        results = ev.evaluate(
            graph, ev.load_weights(args.weights), args.data, scales=args.scales,
            dense=not args.multi_crop or args.combine, multi_crop=args.multi_crop or args.combine,
            combine=args.combine, mean=args.mean or ev.IMAGENET_MEAN, std=args.std,
            device=args.device, batch=args.batch, grid=args.grid)
    except ev.EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    crops = {"multi-crop": 2 * args.grid ** 2 * len(args.scales)}
    print(f"{graph.name} on {args.data}: scales {','.join(map(str, args.scales))}, device {args.device}")
    print(ev.table(results, crops))
    return 0


def _fmt(args) -> int:
    from archdsl.frontend.loader import read_source
    from archdsl.frontend.printer import format_text
    from archdsl.registry import resolve_spec

    path = resolve_spec(args.spec)
    text = read_source(path, DEFAULT)
    canonical = format_text(text, str(path))
    if args.check:
        if text != canonical:
            print(f"{path}: not in the canonical layout (archdsl fmt -i {path} rewrites it)", file=sys.stderr)
            return 1
        return 0
    if args.in_place:
        if text != canonical:
            write_atomic(path, canonical)
        return 0
    sys.stdout.write(canonical)
    return 0


def _kernels(args) -> int:
    import json

    graph = _load(args)
    try:
        from archdsl.codegen.triton import aot

        if args.batch < 1:
            raise ValueError(f"--batch must be positive, got {args.batch}")
        rep = aot.report(graph, arch=args.arch, dtype=args.dtype, batch=args.batch, training=args.training)
    except (ImportError, ValueError, RuntimeError) as err:  # aot.AotError is a RuntimeError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(rep.to_json(), indent=1) if args.json else aot.table(rep))
    return 1 if args.check and rep.problems() else 0


COMMANDS = {"build": _build, "check": _check, "summary": _summary, "list": _list, "eval": _eval,
            "fmt": _fmt, "kernels": _kernels}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return (COMMANDS.get(args.command) or args.run)(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug in archdsl, never a fault of the spec: say so, exit 3
        print(f"error: internal error: {type(err).__name__}: {err}\n"
              "This is a bug in archdsl, not in your spec. Please report it with the spec and the "
              "command line.", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
