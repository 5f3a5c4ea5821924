"""Hostile input for fuzzing: spec text for the front end (mutated specs, token soup, and the
classes of input that broke a promise once: digits inside layer names, names that emitted code
once shadowed, absurd layer values, terminal escapes in strings, sizes at and past every limit)
and image files for ``archdsl eval`` (:func:`hostile_images`)."""

from __future__ import annotations

import io
import re
import struct
import zlib

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
    '"/proc/self/status.arch"', '"/dev/zero.arch"', '"/proc/kmsg"', '"/etc/shadow"', '"' + "a" * 5000 + '.arch"',
    "\ufeff",
    # names the emitted module once shadowed or mangled: torch.nn.functional as F, kernels, __b
    "f", "F", "net F : 3x8x8", "fused_conv2d", "local_response_norm", "__b", "block __b() { conv3-4 }", "__b()",
    # labels named like a method of nn.Module, an attribute of the module, or a keyword
    "to = conv3-4", "forward =", "training =", "paths =", "class =", "_modules =", "to_ =",
    # layer values whose float32 arithmetic is 0, inf or NaN
    "lrn k=0", "lrn beta=200", "k=1e6 beta=10", "bn eps=0", "eps=1e-320", "dropout p=1", "p={(1e999-1e999)/1}",
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


# -- images for ``archdsl eval`` ------------------------------------------------------------------
def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bmp(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\0" * 16


def _gif(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    return b"GIF89a" + screen + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;"


def _tiff(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, width * height % 2**32)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    return b"II*\0" + struct.pack("<I", 8) + ifd


#: Files of ~100 bytes whose headers claim images far over Pillow's decompression-bomb limit.
BOMBS = {
    "png 20000x20000": lambda: _png(20000, 20000, zlib.compress(b"\0" * 1000)),
    "bmp 30000x30000": lambda: _bmp(30000, 30000),
    "gif 65535x65535": lambda: _gif(65535, 65535),
    "tiff 60000x60000": lambda: _tiff(60000, 60000),
}


def small_images() -> dict[str, bytes]:
    """An 8x6 RGB image saved as PNG, BMP, GIF, TIFF and JPEG, and a 1x20000 strip as PNG
    (a few hundred bytes that rescaling would grow to gigabytes)."""
    from PIL import Image

    img = Image.new("RGB", (8, 6))
    img.putdata([(37 * i % 256, 91 * i % 256, 13 * i % 256) for i in range(48)])
    out = {}
    for fmt in ("PNG", "BMP", "GIF", "TIFF", "JPEG"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[fmt.lower()] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (1, 20000), (9, 9, 9)).save(buf, "PNG")
    out["strip png"] = buf.getvalue()
    return out


@st.composite
def _mutate_bytes(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "big"]))
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del out[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "big" and len(out) >= i + 4:  # a size field, say, made huge
            out[i:i + 4] = b"\xff\xff\x7f\x00"
    return bytes(out)


def hostile_images() -> st.SearchStrategy[bytes]:
    """Image files for ``archdsl eval``: small PNG/BMP/GIF/TIFF/JPEG files with a few bytes
    flipped, cut, inserted or set huge; headers claiming decompression bombs (:data:`BOMBS`);
    a thin strip that rescaling would blow up; and arbitrary bytes."""
    sources = list(small_images().values()) + [make() for make in BOMBS.values()]
    return st.one_of(
        st.sampled_from(sources),
        st.sampled_from(sources).flatmap(_mutate_bytes),
        st.binary(max_size=200),
    )
