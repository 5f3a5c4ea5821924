"""What every ``archdsl`` command is made of: the :class:`Command` record and the argument
types the commands share (``--set NAME=VALUE``, ``--input CxHxW``, a spec and its options).

A leaf of the command line: :mod:`archdsl.cli` and the ablation commands
(:mod:`archdsl.workflow.commands`) both build on it, so neither imports the other's internals.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from archdsl.ir import Shape


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one line of help, its arguments, what runs it, an example."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    example: str
    description: str = ""


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {text!r}")
    return key.strip(), value


def shape(text: str) -> Shape:
    try:
        return Shape.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .arch file, or the name of a bundled spec (see 'archdsl list')")
    p.add_argument("--set", dest="params", metavar="NAME=VALUE", type=key_value, action="append", default=[],
                   help="set a net parameter, e.g. --set n=18 or --set shortcut=A (repeatable)")
    p.add_argument("--input", type=shape, metavar="CxHxW", help="input shape, overriding the spec's, e.g. 3x384x384")
    p.add_argument("--net", help="which net of the file (when it defines several)")
    p.add_argument("--limit", dest="limits", metavar="NAME=VALUE", type=key_value, action="append", default=[],
                   help="raise or lower a resource limit, e.g. --limit max_nodes=100000 (repeatable; "
                        "the limits are listed in the README)")
