"""The canonical printer: a parsed spec back to text, in one layout (``archdsl fmt``).

The layout: statements written on one line stay on one line, separated by ``; `` (so a spec
keeps the grouping of the paper's table), a residual unit opens its own lines; four spaces
of indent a level; the top-level
items (imports, blocks, nets) in the order they were written, a blank line between
definitions; no spaces inside a layer (``conv3-64/2 pad=1``) or an expression (``{4*c}``),
and no parentheses an expression does not need. Comments are kept: a comment on its own line
stays on its own line above the statement (or closing brace) it preceded, a comment after a
statement stays after it.

The printer is deterministic, and parsing its output gives back the same syntax tree
(spans aside), so printing that again gives the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

from archdsl.frontend import ast
from archdsl.frontend.parser import parse
from archdsl.limits import DEFAULT, Limits

INDENT = "    "

# Binding strength of each form: a conditional binds loosest, then a comparison, a sum, a
# product, unary minus, indexing; numbers, names, lists and calls are atoms.
_COND, _COMPARE = 1, 2
_PRECEDENCE = {"+": 3, "-": 3, "*": 4, "//": 4, "/": 4, "%": 4}
_UNARY, _POSTFIX, _ATOM = 5, 6, 7


def format_text(text: str, file: str = "<string>", limits: Limits = DEFAULT) -> str:
    """Parse spec text and print it canonically. Raises SpecError if it does not parse."""
    return format_spec(parse(text, file, limits))


def format_spec(spec: ast.SpecFile) -> str:
    """The canonical text of a parsed spec file (ending in a new line unless it is empty)."""
    lines: list[_Line | None] = []  # None: a blank line
    items = sorted([*spec.imports, *spec.blocks, *spec.nets], key=lambda i: (i.span.line, i.span.column))
    previous = None
    for item in items:
        if previous is not None and not (isinstance(item, ast.Import) and isinstance(previous, ast.Import)):
            lines.append(None)
        if isinstance(item, ast.Import):
            lines.append(_Line(f'import "{item.path}"', 0, item.span.line, item.span.line))
        elif isinstance(item, ast.BlockDef):
            header = f"block {item.name}({_params(item.params)})"
            _braced(lines, header, item.body, 0, item.span.line, item.end_line, "")
        else:
            header = f"net {item.name}"
            if item.params:
                header += f"({_params(item.params)})"
            if item.input_shape is not None:
                header += f" : {item.input_shape}"
            _braced(lines, header, item.body, 0, item.span.line, item.end_line, "")
        previous = item
    return _with_comments(lines, sorted(spec.comments, key=lambda c: (c.span.line, c.span.column)))


def format_expr(expr: ast.Expr) -> str:
    """A value or expression as the spec writes it: ``64``, ``0.5``, ``B``, ``"x"``, ``{4*c}``."""
    return _expr(expr)[0]


def format_stmt(stmt: ast.Stmt) -> str:
    """One statement; a residual unit (or a merge or group written over lines) on several lines."""
    lines: list[_Line | None] = []
    _stmt(lines, stmt, 0)
    return "\n".join(line.text() for line in lines if line is not None)


# -- lines ---------------------------------------------------------------------------------
@dataclass
class _Line:
    body: str
    depth: int
    start: int  # the source line the printed line starts at
    anchor: int  # the source line it ends at (a comment there may trail it)
    comment_depth: int | None = None  # the indent of comments placed above it (closing braces: inner)
    lead: str = ""  # "| " before a merge's branch, in place of the indent's last characters

    def text(self) -> str:
        indent = INDENT * self.depth
        if self.lead:
            indent = indent[:-len(self.lead)] + self.lead
        return indent + self.body


def _braced(lines, header: str, body, depth: int, start: int, end: int, suffix: str) -> None:
    """``header {``, the body one level in, ``}`` (``header {}`` for an empty body)."""
    end = end or start
    opening = f"{header} {{" if header else "{"
    if not body:
        lines.append(_Line(f"{opening}}}{suffix}", depth, start, end))
        return
    lines.append(_Line(opening, depth, start, start))
    _body(lines, body, depth + 1)
    lines.append(_Line(f"}}{suffix}", depth, end, end, comment_depth=depth + 1))


def _body(lines, body, depth: int, lead: str = "") -> None:
    """Statements one level in; ``lead`` (``"| "``) starts the first line (a merge's branch)."""
    first = len(lines)
    previous = None
    for stmt in body:
        # Statements written on one line stay on one line, as the papers' tables group them
        # (conv3-64 x2; maxpool); a residual unit, and a merge or group written over several
        # lines, open their own lines.
        inline = _inline_ok(stmt)
        if inline and previous is not None and previous.span.line == stmt.span.line:
            lines[-1].body += "; " + _inline(stmt)
        else:
            _stmt(lines, stmt, depth)
        previous = stmt if inline else None
    if lead and len(lines) > first:
        lines[first].lead = lead


def _stmt(lines, stmt: ast.Stmt, depth: int) -> None:
    line = stmt.span.line
    label = _label(stmt)
    if _inline_ok(stmt):
        lines.append(_Line(_inline(stmt), depth, line, line))
    elif isinstance(stmt, ast.Residual):
        _braced(lines, f"{label}residual{_options(stmt.options)}", stmt.body, depth, line, stmt.end_line,
                _repeat(stmt))
    elif isinstance(stmt, ast.Group):
        _braced(lines, label.rstrip(" "), stmt.body, depth, line, stmt.end_line, _repeat(stmt))
    else:
        end = stmt.end_line or line
        lines.append(_Line(f"{label}{stmt.kind}{_options(stmt.options)} {{", depth, line, line))
        for number, branch in enumerate(stmt.branches):
            _body(lines, branch, depth + 1, lead="| " if number else "")
        lines.append(_Line(f"}}{_repeat(stmt)}", depth, end, end, comment_depth=depth + 1))


def _inline_ok(stmt: ast.Stmt) -> bool:
    """Whether a statement prints on one line: a layer or a call; a merge or a group written on
    one line, of such statements."""
    if isinstance(stmt, (ast.Layer, ast.Call)):
        return True
    if isinstance(stmt, ast.Residual) or stmt.span.line != (stmt.end_line or stmt.span.line):
        return False
    inner = stmt.body if isinstance(stmt, ast.Group) else [s for b in stmt.branches for s in b]
    return all(_inline_ok(s) for s in inner)


def _inline(stmt: ast.Stmt) -> str:
    """A statement on one line: ``conv3-64/2 pad=1 x2``, ``basic(64, stride=2)``,
    ``x = concat { identity | conv3-32 }``, ``{ conv3-64; bn } x2 for i``."""
    if isinstance(stmt, ast.Layer):
        text = stmt.name
        if stmt.width is not None:
            text += f"-{format_expr(stmt.width)}"
        if stmt.stride is not None:
            text += f"/{format_expr(stmt.stride)}"
        text += _options(stmt.options)
    elif isinstance(stmt, ast.Call):
        args = [format_expr(a) for a in stmt.args] + [f"{o.name}={format_expr(o.value)}" for o in stmt.kwargs]
        text = f"{stmt.name}({', '.join(args)})"
    elif isinstance(stmt, ast.Group):
        text = "{ " + "; ".join(_inline(s) for s in stmt.body) + " }"
    else:
        branches = " | ".join("; ".join(_inline(s) for s in branch) for branch in stmt.branches)
        text = f"{stmt.kind}{_options(stmt.options)} {{ {branches} }}"
    return _label(stmt) + text + _repeat(stmt)


def _label(stmt: ast.Stmt) -> str:
    return f"{stmt.label.name} = " if stmt.label is not None else ""


def _repeat(stmt: ast.Stmt) -> str:
    if stmt.repeat is None:
        return ""
    return f" x{format_expr(stmt.repeat)}" + (f" for {stmt.index.name}" if stmt.index is not None else "")


def _options(options) -> str:
    return "".join(f" {o.name}={format_expr(o.value)}" for o in options)


def _params(params) -> str:
    return ", ".join(p.name if p.default is None else f"{p.name}={format_expr(p.default)}" for p in params)


def _with_comments(lines: list[_Line | None], comments: list[ast.Comment]) -> str:
    """Join the lines, placing each comment above the first line that starts after it, or
    after the line that ends on its line when the next line starts later. Where the source
    had blank lines before or after a comment on its own line, one blank line stays."""
    out: list[str] = []
    pending = list(comments)
    last = 0  # the source line of what was printed last
    after_comment = False

    def blank() -> None:
        if out and out[-1] != "":
            out.append("")

    def own_lines(before: int, depth: int) -> None:
        nonlocal last, after_comment
        while pending and pending[0].span.line < before:
            comment = pending.pop(0)
            if comment.span.line > last + 1:
                blank()
            out.append(INDENT * depth + comment.text)
            last, after_comment = comment.span.line, True

    real = [i for i, line in enumerate(lines) if line is not None]
    for position, i in enumerate(real):
        line = lines[i]
        if position and real[position - 1] != i - 1:
            blank()
        own_lines(line.start, line.depth if line.comment_depth is None else line.comment_depth)
        if after_comment and line.start > last + 1:
            blank()
        text = line.text()
        following = lines[real[position + 1]].start if position + 1 < len(real) else None
        if pending and pending[0].span.line == line.anchor and (following is None or following > line.anchor):
            text += "  " + pending.pop(0).text
        out.append(text)
        last, after_comment = max(last, line.anchor), False
    own_lines(float("inf"), 0)
    return "\n".join(out) + "\n" if out else ""


# -- expressions ---------------------------------------------------------------------------
def _expr(e: ast.Expr) -> tuple[str, int]:
    """(text, binding strength) of an expression."""
    if isinstance(e, ast.Num):
        return _number(e.value), _ATOM
    if isinstance(e, ast.Word):
        return e.text, _ATOM
    if isinstance(e, ast.Str):
        return f'"{e.text}"', _ATOM
    if isinstance(e, ast.Ref):
        return e.name, _ATOM
    if isinstance(e, ast.Braced):
        return "{" + _expr(e.expr)[0] + "}", _ATOM
    if isinstance(e, ast.Neg):
        text, strength = _expr(e.operand)
        return "-" + (text if strength >= _UNARY else f"({text})"), _UNARY
    if isinstance(e, ast.ListOf):
        return "[" + ", ".join(_expr(i)[0] for i in e.items) + "]", _ATOM
    if isinstance(e, ast.Func):
        return f"{e.name}(" + ", ".join(_expr(a)[0] for a in e.args) + ")", _ATOM
    if isinstance(e, ast.Index):
        return f"{_at_least(e.target, _POSTFIX)}[{_expr(e.index)[0]}]", _POSTFIX
    if isinstance(e, ast.Compare):  # comparisons do not chain: both sides are sums
        return f"{_at_least(e.left, _COMPARE + 1)} {e.op} {_at_least(e.right, _COMPARE + 1)}", _COMPARE
    if isinstance(e, ast.Cond):
        return (f"{_at_least(e.then, _COMPARE)} if {_at_least(e.test, _COMPARE)} else "
                f"{_at_least(e.other, _COND)}"), _COND
    if isinstance(e, ast.BinOp):
        mine = _PRECEDENCE[e.op]
        left, left_strength = _expr(e.left)
        right, right_strength = _expr(e.right)
        if left_strength < mine:
            left = f"({left})"
        if right_strength <= mine:  # operators group to the left: a-(b-c) keeps its parentheses
            right = f"({right})"
        return f"{left}{e.op}{right}", mine
    raise TypeError(f"not an expression: {e!r}")


def _at_least(e: ast.Expr, strength: int) -> str:
    """An operand's text, in parentheses where it binds looser than its place needs."""
    text, mine = _expr(e)
    return text if mine >= strength else f"({text})"


def _number(value: int | float) -> str:
    if isinstance(value, bool):
        raise TypeError(f"not a spec number: {value!r}")
    if isinstance(value, int):
        return str(value)
    if value != value or value < 0:
        raise ValueError(f"a spec literal is never {value!r}")
    if value == float("inf"):
        return "1e999"  # what a literal too large for a float reads as
    text = repr(value)  # the shortest text that reads back as the same float
    return text if any(ch in text for ch in ".eE") else text + ".0"
