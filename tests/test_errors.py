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


# -- parse errors a new user meets (each message: file:line:col, the line, a caret) --------------
def caret_under(err, text):
    """The caret line of the rendered error sits under ``text`` in the quoted line."""
    lines = str(err).splitlines()
    quoted, carets = lines[1], lines[2]
    return quoted[carets.index("^"):].startswith(text)


def test_an_option_given_twice_is_refused_at_the_second():
    err = error("net a : 3x8x8 {\n  conv3-16 pad=1 pad=2\n}")
    assert (err.line, err.column) == (2, 18)
    assert "option 'pad' given twice" in err.message and "expected each option once" in err.message
    assert caret_under(err, "pad=2")
    assert "given twice" in error("net a : 3x8x8 { residual act=none act=relu { conv3-3 } }").message
    assert "named twice" in error("net a(c=1, c=2) : 3x8x8 { conv3-3 }").message


@pytest.mark.parametrize("value, found", [(2.5, "found 1.5 (not an integer)"), ("2.5", "found 1.5 (not an integer)")])
def test_a_fractional_repeat_count_is_not_an_integer(value, found):
    from archdsl.frontend.values import parse_cli_value

    err = error("net a(n=3) : 3x8x8 {\n  conv3-4 x{n-1}\n}", n=parse_cli_value(str(value)))
    assert err.line == 2 and found in err.message and "expected an integer for a repeat count" in err.message


def test_an_integral_float_counts_as_an_integer():
    # --set n=18.0 is 18 (a width multiplier gives 24.0 for 32*0.75 the same way)
    assert archdsl.loads("net a(n=3) : 3x8x8 { conv3-4 x{n-1} }", n=18.0).params == \
        archdsl.loads("net a(n=3) : 3x8x8 { conv3-4 x{n-1} }", n=18).params


def test_a_misspelt_residual_is_an_unknown_layer_at_its_name():
    err = error("net a : 3x8x8 {\n  resdiual {\n    conv3-8\n  }\n}")
    assert (err.line, err.column) == (2, 3)
    assert "unknown layer 'resdiual' (did you mean 'residual'?)" in err.message
    assert caret_under(err, "resdiual")


@pytest.mark.parametrize("text, suggestion", [
    ("conv3-8; bachnorm", "did you mean 'batchnorm'?"),
    ("conv3-8; maxpol", "did you mean 'maxpool'?"),
    ("conv3-8; sofmax", "did you mean 'softmax'?"),
])
def test_unknown_layers_suggest_the_closest_name(text, suggestion):
    err = error(f"net a : 3x8x8 {{\n  {text}\n}}")
    assert err.line == 2 and "unknown layer" in err.message and suggestion in err.message


def test_an_unclosed_brace_is_reported_where_it_opened():
    err = error("net a : 3x8x8 {\n  residual {\n    conv3-8\n\n  conv3-8\n}\n")
    assert (err.line, err.column) == (2, 12)
    assert err.message == "expected '}' to close this '{', found the end of the file"
    err = error("net a : 3x8x8 {\n  conv3-8\n")  # the only brace open: at the net's
    assert (err.line, err.column) == (1, 15) and "to close this '{'" in err.message
    err = error("net a(c=[1, 2) : 3x8x8 { conv3-8 }")
    assert err.column == 14 and "']'" in err.message and "found ')'" in err.message


def test_a_byte_order_mark_is_accepted(tmp_path):
    spec = tmp_path / "bom.arch"
    spec.write_bytes("\ufeffnet a : 3x8x8 { conv3-8 }\n".encode("utf-8"))
    assert archdsl.load(spec).params == 8 * 27 + 8
    err = error("\ufeffnet a : 3x8x8 { conv3-0 }")
    assert err.column == 23  # columns count from after the mark, as editors show them


def test_an_unknown_block_suggests_the_bundled_library_that_defines_it():
    err = error("net a : 3x8x8 {\n  bottleneck(16)\n}")
    assert err.line == 2 and "unknown block 'bottleneck'" in err.message
    assert 'add import "lib/resnet.arch"' in err.message
    err = error("net a : 3x8x8 {\n  imagenet_stem\n}")
    assert 'add import "lib/resnet.arch"' in err.message


def test_parse_errors_exit_2_on_the_command_line(tmp_path, capsys):
    from archdsl.cli import main

    spec = tmp_path / "dup.arch"
    spec.write_text("net a : 3x8x8 {\n  conv3-16 pad=1 pad=2\n}\n")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "dup.arch:2:18: error: option 'pad' given twice" in err and "Traceback" not in err


