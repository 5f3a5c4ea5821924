"""The command line's ``draw``, ``export`` and ``convert``: pictures of a spec, the compiled
module as ONNX or a torch.export program, and foreign weights mapped onto a spec.

:data:`COMMANDS` holds the three subcommands, which :mod:`archdsl.cli` registers; its ``main``
turns a SpecError or an OSError into exit code 2. The errors these commands foresee (a missing optional
library, weights that do not fit) print as one line and exit 2 as well.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from archdsl.arguments import OUTPUT_DIR, Command, load_spec, output_path, spec_args, write_atomic


def _draw_args(p: argparse.ArgumentParser) -> None:
    from archdsl.draw import FORMATS

    spec_args(p)
    p.add_argument("-o", "--output", help=f"output file, or a folder to write <net>.<format> into (default "
                                          f"{OUTPUT_DIR}/<net>.<format>)")
    p.add_argument("--format", choices=FORMATS, help="svg, png, pdf, or the dot source (default: from the "
                                                     "output file's suffix, else svg)")
    p.add_argument("--expand", action="store_true",
                   help="one box per repeat of a repeated statement or block call")
    p.add_argument("--style", choices=("graph", "figure"), default="graph",
                   help="graph: every statement, laid out by Graphviz (default); figure: a compact "
                        "paper-style picture, a box per stage or block, width by channels and height by "
                        "resolution (matplotlib)")


def _export_args(p: argparse.ArgumentParser) -> None:
    spec_args(p)
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX model (input 'input', output 'output')")
    p.add_argument("--pt2", metavar="FILE", help="write a torch.export program (torch.export.load reads it)")
    p.add_argument("--weights", metavar="FILE",
                   help="trained weights: the ordinary module's state dict, torch.save file or .safetensors")
    p.add_argument("--dense", action="store_true",
                   help="the fully-convolutional form, its height and width dynamic (from one step of "
                        "the feature grid past the spec's input size up)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--check", action="store_true",
                   help="run the ONNX model in onnxruntime and compare it with the PyTorch module")


def _convert_args(p: argparse.ArgumentParser) -> None:
    spec_args(p)
    p.add_argument("--from", dest="source_file", required=True, metavar="FILE",
                   help="the foreign state dict: torch.save file (read with weights_only) or .safetensors")
    p.add_argument("--to", dest="target_file", required=True, metavar="FILE",
                   help="where to write the spec's state dict (.safetensors by suffix, else torch.save)")
    p.add_argument("--source", choices=("auto", "torchvision", "timm"), default="auto",
                   help="where the weights come from: torchvision and timm ResNets stride the 3x3 (v1.5), "
                        "which a state dict cannot show (default auto: not checked)")
    p.add_argument("--partial", action="store_true",
                   help="write what fits even when the mapping is partial or ambiguous")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _output(args, name: str, suffix: str) -> Path:
    return output_path(args.output, f"{name}.{suffix}")


def _draw(args) -> int:
    from archdsl.draw import FORMATS, DrawError, render

    graph = load_spec(args)
    fmt = args.format
    is_folder = args.output and (args.output.endswith(("/", os.sep)) or os.path.isdir(args.output))
    if fmt is None and args.output and not is_folder:
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


def _export(args) -> int:
    from archdsl.export import ExportError, check_onnx, prepare, to_onnx, to_pt2, trace

    if not (args.onnx or args.pt2):
        return _fail("nothing to write: give --onnx FILE and/or --pt2 FILE")
    graph, dense_input = load_spec(args, dense=True) if args.dense else (load_spec(args), None)
    try:
        module, example, dynamic = prepare(graph, weights=args.weights, dense=args.dense, input=dense_input)
        program = trace(module, example, dynamic)
        if args.pt2:
            write_atomic(Path(args.pt2), to_pt2(program))
            print(f"wrote {args.pt2}")
        if args.onnx:
            data = to_onnx(program, opset=args.opset)
            write_atomic(Path(args.onnx), data)
            print(f"wrote {args.onnx}")
            if args.check:
                diff = check_onnx(data, module, example)
                print(f"onnxruntime vs PyTorch on a random {'x'.join(map(str, example.shape))} input: "
                      f"largest difference {diff:.3g}")
    except ExportError as err:
        return _fail(str(err))
    return 0


def _convert(args) -> int:
    import io

    import torch

    from archdsl.pretrained import WeightMismatch, convert

    graph = load_spec(args)
    try:
        state, report = convert(graph, args.source_file, args.source, strict=not args.partial)
    except WeightMismatch as err:
        if err.report.rows:
            print(err.report.table())
        return _fail(str(err))
    print(report.table())
    out = Path(args.target_file)
    if out.suffix == ".safetensors":
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in state.items()})
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    write_atomic(out, data)
    print(f"wrote {out}")
    return 0


#: ``draw``, ``export`` and ``convert``, registered by :mod:`archdsl.cli` after its own commands.
COMMANDS = (
    Command("draw", "a picture of the net: one box per statement, shapes on the edges, parameters and MACs "
                    "in the boxes (Graphviz dot layout)", _draw_args, _draw,
            "archdsl draw resnet50 -o resnet50.svg --expand"),
    Command("export", "the compiled module as ONNX (--onnx) and/or a torch.export program (--pt2), the "
                      "spec's layer names kept", _export_args, _export,
            "archdsl export cifar_resnet --onnx cifar_resnet.onnx --check"),
    Command("convert", "map foreign weights (torchvision, timm, ...) onto the spec by structure and save them "
                       "under the spec's names, with a per-tensor report", _convert_args, _convert,
            "archdsl convert resnet50 --set v1_5=1 --from resnet50_tv.pth --to resnet50.pt --source torchvision"),
)
