"""The lowered modules behave like any nn.Module: they pickle, save, deep-copy and script;
print shows every layer; they return logits unless asked for the softmax; the emitted source
never shadows its own imports or builtins; only finite numbers reach it."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import io
import pickle
import re

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl import Op
from archdsl.cli import main
from archdsl.codegen.torch_source import class_name, emit_source
from archdsl.pipeline import lower_graph
from archdsl.testing import check_lowering

# Every kind of node the torch lowering makes: conv, LRN, pools, BN, ReLU, option A shortcut,
# projection shortcut, add, dropout, fc on a map, softmax.
SMALL = """net small : 3x16x16 {
    conv3-8; lrn; maxpool
    residual shortcut=A { conv3-16/2 bias=false; bn; conv3-16 bias=false; bn }
    residual shortcut=B { conv3-24/2; bn }
    avgpool; dropout; fc-10; softmax
}"""


def _emitted(source: str, net: str):
    namespace: dict = {}
    exec(compile(source, "<emitted>", "exec"), namespace)
    return namespace[class_name(net)]()


@pytest.mark.parametrize("dense", [False, True])
def test_modules_pickle_save_deepcopy_and_script(dense):
    torch.manual_seed(0)
    model = archdsl.compile(archdsl.loads(SMALL), dense=dense).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert torch.equal(copied(x), want) and type(copied) is type(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), want)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), want)
    assert scripted.state_dict().keys() == model.state_dict().keys()


def test_print_shows_activations_and_merges():
    text = str(archdsl.compile(archdsl.loads(SMALL)))
    assert "(relu1): ReLU()" in text and "(add1): Add()" in text and "(add2): Add()" in text
    assert "(shortcut1): ShortcutPad(stride=2, extra=8)" in text
    assert "Softmax" not in text  # logits by default
    assert "(softmax1): Softmax(dim=1)" in str(archdsl.compile(archdsl.loads(SMALL), softmax=True))


def test_compile_returns_logits_that_train_with_cross_entropy():
    graph = archdsl.load("cifar_resnet", n=1)
    assert graph.nodes[graph.graph["output"]]["op"] is Op.SOFTMAX  # the spec's graph keeps it
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    losses = {}
    for softmax in (False, True):
        torch.manual_seed(0)
        model = archdsl.compile(graph, softmax=softmax)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        first = last = None
        for _ in range(15):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first, last = first or loss.item(), loss.item()
        losses[softmax] = (first, last)
    # On logits 15 steps fit one batch (2.3 -> about 0.03); cross-entropy on probabilities
    # applies the softmax twice and barely moves (2.3 -> about 2.0).
    assert losses[False][1] < 0.2 * losses[False][0]
    assert losses[True][1] > 0.5 * losses[True][0]


def test_softmax_true_ends_in_the_softmax_of_the_logits():
    torch.manual_seed(0)
    logits = archdsl.compile(archdsl.loads(SMALL)).eval()
    probs = archdsl.compile(archdsl.loads(SMALL), softmax=True).eval()
    probs.load_state_dict(logits.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(probs(x), torch.softmax(logits(x), dim=1))
        assert not torch.allclose(logits(x).sum(1), torch.ones(2))
    graph = archdsl.loads(SMALL)
    assert (lower_graph(graph).params, lower_graph(graph).macs) == (graph.params, graph.macs)


def test_emitted_module_returns_logits_unless_built_with_softmax(tmp_path, capsys):
    # The forward's last computed line, before its return: the fc layer, or the softmax after it.
    for flags, last in (([], "self.fc1("), (["--softmax"], "torch.softmax(")):
        out = tmp_path / f"small{len(flags)}.py"
        spec = tmp_path / "small.arch"
        spec.write_text(SMALL)
        assert main(["build", str(spec), "-o", str(out), *flags]) == 0
        lines = out.read_text().rstrip().splitlines()
        assert lines[-1].strip() == "return x"
        assert lines[-2].strip().startswith(f"x = {last}")
    capsys.readouterr()


@pytest.mark.parametrize("net", ["f", "F", "fused_conv2d", "local_response_norm", "exception", "torch"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_emitted_names_never_shadow_imports_builtins_or_mangle(net, backend):
    text = f"""block __b() {{ conv3-4 }}