def test_an_fc_resized_by_another_input_is_a_warning_naming_both_sizes():
    text = "net v : 3x32x32 {\n  conv3-8; maxpool\n  fc-10\n}"
    with pytest.warns(archdsl.errors.SpecWarning) as record:
        archdsl.loads(text, file="v.arch", input="3x64x64")
    message = str(record[0].message)
    assert message.startswith("v.arch:3:3: warning: fc-10 receives 8192 features (8x32x32) at input 3x64x64, "
                              "but 2048 (8x16x16) at the spec's declared input 3x32x32")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        archdsl.loads(text, input="3x32x32")  # the declared size: no warning
        archdsl.loads("net v : 3x32x32 { conv3-8; gap; fc-10 }", input="3x64x64")  # pooled: same size


def test_a_residual_that_pools_globally_is_an_error_at_the_residual():
    err = error("net r : 16x32x32 {\n  residual {\n    conv3-16; gap\n  }\n}")
    assert (err.line, err.column) == (2, 3)
    assert "reduces its 16x32x32 input to 16x1x1 by global average pooling (line 3)" in err.message
    assert "which no shortcut can follow" in err.message


# -- graph errors: each at file:line:col with a caret, expected vs found, exit 2 on the CLI --------
GRAPH_ERRORS = [
    # mismatched concat heights: at the branch that disagrees
    ("net g : 8x16x16 {\n  concat {\n    conv3-8\n  | conv3-8/2\n  }\n}",
     (4, 5), "conv3-8/2", "concat cannot join branch 2 to branch 1: expected a 16x16 map as the first branch "
                          "gives, found 8x8 (8x8x8)"),
    # a gate of the wrong width
    ("net g : 8x16x16 {\n  multiply { identity | gap; conv1-4 act=none; sigmoid }\n}",
     (2, 25), "gap", "expected a gate of 8x1x1 (or a multiplier of shape 8x16x16) for the 8x16x16 map, found 4x1x1"),
    # an unknown name
    ("net g : 8x16x16 {\n  x = conv3-8\n  add { identity | y }\n}",
     (3, 20), "y", "unknown layer 'y': expected a layer, a block or a named value (values here: x)"),
    # a name used before it is defined
    ("net g : 8x16x16 {\n  conv3-8; add { identity | x }\n  x = conv3-8\n}",
     (2, 29), "x", "name 'x' is used before it is defined (at line 3): expected a name defined above"),
    # a name defined twice
    ("net g : 8x16x16 {\n  x = conv3-8\n  x = conv3-8\n}",
     (3, 3), "x", "name 'x' is defined twice: expected a new name (it is defined at line 2)"),
    # a list index out of range
    ("net g(depths=[1, 2]) : 8x16x16 {\n  conv3-8 x{depths[2]}\n}",
     (2, 20), "2", "list index 2 is out of range: expected 0 to 1 (the list has 2 items; -1 is the last)"),
]


@pytest.mark.parametrize("text, where, under, message", GRAPH_ERRORS, ids=[
    "concat-heights", "gate-width", "unknown-name", "used-before-defined", "defined-twice", "index-range"])
def test_graph_errors_point_at_the_line(text, where, under, message, tmp_path, capsys):
    err = error(text)
    assert (err.line, err.column) == where
    assert message in err.message
    assert caret_under(err, under)
    from archdsl.cli import main

    spec = tmp_path / "g.arch"
    spec.write_text(text + "\n")
    assert main(["check", str(spec)]) == 2
    out = capsys.readouterr().err
    assert f"g.arch:{where[0]}:{where[1]}: error: " in out and "Traceback" not in out


def test_merge_errors():
    assert "concat has no option 'act'" in error("net g : 8x8x8 { concat act=none { conv3-2 | conv3-2 } }").message
    assert "multiply takes two branches" in error(
        "net g : 8x8x8 { multiply { identity | sigmoid | relu } }").message
    assert "takes the same value from two branches" in error(
        "net g : 8x8x8 { conv3-8; concat { identity | identity } }").message
    assert "is already a layer" in error("net g : 8x8x8 { relu = conv3-8 }").message
    assert "never used" in error("net g : 8x8x8 { x = conv3-8; conv3-4; x }").message
    err = error("net g : 8x8x8 { concta { conv3-2 | conv3-2 } }")
    assert "unknown layer 'concta' (did you mean 'concat'?)" in err.message


def test_a_loop_index_that_hides_a_parameter():
    err = error("net a(i=1) : 3x8x8 {\n  conv3-{4+i} x2 for i\n}")
    assert (err.line, err.column) == (2, 22)
    assert "loop index 'i' is already a parameter or an enclosing loop's index" in err.message
