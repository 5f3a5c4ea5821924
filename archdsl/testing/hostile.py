"""Hostile text for fuzzing the front end: mutated specs, token soup, and the classes of input
that broke a promise once (digits inside layer names, terminal escapes in strings, sizes at
and past every limit)."""

from __future__ import annotations

import re

from hypothesis import strategies as st

from archdsl.testing.generator import specs


def bundled_sources() -> list[tuple[str, str]]:
    """(path, text) of every bundled spec, library files included."""
    from archdsl.frontend.loader import SPECS_DIR

    return [(str(p), p.read_text(encoding="utf-8")) for p in sorted(SPECS_DIR.rglob("*.arch"))]


#: Pieces of the language, and of things near it, that token soup is made of.
TOKENS = (
    "net", "block", "import", "residual", "{", "}", "(", ")", ";", "\n", ",", "=", ":", "-", "/", "*",
    "//", "%", "+", "x", "x2", "x{n}", "x0", "3x32x32", "1x1x1", "conv3-16", "conv1x7", "conv", "maxpool",
    "maxpool3/2", "avgpool", "fc-10", "fc", "bn", "relu", "softmax", "soft-max", "LRN", "gap", "dropout",
    "p=0.5", "shortcut=A", "shortcut=b", "shortcut=identity", "act=none", "bias=false", "groups=2",
    "pad=1", "k=3", "stride=2", "size=5", "mode=avg", '"lib/resnet.arch"', '"missing.arch"', '"x"',
    "basic(16)", "basic_stage(16, 2)", "a", "b", "c", "n", "1", "2", "64", "0", "0.5", "1e999", "1e-9",
    "9" * 30, "#", "# note\n", "\\\n", "\t", "\r\n", "\x00", "\x0c", "\u2028", "é", "🙂", "{n}", "{2*c}",
    "{(1)}", "{-1}", "{1/0}", "{c//2}", '"a\x00.arch"', '"' + "a" * 300 + '.arch"', '"' + "a/" * 2100 + 'x.arch"',
    '"/"', '".arch"', '"lib"', '"../specs/vgg_a.arch"', '"lib/../lib/resnet.arch"',
    # digits inside layer names, past what int() reads
    "conv" + "9" * 4301 + "-4", "conv3x" + "9" * 150 + "-4", "maxpool" + "7" * 500, "conv0-4",
    # terminal escapes and bidirectional overrides in strings
    '"\x1b[2J\x1b]0;title\x07"', '"\u202e"', "tag=\"\x1b[31m\"",
    # sizes at and past the limits; numbers that are not finite or not whole
    "in=4194304", "alpha=1e308", "size=1000000", "p=0.9999999", "1e308", "2.5", "18.0",
    # paths that are not spec files: kernel interfaces, devices, a name too long
    '"/proc/self/status.arch"', '"/dev/zero.arch"', '"' + "a" * 5000 + '.arch"', "\ufeff",
)

#: Layer names, numbers and texts at and past the limits, for :func:`limit_probes`.
_PROBES = (
    lambda n: "net a : 3x8x8 { conv3-{" + "+".join(["1"] * n) + "} }",  # operators chained
    lambda n: "net a : 3x8x8 { conv3-{" + "(" * n + "4" + ")" * n + "} }",  # parentheses
    lambda n: "net a : 3x8x8 {" + "residual {" * n + "conv3-3" + "}" * n + "}",  # residual units
    lambda n: "net a : 3x8x8 { conv3-4 x" + str(n) + " }",  # repeats
    lambda n: "net a : 3x8x8 {\n" + "conv3-4\n" * n + "}\n",  # statements
    lambda n: "block a() { relu x0 }\nblock b() { a() x" + str(n) + " }\nnet n : 3x8x8 { b() x" + str(n) + "; relu }",
    lambda n: "".join(f"block b{i}() {{ b{i + 1}() }}\n" for i in range(n)) + f"block b{n}() {{ relu }}\n"
              "net n : 3x8x8 { b0() }",  # block calls
    lambda n: "net a : 3x8x8 { conv" + "9" * n + "-4 }",  # digits in a layer name
    lambda n: "net a : 64x256x256 { fc-10 in=" + str(n) + " }",  # in= near the true 4194304
)


