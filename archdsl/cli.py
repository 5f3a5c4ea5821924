"""The command line: ``archdsl build | check | summary | list | eval | fmt | kernels``.

Errors in a spec print as ``file:line:col: error: ...`` with the line and a caret, and exit 2;
warnings about a spec print the same way (``file:line:col: warning: ...``), and the command goes
on; an argument that cannot be used (an output path that is a device, say); an internal
error (a bug in archdsl) prints as one, without a traceback, and exits 3.

Each command is a :class:`Command` in :data:`COMMANDS`: its arguments, the function that runs
it and an example for its help. A new command is one more entry (:func:`register`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Callable, NoReturn

from archdsl.arguments import OUTPUT_DIR, Command, check_output, write_atomic
from archdsl.arguments import limits_of as _limits
from archdsl.arguments import load_spec as _load
from archdsl.arguments import output_path as _output_path
from archdsl.arguments import spec_args as _spec_args
from archdsl.errors import SpecError, SpecWarning, UsageError, printable
from archdsl.limits import DEFAULT, tally
from archdsl.registry import list_specs

__all__ = ["COMMANDS", "OUTPUT_DIR", "check_output", "main", "parser", "register", "write_atomic"]


COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    """Add a subcommand (it appears in ``archdsl --help`` in the order registered)."""
    COMMANDS[command.name] = command
    return command


# -- argument types -------------------------------------------------------------------------
def _numbers(kind, text: str) -> tuple:
    if len(text) > 1000:
        raise argparse.ArgumentTypeError(f"expected a short list of numbers, found {len(text)} characters")
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, found {text!r}") from None
    if not values or any(v <= 0 for v in values if kind is int):
        raise argparse.ArgumentTypeError(f"expected positive numbers, found {text!r}")
    return values


def _ints(text: str) -> tuple[int, ...]:
    return _numbers(int, text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    values = _numbers(float, text)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three values R,G,B, found {text!r}")
    return values


# -- loading and writing ----------------------------------------------------------------------
# -- the commands -------------------------------------------------------------------------------
def _build_args(p: argparse.ArgumentParser) -> None:
    from archdsl.backends import BACKENDS

    _spec_args(p)
    p.add_argument("-o", "--output", metavar="PATH",
                   help=f"output file, or a folder to write <net>.py into (default {OUTPUT_DIR}/<net>.py)")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="torch",
                   help="torch: PyTorch layers; triton: archdsl's fused Triton kernels where they apply "
                        "(default torch)")
    p.add_argument("--brief", action="store_true", help="summary rows for weighted layers only")
    p.add_argument("--softmax", action="store_true",
                   help="end the module in the spec's final softmax (default: return the logits before it)")
    p.add_argument("--dense", action="store_true",
                   help="the fully-convolutional form for dense evaluation (fc layers become convolutions "
                        "converted at the spec's input size; --input sets the size it is summarised at); "
                        f"it loads the ordinary module's state dict unchanged (default output "
                        f"{OUTPUT_DIR}/<net>_dense.py)")


def _build(args) -> int:
    from archdsl.backends import get
    from archdsl.codegen.torch_source import emit_source
    from archdsl.pipeline import lower_graph
    from archdsl.summary import table

    backend = get(args.backend)
    missing = backend.missing()
    if missing:  # the written module would not import
        raise UsageError(f"--backend {backend.name} writes a module that imports {', '.join(missing)}, which is "
                         f"not installed here (pip install 'archdsl[{backend.name}]'); --backend torch needs "
                         "nothing more")
    limits = _limits(args)
    if args.dense:
        graph, dense_input = _load(args, dense=True)
    else:
        graph, dense_input = _load(args), None
    # The output is checked before the work and the summary, so a bad -o costs nothing.
    out = _output_path(args.output, f"{graph.name}_dense.py" if args.dense else f"{graph.name}.py")
    lowered = lower_graph(graph, backend, dense=args.dense, dense_input=dense_input, softmax=args.softmax)
    source = emit_source(lowered, backend=backend)
    tally(emitted_bytes=len(source))
    if len(source) > limits.max_output_bytes:
        raise SpecError(f"the module source of net {graph.name!r} is {len(source):,} bytes, over the limit of "
                        f"{limits.max_output_bytes:,} (limit max_output_bytes)", graph.graph.get("spec"))
    print(table(lowered, brief=args.brief))
    if backend.rules:
        from archdsl.passes.fuse import fusion_summary

        print(f"backend {backend.name}: {fusion_summary(lowered)}")
    write_atomic(out, source)
    print(f"\nwrote {printable(str(out))}")
    return 0


def _check(args) -> int:
    graph = _load(args)
    print(f"ok: {graph.name}: {graph.input_shape} -> {graph.output_shape}, {graph.params:,} parameters, "
          f"{graph.macs:,} MACs")
    return 0


def _summary_args(p: argparse.ArgumentParser) -> None:
    _spec_args(p)
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: counts are param_count, mac_count, flop_count; the net's "
                        "parameter values are arguments; each layer has its file, line and column")
    p.add_argument("--brief", action="store_true", help="rows for weighted layers only")
    p.add_argument("--format", choices=("text", "csv", "md", "json", "latex"),
                   help="the table with per-stage and per-block subtotals, as text, csv, md, json or latex")


def _summary(args) -> int:
    from archdsl.summary import table, to_json

    graph = _load(args)
    if args.format:
        from archdsl.workflow.commands import summary_text

        print(summary_text(graph, args.format))
        return 0
    print(to_json(graph) if args.json else table(graph, brief=args.brief))
    return 0


def _list(args) -> int:
    from archdsl.pipeline import load
    from archdsl.summary import arguments
    from archdsl.tables import fixed_width

    rows = []
    for s in list_specs():
        try:
            graph = load(s.path)
            n_params, values = f"{graph.params:,}", arguments(graph.graph.get("params", {}))
        except SpecError as err:  # a bundled spec that needs a value: say so rather than fail
            n_params, values = "?", err.message
        rows.append((s.name, n_params, values or "-", s.description))
    print("\n".join(fixed_width(("spec", "parameters", "arguments (defaults)", "description"), rows, right={1})))
    return 0


def _fmt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .arch file, or the name of a bundled spec (printing only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="print nothing; exit 1 if the file is not in the canonical layout")
    mode.add_argument("-i", "--in-place", action="store_true",
                      help="rewrite the file in the canonical layout (a regular file of yours: not a link, "
                           "not a bundled spec)")


def _fmt(args) -> int:
    from archdsl.frontend.loader import SPECS_DIR, check_text, read_source
    from archdsl.frontend.printer import format_text
    from archdsl.registry import resolve_spec

    path = resolve_spec(args.spec)
    if args.in_place:
        check_output(path)
        if path.resolve().is_relative_to(SPECS_DIR.resolve()):
            raise UsageError(f"refusing to rewrite the bundled spec {path}: it belongs to the installed package "
                             f"(copy it first: archdsl fmt {args.spec} > my.arch)")
    text = read_source(path, DEFAULT)
    check_text(text, str(path), DEFAULT)
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


def _eval_args(p: argparse.ArgumentParser) -> None:
    _spec_args(p)
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="state dict of the ordinary module: torch.save file (read with weights_only=True) "
                        "or .safetensors")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="one sub-folder of images per class; sorted folder names are the class indices")
    p.add_argument("--scales", type=_ints, default=(256, 384, 512), metavar="Q,Q,...",
                   help="test scales, the rescaled image's smallest side (default 256,384,512; a few, "
                        "from the net's input size to 1024 or four times it)")
    p.add_argument("--multi-crop", action="store_true",
                   help="multi-crop evaluation instead of dense: a grid of crops of the net's input size "
                        "and their flips per scale, through the ordinary net")
    p.add_argument("--combine", action="store_true", help="dense, multi-crop, and the average of the two")
    p.add_argument("--grid", type=_positive, default=5,
                   help="multi-crop grid size (default 5: 5x5 crops x 2 flips)")
    p.add_argument("--mean", type=_floats, default=None, metavar="R,G,B",
                   help="per-channel mean subtracted from 0..255 pixels (default ImageNet's 123.68,116.779,103.939)")
    p.add_argument("--std", type=_floats, default=(1.0, 1.0, 1.0), metavar="R,G,B",
                   help="per-channel divisor after the mean, on the 0..255 scale (default 1,1,1; "
                        "torchvision-trained weights: 58.395,57.12,57.375)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--batch", type=_positive, default=50, help="crops per forward pass in multi-crop evaluation")


def _eval(args) -> int:
    import torch

    from archdsl import evaluation as ev

    graph = _load(args)
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
    crops = {"multi-crop": 2 * args.grid ** 2 * len(args.scales)}
    print(f"{graph.name} on {printable(str(args.data))}: scales {','.join(map(str, args.scales))}, "
          f"device {args.device}")
    print(ev.table(results, crops))
    return 0


def _kernels_args(p: argparse.ArgumentParser) -> None:
    _spec_args(p)
    p.add_argument("--arch", type=int, default=90, choices=(80, 86, 87, 89, 90, 100), metavar="CC",
                   help="compute capability to compile for: 80, 86, 87, 89, 90 or 100 (default 90, the H100)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="data type of the activations and weights (default bf16)")
    p.add_argument("--batch", type=int, default=64, help="batch size of the launches (default 64)")
    p.add_argument("--training", action="store_true",
                   help="the launches of a training step: BN unfolded, and LRN's backward kernel")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if a config does not compile, does not fit or spills, or a launch has no config")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _kernels(args) -> int:
    import json

    graph = _load(args)
    try:
        from archdsl.codegen.triton import aot
        from archdsl.pipeline import lower_graph

        if args.batch < 1:
            raise ValueError(f"--batch must be positive, got {args.batch}")
        progress = None if args.quiet else _progress_lines(f"sm_{args.arch}")
        rep = aot.report(lower_graph(graph, "triton"), arch=args.arch, dtype=args.dtype, batch=args.batch,
                         training=args.training, progress=progress)
    except (ImportError, ValueError, RuntimeError) as err:  # aot.AotError is a RuntimeError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(rep.to_json(), indent=1) if args.json else aot.table(rep))
    return 1 if args.check and rep.problems() else 0


def _progress_lines(target: str) -> Callable:
    """A progress hook printing one line per kernel config to stderr as it starts compiling
    (lines rather than a bar: they read the same in a terminal and in a CI log)."""
    done = 0

    def progress(row) -> None:
        nonlocal done
        done += 1
        print(f"[{done}] compiling {row.kernel} {row.variant} {row.config} for {target} ({row.layers[0]})",
              file=sys.stderr, flush=True)

    return progress


for _command in (
    Command("build", "check a spec, print its summary, write the PyTorch module", _build_args, _build,
            "archdsl build vgg_e -o models/   # writes models/vgg_e.py"),
    Command("check", "check a spec: parse, expand, shapes", _spec_args, _check,
            "archdsl check cifar_resnet --set n=18"),
    Command("summary", "per-layer shapes, parameters, MACs, receptive field", _summary_args, _summary,
            "archdsl summary resnet50 --brief"),
    Command("list", "the bundled specs, with their parameter counts and arguments", lambda p: None, _list,
            "archdsl list"),
    Command("fmt", "print a spec in the canonical layout (comments kept)", _fmt_args, _fmt,
            "archdsl fmt -i my_net.arch"),
    Command("eval", "top-1/top-5 error on a labelled image folder, by the VGG test protocol "
                    "(dense multi-scale, multi-crop, or both)", _eval_args, _eval,
            "archdsl eval vgg_d --weights vgg16.pt --data val/ --scales 256,384,512 --combine"),
    Command("kernels", "compile the triton backend's kernels for a GPU, offline (no GPU needed), "
                       "and report each config's shared memory, registers and spills", _kernels_args, _kernels,
            "archdsl kernels resnet50 --arch 90 --dtype bf16 --check"),
):
    register(_command)

from archdsl.workflow.commands import COMMANDS as _ABLATION_COMMANDS  # noqa: E402  sweep, train, report

from archdsl.export_commands import COMMANDS as _EXPORT_COMMANDS  # noqa: E402  draw, export, convert

for _command in (*_ABLATION_COMMANDS, *_EXPORT_COMMANDS):
    register(_command)


def parser() -> argparse.ArgumentParser:
    from archdsl import __version__

    ap = argparse.ArgumentParser(prog="archdsl", description="Compile CNN architecture specs to PyTorch.",
                                 epilog="example: archdsl build vgg_e   (see 'archdsl COMMAND --help')")
    ap.add_argument("--version", action="version", version=f"archdsl {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.description or command.help,
                           epilog=f"example:\n  {command.example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(p)
    return ap


@contextlib.contextmanager
def _spec_warnings_as_diagnostics():
    """Print a :class:`SpecWarning` as a spec error prints: ``file:line:col: warning: ...`` and
    its caret lines. Python's own form would prefix the place in archdsl that warned
    (``.../expand.py:613: SpecWarning:``), which means nothing to the spec's author. Other
    warnings keep Python's form; the previous ``warnings.showwarning`` is restored on exit."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, SpecWarning):
            return shown(message, category, filename, lineno, file, line)
        print(message, file=sys.stderr if file is None else file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with _spec_warnings_as_diagnostics():
            return COMMANDS[args.command].run(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    except UsageError as err:  # eval's EvalError among them
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug in archdsl, never a fault of the spec: say so, exit 3
        print(f"error: internal error: {type(err).__name__}: {err}\n"
              "This is a bug in archdsl, not in your spec. Please report it with the spec and the "
              "command line.", file=sys.stderr)
        return 3


def entry(argv: list[str] | None = None) -> NoReturn:
    """The ``archdsl`` command and ``python -m archdsl``: :func:`main`, then the process's exit.
    A process that trained under torchrun leaves through :func:`archdsl.workflow.dist.exit_now`
    (the reason is there); any other exits normally."""
    code = main(argv)
    dist = sys.modules.get("archdsl.workflow.dist")  # imported only by a command that trained
    if dist is not None and dist.left_group():
        dist.exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
