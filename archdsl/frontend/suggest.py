"""Did-you-mean: the closest known spelling of a misspelt word, for error messages."""

from __future__ import annotations

import difflib
from typing import Iterable


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known word most like ``word`` (case-insensitively), or None if none is close."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'residual'?)`` or ``""``."""
    match = closest(word, known)
    return f" (did you mean {match!r}?)" if match else ""