def token_soup(max_tokens: int = 60) -> st.SearchStrategy[str]:
    """Random sequences of the language's tokens (and near misses), joined by random spaces."""
    joiner = st.sampled_from(["", " ", " ", "\n", "; "])
    return st.lists(st.tuples(st.sampled_from(TOKENS), joiner), max_size=max_tokens).map(
        lambda parts: "".join(t + j for t, j in parts))


_TOKEN = re.compile(r"\w+|\s+|.", re.S)
_NUMBERS = ("0", "1", "2", "3", "7", "64", "4096", "65536", "1000000", "1000000000", "99999999999999999999",
            "9" * 4301)
_WORDS = ("conv3", "conv1x7", "fc", "maxpool", "gap", "bn", "relu", "softmax", "LRN", "dropout", "residual",
          "basic", "bottleneck", "stride", "pad", "groups", "shortcut", "A", "Z", "none", "identity", "x",
          "n", "c", "classes", "true", "imagenet_stem", "net", "block", "import")
_ALPHABET = "{}()[];:,=-/*%+x#\"\\\n\t .0123456789abcnetx\x00\x7f\u2028é"


@st.composite
def _mutate(draw, text: str, max_mutations: int) -> str:
    for _ in range(draw(st.integers(1, max_mutations))):
        tokens = _TOKEN.findall(text)
        op = draw(st.sampled_from(["del_char", "ins_char", "dup", "swap_char", "del_tok", "dup_tok",
                                   "swap_tok", "ins_tok", "number", "word"]))
        n = len(text)
        if op in ("number", "word"):  # keep the text parsing, to reach expansion and shapes
            kind = r"\d+" if op == "number" else r"[A-Za-z_]\w*"
            spots = [i for i, t in enumerate(tokens) if re.fullmatch(kind, t)]
            if spots:
                i = draw(st.sampled_from(spots))
                tokens[i] = draw(st.sampled_from(_NUMBERS if op == "number" else _WORDS))
                text = "".join(tokens)
            continue
        if op.endswith("_tok"):
            if not tokens:
                tokens = [""]
            i = draw(st.integers(0, len(tokens) - 1))
            if op == "del_tok":
                del tokens[i]
            elif op == "dup_tok":
                tokens.insert(i, tokens[i])
            elif op == "swap_tok" and len(tokens) > 1:
                j = draw(st.integers(0, len(tokens) - 1))
                tokens[i], tokens[j] = tokens[j], tokens[i]
            elif op == "ins_tok":
                tokens.insert(i, draw(st.sampled_from(TOKENS)))
            text = "".join(tokens)
            continue
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "del_char" and n:
            text = text[:i] + text[i + 1:]
        elif op == "ins_char":
            ch = draw(st.one_of(st.sampled_from(_ALPHABET), st.characters()))
            text = text[:i] + ch + text[i:]
        elif op == "dup" and n:
            j = draw(st.integers(i, min(n, i + 40)))
            text = text[:j] + text[i:j] + text[j:]
        elif op == "swap_char" and n > 1:
            j = draw(st.integers(0, n - 1))
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
    return text


def mutated_specs(sources: list[str] | None = None, max_mutations: int = 4) -> st.SearchStrategy[str]:
    """Texts (default: the bundled specs) with a few characters or tokens deleted, inserted,
    duplicated or swapped."""
    texts = sources if sources is not None else [t for _, t in bundled_sources()]
    return st.sampled_from(texts).flatmap(lambda t: _mutate(t, max_mutations))


def limit_probes(max_size: int = 3000) -> st.SearchStrategy[str]:
    """Specs that grow with a number up to ``max_size`` (and one past 4,194,304 for ``in=``):
    chains of operators, nested parentheses and residual units, repeats, statements, repeated
    repeats of empty blocks, chains of block calls, long digit runs in a layer name. Somewhere
    along each one a limit refuses it; the tests check that the work done stays bounded."""
    return st.tuples(st.sampled_from(_PROBES), st.integers(0, max_size) | st.integers(4194300, 4194310)).map(
        lambda pair: pair[0](pair[1] if pair[0] is _PROBES[-1] or pair[1] <= max_size else max_size))


def hostile_text(sources: list[str] | None = None) -> st.SearchStrategy[str]:
    """Mutated specs, token soup, mutated generated specs, specs growing past the limits
    (:func:`limit_probes`) and arbitrary text, mixed."""
    return st.one_of(
        mutated_specs(sources),
        token_soup(),
        specs(max_layers=4, max_depth=1).flatmap(lambda t: _mutate(t, 3)),
        limit_probes(),
        st.text(max_size=200),
    )
