"""The ablation commands: ``archdsl sweep``, ``train`` and ``report``, and ``summary --format``.

:data:`COMMANDS` holds the three subcommands, which :mod:`archdsl.cli` registers after its own.
Heavy imports (torch, matplotlib) happen inside the handlers, so ``archdsl --help``
and the other commands stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

from archdsl.arguments import Command, check_output, key_value, shape, spec_args
from archdsl.workflow.tables import FORMATS

# Options of the training loop (train.Options) on the command line: flag, field, argparse kwargs.
_OPTION_FLAGS = (
    ("--device", "device", {"default": "auto", "help": "cpu, cuda, cuda:1 (default auto)"}),
    ("--seed", "seed", {"type": int, "default": 0, "help": "seed of weights, data order, augmentation"}),
    ("--backend", "backend", {"choices": ("torch", "triton"), "default": "torch",
                              "help": "torch: PyTorch layers; triton: archdsl's fused kernels (default torch)"}),
    ("--amp", "amp", {"action": argparse.BooleanOptionalAction, "default": None,
                      "help": "bf16 autocast (default: on CUDA)"}),
    ("--channels-last", "channels_last", {"action": argparse.BooleanOptionalAction, "default": None,
                                          "help": "channels-last memory format (default: on CUDA)"}),
    ("--compile", "compile", {"action": "store_true", "help": "torch.compile the module"}),
    ("--sync-bn", "sync_bn", {"action": "store_true",
                              "help": "distributed runs on CUDA: batch statistics over the global batch"}),
    ("--eval-every", "eval_every", {"type": int, "default": 0, "metavar": "ITERS",
                                    "help": "iterations between evaluations and checkpoints (default one epoch)"}),
    ("--stop-after", "stop_after", {"type": int, "default": 0, "metavar": "ITERS",
                                    "help": "checkpoint and stop after this iteration (continue with --resume)"}),
    ("--no-progress", "progress", {"action": "store_false", "help": "no progress bars"}),
)


def _train_args(p: argparse.ArgumentParser) -> None:
    from archdsl.workflow.recipes import PRESETS, Recipe

    p.add_argument("--data", metavar="DIR", help="'digits' (bundled), a CIFAR-10/100 python-batch folder, "
                                                 "or an image folder (train/ and val/ of class folders)")
    p.add_argument("--recipe", default="resnet-cifar", choices=tuple(PRESETS),
                   help="the paper's training recipe to start from (default resnet-cifar)")
    group = p.add_argument_group("recipe fields (override the preset's)")
    for f in dataclasses.fields(Recipe):
        if f.name != "name":
            group.add_argument("--" + f.name.replace("_", "-"), dest="recipe_" + f.name, metavar="VALUE",
                               help=f"(preset default {f.default})")
    group = p.add_argument_group("run options")
    for flag, dest, kwargs in _OPTION_FLAGS:
        group.add_argument(flag, dest=dest, **kwargs)


def _recipe(args):
    from archdsl.workflow.recipes import recipe

    changes = {k[len("recipe_"):]: v for k, v in vars(args).items() if k.startswith("recipe_") and v is not None}
    return recipe(args.recipe, **changes)


def _options(args):
    from archdsl.workflow.train import Options

    return Options(**{dest: getattr(args, dest) for _, dest, _ in _OPTION_FLAGS})


def _train_argv(args) -> list[str]:
    """The train arguments of a parsed sweep, as a command line for each variant's job."""
    data = Path(args.data)
    argv = ["--data", str(data.resolve()) if data.exists() else str(args.data), "--recipe", args.recipe]
    for key, value in vars(args).items():
        if key.startswith("recipe_") and value is not None:
            argv += ["--" + key[len("recipe_"):].replace("_", "-"), str(value)]
    for flag, dest, kwargs in _OPTION_FLAGS:
        value = getattr(args, dest)
        if value == kwargs.get("default", False if kwargs.get("action") == "store_true" else True):
            continue
        if kwargs.get("action") == argparse.BooleanOptionalAction:
            argv.append(flag if value else "--no-" + flag[2:])
        elif kwargs.get("action") in ("store_true", "store_false"):
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def _errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Training, data and plotting errors exit 2 with one line, as spec errors do; a process
    group the command joined (under torchrun) is left before it returns."""

    def handler(args) -> int:
        from archdsl.workflow import dist
        from archdsl.workflow.data import DataError
        from archdsl.workflow.train import TrainError

        try:
            code = run(args)
        except (TrainError, DataError) as err:
            print(f"error: {err}", file=sys.stderr)
            code = 2
        # Only after a return or one of these errors, which every rank meets alike: leaving the
        # group while another rank waits in a collective would hang it (an unexpected exception
        # ends the process instead, and torchrun stops the others).
        dist.shutdown()
        return code

    return handler


def _main_rank() -> bool:
    """Whether this process speaks for the run: always, unless torchrun started it as a rank > 0."""
    return os.environ.get("RANK", "0") == "0"


# -- sweep --------------------------------------------------------------------------------------
def _sweep(args) -> int:
    from archdsl.workflow import sweep
    from archdsl.workflow.tables import render

    if not args.grid:
        print("error: sweep: give at least one --set NAME=V1,V2,...", file=sys.stderr)
        return 2
    if args.jobs:
        check_output(Path(args.jobs))  # before the table: a --jobs that cannot be written costs nothing
    built = sweep.variants(args.spec, args.grid, net=args.net, input=args.input)
    rows = sweep.table_rows(args.spec, built)
    if _main_rank():  # under torchrun, one table
        print(render(rows, args.format, sweep.columns([k for k, _ in args.grid])))
    if not (args.train or args.jobs):
        return 0
    if not args.data:
        print("error: sweep --train and --jobs need --data", file=sys.stderr)
        return 2
    jobs = sweep.train_commands(args.spec, [values for values, _ in built], _train_argv(args), args.out)
    if args.jobs:
        from archdsl.workflow.runs import write_text

        write_text(Path(args.jobs), sweep.job_lines(jobs))
        print(f"\nwrote {len(jobs)} jobs to {args.jobs} (JSON lines: name, arguments, run_dir, argv, command)",
              file=sys.stderr)
        return 0
    from archdsl.workflow.train import train

    recipe, options = _recipe(args), _options(args)
    from archdsl.workflow.runs import CHECKPOINT_FILE

    for job in jobs:
        # --resume continues the variants that have a checkpoint and starts the others
        resume = args.resume and (Path(job["run_dir"]) / CHECKPOINT_FILE).is_file()
        info = train(args.spec, args.data, job["run_dir"], recipe=recipe, params=job["arguments"], net=args.net,
                     options=options, resume=resume)
        if info["status"] != "done":
            print(f"{job['name']}: {info['status']}; the rest of the sweep is not run", file=sys.stderr)
            return _exit_code(info)
    if _main_rank():
        print(f"\ntrained {len(jobs)} variants under {args.out}; 'archdsl report {args.out}' tabulates and "
              "plots them", file=sys.stderr)
    return 0


# -- train --------------------------------------------------------------------------------------
def _exit_code(info: dict) -> int:
    import signal

    name = info.get("signal")
    if info["status"] == "done" or name == "stop_after":
        return 0
    return 128 + int(getattr(signal, name, signal.SIGTERM))


def _train(args) -> int:
    from archdsl.frontend.values import parse_cli_value
    from archdsl.workflow.sweep import variant_name
    from archdsl.workflow.train import train

    if not args.data:
        print("error: train: --data is required", file=sys.stderr)
        return 2
    if args.input or args.limits:
        print("error: train: --input and --limit are not supported (the run trains the spec's input size)",
              file=sys.stderr)
        return 2
    params = {k: parse_cli_value(v) for k, v in args.params}
    out = args.out or str(Path("runs") / variant_name(args.spec, params))
    info = train(args.spec, args.data, out, recipe=_recipe(args), params=params, net=args.net,
                 options=_options(args), resume=args.resume)
    if not _main_rank():
        pass  # under torchrun, rank 0 says how the run ended
    elif info["status"] == "done":
        print(f"{out}: done, {info['completed_iterations']} iterations in {info['elapsed_s']:.1f} s",
              file=sys.stderr)
    else:
        print(f"{out}: {info['status']} ({info.get('signal')}) at iteration {info['completed_iterations']}; "
              f"continue with --resume", file=sys.stderr)
    return _exit_code(info)


# -- report -------------------------------------------------------------------------------------
def _report(args) -> int:
    from archdsl.workflow import report
    from archdsl.workflow.runs import write_text
    from archdsl.workflow.tables import render

    runs = report.find_runs(args.runs)
    rows = report.table_rows(runs)
    print(render(rows, args.format, report.COLUMNS))
    if args.out:
        written = report.plots(runs, Path(args.out), x=args.x)
        for fmt, suffix in (("md", "md"), ("csv", "csv")):
            path = Path(args.out) / f"results.{suffix}"
            write_text(path, render(rows, fmt, report.COLUMNS) + "\n")
            written.append(path)
        print("\nwrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


# -- summary --format ---------------------------------------------------------------------------
def summary_text(graph, fmt: str) -> str:
    """``archdsl summary --format``: the per-layer table and the per-stage and per-block
    subtotals, in any of the table formats (JSON: the summary's JSON plus ``subtotals``)."""
    import json

    from archdsl import summary
    from archdsl.workflow.counts import subtotals
    from archdsl.workflow.tables import render

    totals = subtotals(graph)
    if fmt == "json":
        return json.dumps({**json.loads(summary.to_json(graph)), "subtotals": totals}, indent=2)
    if fmt == "text":
        return summary.table(graph) + "\n\n" + render(totals, "text", title="per stage and block")
    layers = [{"level": "layer", **row} for row in summary.rows(graph)]
    if fmt == "csv":
        return render(layers + totals, "csv")
    return render(layers, fmt, title=graph.name) + "\n\n" + render(totals, fmt, title="per stage and block")


# -- wiring -------------------------------------------------------------------------------------
def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .arch file, or the name of a bundled spec")
    p.add_argument("--set", dest="grid", metavar="NAME=V1,V2,...", type=key_value, action="append", default=[],
                   help="values of a net parameter; the sweep is the cartesian product (repeatable)")
    p.add_argument("--net", help="which net of the file (when it defines several)")
    p.add_argument("--input", type=shape, metavar="CxHxW", help="input shape, overriding the spec's")
    p.add_argument("--format", choices=FORMATS, default="text", help="table format (default text)")
    p.add_argument("--train", action="store_true", help="train the variants, one after another")
    p.add_argument("--jobs", metavar="FILE", help="write one JSON line per variant (its train command) "
                                                  "for a cluster scheduler, instead of training")
    p.add_argument("--out", default="runs", help="folder of the variants' run folders (default runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue the variants that have a checkpoint, start the others")
    _train_args(p)


def _train_command_args(p: argparse.ArgumentParser) -> None:
    spec_args(p)
    p.add_argument("--out", help="run folder (default runs/<variant>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _train_args(p)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders, or folders holding run folders (a sweep's --out)")
    p.add_argument("--format", choices=FORMATS, default="text", help="table format (default text)")
    p.add_argument("--out", help="folder for the plots (PNG and SVG) and the table (md, csv)")
    p.add_argument("--x", choices=("depth", "params"), default="depth",
                   help="what the final error is plotted against (default depth)")


#: ``sweep``, ``train`` and ``report``, registered by :mod:`archdsl.cli` after its own commands.
COMMANDS = (
    Command("sweep", "the cost table of every variant of a sweep (--set n=3,5,7); with --train, train "
                     "them; with --jobs, a job list for a scheduler", _sweep_args, _errors(_sweep),
            "archdsl sweep cifar_resnet --set n=3,5,7,9,18 --format csv"),
    Command("train", "train a spec with a paper's recipe; writes a run folder (works under torchrun for "
                     "DistributedDataParallel)", _train_command_args, _errors(_train),
            "archdsl train cifar_resnet --set n=3 --data digits --recipe resnet-cifar --iterations 200"),
    Command("report", "tabulate and plot runs: best/final error, error curves, error against depth or "
                      "parameters", _report_args, _errors(_report),
            "archdsl report runs/ --out report/"),
)
