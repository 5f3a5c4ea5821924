"""What every ``archdsl`` command is made of: the :class:`Command` record, the argument types
the commands share (``--set NAME=VALUE``, ``--input CxHxW``, a spec and its options), loading
the spec a command names, and writing its outputs (only ever replacing a regular file, atomically).

A leaf of the command line: :mod:`archdsl.cli` and the ablation commands
(:mod:`archdsl.workflow.commands`) both build on it, so neither imports the other's internals.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import BinaryIO, Callable

import os
import stat
import tempfile
from pathlib import Path

from archdsl.errors import UsageError, printable
from archdsl.frontend.values import parse_cli_value
from archdsl.ir import Shape
from archdsl.limits import DEFAULT, Limits

#: Where ``build`` writes when no ``-o`` is given (not ``build/``, which is setuptools' own).
OUTPUT_DIR = Path("archdsl-out")


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


def limits_of(args) -> Limits:
    if not args.limits:
        return DEFAULT
    try:
        return DEFAULT.updated(**{k: int(v) for k, v in args.limits})
    except ValueError as err:
        raise UsageError(f"--limit: {err}") from None


def load_spec(args, dense: bool = False):
    """The graph of the spec the arguments name; with ``dense``, (graph, dense input) for the
    dense form (see :func:`archdsl.pipeline.load_for_dense`)."""
    from archdsl.pipeline import load, load_for_dense

    limits = limits_of(args)
    params = {k: parse_cli_value(v) for k, v in args.params}
    if dense:
        return load_for_dense(args.spec, net=args.net, input=args.input, limits=limits, params=params)
    return load(args.spec, net=args.net, input=args.input, limits=limits, params=params)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def check_output(path: Path) -> None:
    """Refuse an output path that exists and is not a regular file: writing there would replace
    a device, a FIFO or a link with a file (``-o /dev/null`` run as root), or fail on a directory.

    Raises:
        UsageError: naming what the path is.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise UsageError(f"cannot write {printable(str(path))}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
        hint = f" (it points to {printable(os.readlink(path))}: give that path)" if stat.S_ISLNK(mode) else ""
        raise UsageError(f"refusing to write {printable(str(path))}: it is {kind}, and an output only ever "
                         f"replaces a regular file{hint}")


def write_atomic(path: Path, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` to ``path`` so that readers (and a process killed meanwhile) see the old
    file or the new one, never half: a temporary file beside it, synced, then renamed over it.

    Args:
        path: the output. Only a regular file is replaced (see :func:`check_output`); an
            existing file keeps its permissions, a new one gets the usual ones.
        content: text (written as UTF-8), bytes, or a function that writes to the binary file
            it is given (``lambda f: torch.save(state, f)``).
    """
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp's 0600 is for the temporary file only
        check_output(path)  # nothing but a regular file appeared there meanwhile
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def output_path(output: str | None, default_name: str) -> Path:
    """``-o``: a file, or a folder (an existing one, or one written with a trailing slash) to
    write ``default_name`` into; no ``-o``: ``archdsl-out/<default_name>``."""
    if output is None:
        out = OUTPUT_DIR / default_name
    elif output.endswith(("/", os.sep)) or (os.path.isdir(output) and not os.path.islink(output)):
        out = Path(output) / default_name
    else:
        out = Path(output)
    check_output(out)
    for parent in out.parents:  # a folder to be made must not be in the way of a file
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"cannot write {printable(str(out))}: {printable(str(parent))} is not a directory")
            break
    return out
