"""Source spans, the one error type a spec can cause (:class:`SpecError`), the error of a
command-line argument that cannot be used (:class:`UsageError`), and :func:`printable`, which
every piece of spec text passes through before it reaches a terminal."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """Where a piece of a spec came from: 1-based line and column, with the line's text."""

    file: str
    line: int
    column: int
    end_column: int | None = None
    text: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return f"{printable(self.file)}:{self.line}:{self.column}"

    def excerpt(self) -> str:
        """The source line with a caret (or a run of carets) under the span."""
        if not self.text:
            return ""
        line = self.text.rstrip("\r\n").expandtabs(1)
        # Control characters would reach the terminal as they are: show them as '?' (one
        # character each, so that the caret stays under the column).
        line = "".join(ch if ch.isprintable() else "?" for ch in line)
        column = self.column
        if len(line) > _EXCERPT:  # a window of a long line, around the column
            start = max(0, min(column - 1 - _EXCERPT // 2, len(line) - _EXCERPT))
            line = ("..." if start else "") + line[start:start + _EXCERPT] + \
                ("..." if start + _EXCERPT < len(line) else "")
            column = column - start + (3 if start else 0)
        width = 1
        if self.end_column is not None and self.end_column > self.column:
            width = self.end_column - self.column
        width = max(1, min(width, len(line) - column + 1))
        return f"    {line}\n    {' ' * (column - 1)}{'^' * width}"


_EXCERPT = 100  # characters of a source line shown under an error


class SpecError(Exception):
    """An error in a spec: syntax, an unknown layer, a bad attribute, shapes that do not fit.

    ``str(err)`` reads ``file:line:col: message`` followed by the spec line and a caret;
    ``notes`` add context such as the block call that an error inside a block came through.

    Attributes:
        file: the spec file ("<string>" for text given directly).
        line: 1-based line.
        column: 1-based column.
        span: the full :class:`Span` (``None`` for errors not tied to a spec position,
            such as an unknown ``--set`` name).
    """

    def __init__(self, message: str, span: Span | None = None, notes: list[tuple[str, Span]] | None = None):
        self.message = message
        self.span = span
        self.notes = list(notes or [])
        super().__init__(self._render())

    @property
    def file(self) -> str | None:
        return self.span.file if self.span else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def with_note(self, note: str, span: Span) -> "SpecError":
        """Return the same error with one more line of context (innermost first)."""
        return SpecError(self.message, self.span, self.notes + [(note, span)])

    def _render(self) -> str:
        message = printable(self.message)  # it may quote a file name or a --set value
        if self.span is None:
            return f"error: {message}"
        parts = [f"{self.span}: error: {message}"]
        if self.span.excerpt():
            parts.append(self.span.excerpt())
        for note, span in self.notes:
            parts.append(f"{span}: note: {printable(note)}")
            if span.excerpt():
                parts.append(span.excerpt())
        return "\n".join(parts)

    def __str__(self) -> str:
        return self._render()


class SpecWarning(UserWarning):
    """Something in a spec that works but is probably not what was meant (``str()`` reads like a
    :class:`SpecError`, with ``warning:`` in place of ``error:``)."""

    def __init__(self, message: str, span: Span | None = None):
        self.message, self.span = message, span
        text = f"{span}: warning: {message}" if span else f"warning: {message}"
        excerpt = span.excerpt() if span else ""
        super().__init__(f"{text}\n{excerpt}" if excerpt else text)
class UsageError(Exception):
    """A command-line argument that cannot be used: an output path that is a device, a FIFO,
    a directory or a symbolic link; a bundled spec given to ``fmt -i``; a bound exceeded."""


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (escape sequences, other control
    characters, bidirectional overrides) written as a Python escape, ``\\x1b`` for ESC."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