net {net} : 3x8x8 {{
    __b; lrn; conv3-4 act=none
    residual shortcut=A {{ conv3-8/2 }}
    gap; fc-3
}}"""
    graph = archdsl.loads(text)
    assert all(not n.startswith("__") for n in graph.nodes)
    source = emit_source(lower_graph(graph, backend), backend)
    cls = class_name(net)
    assert cls not in {"F", "FusedConv2d", "LocalResponseNorm", "Exception"} and f"class {cls}(" in source
    emitted = _emitted(source, net).eval()
    model = archdsl.compile(graph).eval()
    assert emitted.state_dict().keys() == model.state_dict().keys()
    emitted.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("option", ["alpha=1e308 size=2", "k=1e300", "beta=1e9"])
def test_absurd_lrn_values_are_spec_errors_at_the_option(option, tmp_path, capsys):
    spec = tmp_path / "lrn.arch"
    spec.write_text(f"net a : 3x8x8 {{\n  conv3-4\n  lrn {option}\n}}\n")
    assert main(["build", str(spec), "-o", str(tmp_path / "a.py")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:3:" in err and "at most" in err and "Traceback" not in err
    assert not (tmp_path / "a.py").exists()
    with pytest.raises(archdsl.SpecError, match="at most"):
        archdsl.loads("net a : 3x8x8 { conv3-4; bn eps=1e300 }")


def test_build_for_triton_without_triton_refuses_clearly(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    out = tmp_path / "net.py"
    assert main(["build", "cifar_resnet", "--set", "n=1", "--backend", "triton", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "imports triton, which is not installed" in err and "--backend torch" in err
    assert not out.exists()


# -- the module tree ---------------------------------------------------------------------------

def test_module_tree_follows_the_spec():
    model = archdsl.compile("cifar_resnet", n=3)
    keys = list(model.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "basic_stage2.basic1.conv1.weight" in keys and "basic_stage2.basic2.1.bn2.running_var" in keys
    stage = model.basic_stage2
    assert isinstance(stage.basic2, torch.nn.Sequential) and len(stage.basic2) == 2  # basic(...) x{n-1}
    text = str(model)
    assert "(basic_stage1): BasicStage(" in text and "(basic1): Basic(" in text
    assert model.paths["basic4_conv1"] == "basic_stage2.basic1.conv1"  # graph node -> module path


def test_inserting_a_layer_renames_no_other_block():
    base = "import \"lib/resnet.arch\"\nnet t : 3x16x16 {{ conv3-8 bias=false; bn; {extra}basic_stage(8, 2, stride=1); " \
           "basic_stage(16, 2); gap; fc-3 }}"
    before = set(archdsl.compile(archdsl.loads(base.format(extra=""))).state_dict())
    after = set(archdsl.compile(archdsl.loads(base.format(extra="conv3-8; "))).state_dict())
    assert after - before == {"conv2.weight", "conv2.bias"}  # the new layer, and nothing renamed
    assert before <= after


def test_labels_name_block_calls():
    graph = archdsl.loads('import "lib/resnet.arch"\nnet t : 3x16x16 { conv3-8; layer1 = basic_stage(8, 2, stride=1); '
                          "layer2 = basic_stage(16, 3); gap; fc-3 }")
    keys = set(archdsl.compile(graph).state_dict())
    assert {"layer1.basic1.conv1.weight", "layer2.basic2.1.conv2.weight"} <= keys
    assert not any(k.startswith("basic_stage") for k in keys)


def test_emitted_resnet110_mirrors_the_module_and_is_short(tmp_path, monkeypatch):
    graph = archdsl.load("cifar_resnet", n=18)
    source = emit_source(lower_graph(graph))
    lines = source.splitlines()
    classes = [line for line in lines if line.startswith("class ")]
    # One class per distinct block (the two kinds of basic block, the two kinds of stage) and the net's.
    assert len(classes) == 5 and len(lines) <= 110, (len(classes), len(lines))
    assert re.search(r"self\.basic2 = nn\.Sequential\(\*\[Basic\(\w+\) for _ in range\(17\)\]\)", source)  # a loop
    (tmp_path / "resnet110.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    emitted = importlib.import_module("resnet110").CifarResnet().eval()
    model = archdsl.compile(graph).eval()
    assert list(emitted.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.1, 0.1)
    emitted.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(emitted(x), want, rtol=1e-5, atol=1e-6)
        for module in (model, emitted):
            for copied in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
                torch.testing.assert_close(copied(x), want, rtol=1e-5, atol=1e-6)
            buffer = io.BytesIO()
            torch.save(module, buffer)
            buffer.seek(0)
            torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), want, rtol=1e-5, atol=1e-6)
            scripted = torch.jit.script(module)
            torch.testing.assert_close(scripted(x), want, rtol=1e-5, atol=1e-6)
            assert scripted.state_dict().keys() == model.state_dict().keys()


def test_a_graph_whose_calls_cannot_be_contracted_lowers_flat():
    # A node marked as sitting in the first stage but computed after the last one: contracting
    # the stages would make a cycle, so the module is one level with the node names as keys.
    from archdsl.codegen import hierarchy

    graph = archdsl.load("cifar_resnet", n=1)
    gap = next(n for n, d in graph.nodes(data=True) if d["op"] is Op.GLOBAL_AVGPOOL)
    modules = graph.graph["modules"]
    path, _, blocks = next(iter(modules.values()))
    graph.graph["modules"] = {**modules, gap: (path, "gap9", blocks)}
    root = hierarchy.tree(graph)
    assert not root.children and gap in root.nodes.values()
    model = archdsl.compile(graph).eval()
    assert "basic1_conv1.weight" in model.state_dict()
    reference = archdsl.compile(archdsl.load("cifar_resnet", n=1)).eval()
    flat = {node: path for node, path in model.paths.items()}
    state = {f"{flat[node]}.{key.rpartition('.')[2]}": value for key, value in reference.state_dict().items()
             for node, path in reference.paths.items() if key.rpartition(".")[0] == path}
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    _emitted(emit_source(lower_graph(graph)), "cifar_resnet")  # the source is flat too, and runs


def test_a_label_names_a_layer_and_a_bare_block_repeat_is_a_sequence():
    graph = archdsl.loads("block unit() { conv3-8; bn }\n"
                          "net t : 3x16x16 { stem = conv3-8 bias=false; bn; unit x3; head = unit; conv3-8; gap; fc-3 }")
    keys = [k for k in archdsl.compile(graph).state_dict() if k.endswith(".weight")]
    assert keys == ["stem.weight", "bn1.weight", "unit1.0.conv1.weight", "unit1.0.bn1.weight",
                    "unit1.1.conv1.weight", "unit1.1.bn1.weight", "unit1.2.conv1.weight", "unit1.2.bn1.weight",
                    "head.conv1.weight", "head.bn1.weight", "conv2.weight", "fc1.weight"]
    check_lowering(graph)  # the emitted source names them alike and computes the same


def test_a_net_of_only_a_final_softmax_returns_its_input_as_logits():
    graph = archdsl.loads("net s : 2x3x3 { softmax }")
    x = torch.randn(2, 2, 3, 3)
    assert torch.equal(archdsl.compile(graph)(x), x)
    assert emit_source(lower_graph(graph)).rstrip().endswith("def forward(self, x):\n        return x")
    torch.testing.assert_close(archdsl.compile(graph, softmax=True)(x), torch.softmax(x, dim=1))


def test_a_repeat_whose_first_copy_is_empty_lowers_flat():
    # b(0) writes no layer, so the repeat's copy 0 has nothing to hold: the module is lowered
    # flat (keys are node names) rather than with a gap in the sequence.
    graph = archdsl.loads("block b(n) { conv3-4 x{n} }\nnet t : 3x8x8 { conv3-4; b({i}) x3 for i; gap; fc-2 }")
    model = archdsl.compile(graph)
    assert "conv1.weight" in model.state_dict() and not any(k.startswith("b1.") for k in model.state_dict())
    check_lowering(graph)
