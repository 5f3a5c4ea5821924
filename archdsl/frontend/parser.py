"""Text -> :class:`~archdsl.frontend.ast.SpecFile`, with source spans and readable errors."""

from __future__ import annotations

import contextvars
import functools
from importlib import resources

import lark
from lark import Token, v_args
from lark.visitors import Transformer_NonRecursive

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast
from archdsl.frontend.suggest import did_you_mean
from archdsl.ir import Shape
from archdsl.limits import DEFAULT, Limits

# Package data of archdsl.grammars (the repository's grammars/ folder).
GRAMMAR = resources.files("archdsl.grammars") / "archdsl.lark"

# What a user should read for each terminal the parser may expect.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "NUMBER": "a number",
    "STRING": 'a quoted string ("...")',
    "SHAPE": "an input shape such as 3x224x224",
    "REPEAT": "a repeat count such as x2",
    "SOFTMAX": "softmax",
    "COMPARE": "a comparison (==, !=, <, <=, >, >=)",
    "_NL": "a new line",
    "$END": "the end of the file",
}

#: The ways branches merge: ``concat { a | b }`` and the like.
MERGES = ("concat", "add", "multiply")


# The comments of the text being parsed (the lexer drops them from the token stream).
_COMMENTS: contextvars.ContextVar[list | None] = contextvars.ContextVar("archdsl_comments", default=None)


def _keep_comment(token: Token) -> Token:
    sink = _COMMENTS.get()
    if sink is not None:
        sink.append(token)
    return token


@functools.lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    return lark.Lark(
        GRAMMAR.read_text(encoding="utf-8"), parser="lalr", propagate_positions=True, maybe_placeholders=True,
        lexer_callbacks={"COMMENT": _keep_comment},
    )


class _Source:
    """A spec's text and file name, to turn Lark positions into Spans."""

    def __init__(self, text: str, file: str):
        self.file = file
        # Lines as the parser counts them: only "\n" ends one (str.splitlines also splits at
        # form feeds and U+2028, which would show the wrong line under an error).
        self.lines = [line.removesuffix("\r") for line in text.split("\n")]

    def line_text(self, line: int) -> str:
        return self.lines[line - 1] if 1 <= line <= len(self.lines) else ""

    def span(self, line: int, column: int, end_line: int | None = None, end_column: int | None = None) -> Span:
        end = end_column if end_line == line else None
        return Span(self.file, line, column, end, self.line_text(line))

    def of(self, item) -> Span:
        if isinstance(item, Token):
            return self.span(item.line, item.column, item.end_line, item.end_column)
        meta = item if isinstance(item, lark.tree.Meta) else item.meta
        if getattr(meta, "empty", True):
            return self.span(1, 1)
        return self.span(meta.line, meta.column, meta.end_line, meta.end_column)


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else terminal.lower()


