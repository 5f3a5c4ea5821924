"""Errors a user can cause point at the spec line: file:line:col, the line, a caret, and
expected versus found."""

import pytest

import archdsl
from archdsl import SpecError


def error(text, **params):
    with pytest.raises(SpecError) as info:
        archdsl.loads(text, file="net.arch", **params)
    return info.value


def test_syntax_error_names_expected_tokens():
    err = error("net a : 3x8x8 {\n  conv3-64 @\n}")
    assert (err.file, err.line, err.column) == ("net.arch", 2, 12)
    text = str(err)
    assert text.startswith("net.arch:2:12: error: unexpected character '@'")
    assert "    conv3-64 @\n" in text and text.splitlines()[2] == "               ^"


def test_missing_closing_brace():
    err = error("net a : 3x8x8 {\n  conv3-64\n")
    assert "found the end of the file" in err.message and "'}'" in err.message


def test_unknown_layer():
    err = error("net a : 3x8x8 {\n  conv3-8\n  convolution-8\n}")
    assert err.line == 3 and err.column == 3
    assert "unknown layer 'convolution'" in err.message


@pytest.mark.parametrize("text, message", [
    ("conv3-8 padding=1", "conv3 has no option 'padding' (its options: pad, groups, bias, act, stride, k)"),
    ("conv3-8 groups=3", "groups=3 needs input and output channels divisible by 3, found 3 in and 8 out"),
    ("conv3-{c}", "unknown parameter 'c'"),
    ("conv3-8 bias=maybe", "expected true or false for bias, found 'maybe'"),
    ("conv3-0", "expected the number of channels >= 1, found 0"),
    ("dropout p=1.5", "expected a dropout probability below 1, found 1.5"),
    ("maxpool-3", "maxpool takes no '-N' part"),
    ("fc", "fc needs the number of features"),
    ("conv3-8 x{2-3}", "expected a repeat count >= 0, found -1"),
    ("conv3-{8/3}", "expected an integer for the number of channels, found 2.66667"),
    ("LRN mode=median", "expected mode to be one of sum, avg"),
])
def test_bad_attributes(text, message):
    err = error(f"net a : 3x8x8 {{\n  {text}\n}}")
    assert err.line == 2
    assert message in err.message


def test_residual_add_with_mismatched_shapes():
    text = "net r : 64x56x56 {\n  residual shortcut=identity {\n    conv3-128/2; conv3-128\n  }\n}"
    err = error(text)
    assert err.line == 2 and err.column == 3
    assert "residual add of 128x28x28 with 64x56x56" in err.message


def test_pool_below_one_pixel():
    err = error("net p : 3x32x32 {\n  conv3-8/2 x5\n  maxpool\n}")
    assert err.line == 3
    assert "shrinks the 1x1 map" in err.message and "expected an input of at least 2x2, found 1x1" in err.message


def test_fc_whose_input_cannot_work():
    err = error("net f : 3x224x224 {\n  conv11-96/4 pad=2; maxpool3/2\n  fc-4096 in=9216\n}")
    assert err.line == 3
    assert err.message == "fc-4096 expects 9216 input features, but receives 69984 (96x27x27)"


def test_conv_larger_than_its_input():
    err = error("net c : 3x4x4 { conv7-8 pad=0 }")
    assert "expected an input of at least 7x7, found 4x4" in err.message


def test_error_inside_a_block_names_the_call():
    text = "block b(c) {\n  conv3-{c}\n  maxpool8\n}\nnet n : 3x8x8 {\n  b(4)\n  b(4)\n}"
    err = error(text)
    assert err.line == 3  # the pool inside the block, on its second call
    assert "in block 'b' called here" in str(err)
    assert str(err).count("net.arch:7:3: note") == 1


def test_unknown_and_missing_parameters():
    text = "net n(c) : 3x8x8 { conv3-{c} }"
    assert "needs a value for parameter 'c'" in error(text).message
    assert "has no parameter 'd'" in error(text, c=1, d=2).message
    assert archdsl.loads(text, c=3).params == 3 * 27 + 3


def test_block_argument_errors():
    base = "block b(c, k=3) { conv3-{c} }\nnet n : 3x8x8 { CALL }"
    assert "takes 2 argument(s), found 3" in error(base.replace("CALL", "b(1, 2, 3)")).message
    assert "has no parameter 'z'" in error(base.replace("CALL", "b(1, z=2)")).message
    assert "needs a value for 'c'" in error(base.replace("CALL", "b()")).message
    assert "unknown block 'nope'" in error(base.replace("CALL", "nope(1)")).message


def test_recursive_block():
    err = error("block a() { b }\nblock b() { a }\nnet n : 3x8x8 { a }")
    assert "calls itself (a -> b -> a)" in err.message


def test_import_errors(tmp_path):
    spec = tmp_path / "n.arch"
    spec.write_text('import "missing.arch"\nnet n : 3x8x8 { conv3-4 }\n')
    with pytest.raises(SpecError, match="cannot find imported file 'missing.arch'") as info:
        archdsl.load(spec)
    assert info.value.line == 1
    spec.write_text('import "/etc/passwd"\nnet n : 3x8x8 { conv3-4 }\n')
    with pytest.raises(SpecError, match="an import names an .arch file"):
        archdsl.load(spec)


def test_no_input_shape_and_no_net():
    assert "declares no input shape" in error("net n { conv3-4 }").message
    assert "defines no net" in error("block b() { conv3-4 }").message
    assert archdsl.loads("net n { conv3-4 }", input="3x8x8").params == 4 * 27 + 4


def test_errors_are_one_type_with_positions():
    for text in ["net", "net n : 3x8x8 { conv3-4 x }", "net n : 3x8x8 { fc-{1//0} }", "}{"]:
        err = error(text)
        assert err.line >= 1 and err.column >= 1


def test_two_statements_on_a_line_without_a_separator():
    err = error("net a : 3x8x8 { conv3-64 conv3-8 }")
    assert "expected '=', found '-'" in err.message
    assert "statements are separated by ';' or new lines" in err.message


@pytest.mark.parametrize("value", ["3x0x8", (3, 0, 8), "abc", (3, 8)])
def test_bad_input_argument(value):
    with pytest.raises(SpecError, match="input: expected"):
        archdsl.loads("net a { conv3-4 }", input=value)