def _found(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    if token.type == "_NL":
        return "the end of the line"
    text = str(token)
    return repr(text) if len(text) <= 40 else f"{text[:30]!r}... ({len(text)} characters)"


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """One method per grammar rule; any rule without one is a bug that :meth:`__default__` reports.

    Non-recursive, so that no nesting of the text can exhaust Python's stack here.
    """

    def __init__(self, source: _Source):
        super().__init__(visit_tokens=False)
        self.src = source

    def __default__(self, data, children, meta):
        raise NotImplementedError(f"grammar rule {data!r} has no transformer method")

    # definitions
    def start(self, meta, items):
        items = [i for i in items if i is not None]
        return ast.SpecFile(
            self.src.file,
            tuple(i for i in items if isinstance(i, ast.Import)),
            tuple(i for i in items if isinstance(i, ast.BlockDef)),
            tuple(i for i in items if isinstance(i, ast.NetDef)),
        )

    def import_stmt(self, meta, children):
        return ast.Import(children[0][1:-1], self.src.of(meta))

    def block_def(self, meta, children):
        name, params, body = children
        return ast.BlockDef(str(name), params or (), body, self.src.of(name), _end_line(meta))

    def net_def(self, meta, children):
        name, params, shape, body = children
        input_shape = None
        if shape is not None:
            if any(len(dim) > 9 for dim in str(shape).split("x")):
                raise SpecError(f"input shape {_short(str(shape))} is out of range", self.src.of(shape))
            try:
                input_shape = Shape.parse(str(shape))
            except ValueError as err:
                raise SpecError(str(err), self.src.of(shape)) from None
        return ast.NetDef(str(name), params or (), input_shape, body, self.src.of(name), _end_line(meta))

    def param_list(self, meta, children):
        params = tuple(c for c in children if c is not None)
        seen = set()
        for param in params:
            if param.name in seen:
                raise SpecError(f"parameter {param.name!r} is named twice: expected each parameter once",
                                param.span)
            seen.add(param.name)
        return params

    def param(self, meta, children):
        name, default = children
        return ast.Param(str(name), default, self.src.of(name))

    def body(self, meta, children):
        return tuple(c for c in children if c is not None)

    # statements
    def stmt(self, meta, children):
        label, node, repeat = children
        changes = {}
        if label is not None:
            changes["label"] = label
        if repeat is not None:
            changes["repeat"], changes["index"] = repeat
        return type(node)(**{**node.__dict__, **changes}) if changes else node

    def label(self, meta, children):
        return ast.Label(str(children[0]), self.src.of(children[0]))

    def repeat(self, meta, children):
        _, count, index = children
        return count, (None if index is None else ast.Label(str(index), self.src.of(index)))

    def layer(self, meta, children):
        name, width, stride, *options = children
        return ast.Layer(str(name), width, stride, self._unique(options), self.src.of(meta))

    def softmax_layer(self, meta, children):
        token, *options = children
        return ast.Layer(str(token), None, None, self._unique(options), self.src.of(meta))

    def _unique(self, options) -> tuple[ast.Option, ...]:
        seen: dict[str, ast.Option] = {}
        for option in options:
            if option.name in seen:
                first = seen[option.name]
                raise SpecError(f"option {option.name!r} given twice (first as {option.name}=... at column "
                                f"{first.span.column}): expected each option once", option.span)
            seen[option.name] = option
        return tuple(options)

    def call(self, meta, children):
        name, *args = children
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, ast.Option))
        keywords = tuple(a for a in args if isinstance(a, ast.Option))
        return ast.Call(str(name), positional, keywords, self.src.of(meta))

    def positional_arg(self, meta, children):
        return children[0]

    def keyword_arg(self, meta, children):
        name, value = children
        return ast.Option(str(name), value, self.src.of(name))

    def residual(self, meta, children):
        *options, body = children
        return ast.Residual(self._unique(options), body, self.src.of(meta), end_line=_end_line(meta))

    def merge(self, meta, children):
        name, *rest = children
        options = [c for c in rest if isinstance(c, ast.Option)]
        branches = [c for c in rest if not isinstance(c, ast.Option)]
        kind = str(name).lower()
        if kind not in MERGES:
            raise SpecError(
                f"unknown layer {str(name)!r}{did_you_mean(str(name), ('residual',) + MERGES)}: expected "
                "residual, concat, add or multiply before '{'", self.src.of(name))
        for number, branch in enumerate(branches, 1):
            if not branch:
                raise SpecError(f"branch {number} of {kind} is empty: expected at least one statement "
                                "(identity stands for the merge's input itself)", self.src.of(meta))
        return ast.Merge(kind, self._unique(options), tuple(branches), self.src.of(meta),
                         end_line=_end_line(meta))

    def group(self, meta, children):
        if not children[0]:
            raise SpecError("an empty group '{ }': expected statements inside", self.src.of(meta))
        return ast.Group(children[0], self.src.of(meta), end_line=_end_line(meta))

    def option(self, meta, children):
        name, value = children
        return ast.Option(str(name), value, self.src.of(name))

    # values
    def int_arg(self, meta, children):
        return ast.Num(self._int(children[0]), self.src.of(children[0]))

    def _int(self, token: Token) -> int:
        if len(token) > 100:  # far beyond any limit; int() of thousands of digits even fails
            raise SpecError(f"the number {_short(str(token))} is too large", self.src.of(token))
        return int(token)

    def expr_arg(self, meta, children):
        return ast.Braced(children[0], self.src.of(meta))

    expr_value = expr_arg

    def number_value(self, meta, children):
        return self.number(meta, children)

    def word_value(self, meta, children):
        return ast.Word(str(children[0]), self.src.of(children[0]))

    def string_value(self, meta, children):
        return ast.Str(str(children[0])[1:-1], self.src.of(children[0]))

    def list_value(self, meta, children):
        return ast.ListOf(tuple(c for c in children if c is not None), self.src.of(meta))

    # expressions
    def number(self, meta, children):
        text = str(children[0])
        value = float(text) if any(ch in text for ch in ".eE") else self._int(children[0])
        return ast.Num(value, self.src.of(children[0]))

    def ref(self, meta, children):
        return ast.Ref(str(children[0]), self.src.of(children[0]))

    string = string_value
    list = list_value

    def func(self, meta, children):
        name, *args = children
        return ast.Func(str(name), tuple(a for a in args if a is not None), self.src.of(meta))

    def index(self, meta, children):
        return ast.Index(children[0], children[1], self.src.of(meta))

    def compare(self, meta, children):
        left, op, right = children
        return ast.Compare(str(op), left, right, self.src.of(meta))

    def cond(self, meta, children):
        then, test, other = children
        return ast.Cond(then, test, other, self.src.of(meta))

    def neg(self, meta, children):
        return ast.Neg(children[0], self.src.of(meta))

    def _binary(op):  # noqa: N805 - builds the five binary-operator methods below
        def method(self, meta, children):
            return ast.BinOp(op, children[0], children[1], self.src.of(meta))
        return method

    add, sub, mul = _binary("+"), _binary("-"), _binary("*")
    floordiv, truediv, mod = _binary("//"), _binary("/"), _binary("%")
    del _binary


def _end_line(meta) -> int:
    return 0 if getattr(meta, "empty", True) else meta.end_line


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:10]}...{text[-10:]} ({len(text)} characters)"


# Rules that nest: a residual unit's body, a merge, a group, a pair of braces, a list, an operator.
_NESTING = frozenset({"residual", "merge", "group", "expr_arg", "expr_value", "list_value", "add", "sub",
                      "mul", "floordiv", "truediv", "mod", "neg", "index", "compare", "cond", "func", "list"})


def _check_nesting(tree: lark.Tree, source: _Source, limit: int) -> None:
    """Refuse text nested deeper than ``limit`` (walked without recursion), so that the passes
    after the parser, which recurse over nesting, stay well inside Python's stack."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        for child in node.children:
            if isinstance(child, lark.Tree):
                inner = depth + (child.data in _NESTING)
                if inner > limit:
                    raise SpecError(
                        f"nested more than {limit} levels deep (residual units, braces and operators "
                        "inside one another; limit max_nesting)", source.of(child))
                stack.append((child, inner))


def parse(text: str, file: str = "<string>", limits: Limits = DEFAULT) -> ast.SpecFile:
    """Parse spec text. Raises SpecError with the position, the line, a caret, and what was
    expected versus found."""
    text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors write
    source = _Source(text, file)
    comments: list[Token] = []
    reset = _COMMENTS.set(comments)
    try:
        tree = _parser().parse(text + "\n")
    except lark.UnexpectedToken as err:
        expected = sorted({_describe(t) for t in err.accepts or err.expected})
        if err.token.type == "$END":
            _check_closed(text, source)
        hint = ""
        if expected == ["'='"]:  # a word after a layer reads as the start of an option
            hint = " (options are written name=value; statements are separated by ';' or new lines)"
        raise SpecError(
            f"expected {_join(expected)}, found {_found(err.token)}{hint}",
            source.span(err.line if err.line > 0 else len(source.lines), max(err.column, 1)),
        ) from None
    except lark.UnexpectedCharacters as err:
        expected = sorted({_describe(t) for t in err.allowed or ()})
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        what = f"unexpected character {char!r}"
        raise SpecError(
            f"{what}; expected {_join(expected)}" if expected else what,
            source.span(err.line, err.column),
        ) from None
    except lark.UnexpectedEOF as err:
        _check_closed(text, source)
        expected = sorted({_describe(t) for t in err.expected})
        raise SpecError(
            f"expected {_join(expected)}, found the end of the file",
            source.span(len(source.lines), len(source.line_text(len(source.lines))) + 1),
        ) from None
    finally:
        _COMMENTS.reset(reset)
    _check_nesting(tree, source, limits.max_nesting)
    try:
        spec = _ToAst(source).transform(tree)
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, SpecError):
            raise err.orig_exc from None
        raise
    notes = tuple(ast.Comment(str(c).rstrip(), source.of(c)) for c in comments)
    return ast.SpecFile(spec.file, spec.imports, spec.blocks, spec.nets, notes)


_CLOSING = {"{": "}", "(": ")", "[": "]"}


def _check_closed(text: str, source: _Source) -> None:
    """At an unexpected end of the file: point at the bracket left open, where the author has
    to look, rather than at the end of the file. Brackets pair by position; where a closing
    brace starts a line less indented than the line of the brace it would close, the
    indentation is trusted instead, and that inner brace is the one left open."""
    open_at: list[tuple[str, int, int, int]] = []  # (bracket, line, column, indent of its line)
    unclosed: list[tuple[str, int, int]] = []
    line, column, i, indent, first = 1, 1, 0, 0, True
    while i < len(text):
        ch = text[i]
        if ch == "#" or ch == '"':  # a comment or a string: skip to its end (not past the line)
            newline = text.find("\n", i + 1)
            newline = len(text) if newline < 0 else newline
            end = newline
            if ch == '"':
                quote = text.find('"', i + 1, newline)
                end = newline if quote < 0 else quote + 1
            column += end - i
            i, first = end, False
            continue
        if ch in _CLOSING:
            open_at.append((ch, line, column, indent))
        elif ch in _CLOSING.values():
            if first:  # a closing bracket that starts its line closes the bracket opened at its indent
                while len(open_at) > 1 and open_at[-1][3] > indent and open_at[-2][3] >= indent:
                    unclosed.append(open_at.pop()[:3])
            if open_at and _CLOSING[open_at[-1][0]] == ch:
                open_at.pop()
        if ch == "\n":
            line, column, indent, first = line + 1, 1, 0, True
        else:
            if first and ch in " \t":
                indent += 1
            elif ch not in "\r":
                first = False
            column += 1
        i += 1
    left = sorted(unclosed, key=lambda b: (b[1], b[2]))[:1] or [b[:3] for b in open_at[-1:]]
    if left:
        ch, line, column = left[0]
        raise SpecError(f"expected '{_CLOSING[ch]}' to close this '{ch}', found the end of the file",
                        source.span(line, column, line, column + 1))


def _join(words: list[str]) -> str:
    if len(words) > 8:
        words = words[:8] + ["..."]
    if len(words) <= 1:
        return "".join(words) or "something else"
    return ", ".join(words[:-1]) + " or " + words[-1]
