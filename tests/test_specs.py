"""The bundled specs reproduce the papers (Krizhevsky et al. 2012; Simonyan & Zisserman 2014,
Tables 1 and 2; He et al. 2016, Table 1 and section 4.2; numbers pinned exactly) and
lower to modules that agree with the analysis. Parameterised over `archdsl list`, so a new
spec is tested the moment it is added."""

import pytest
import torch

import archdsl
from archdsl.codegen.torch_source import class_name, emit_source

SPECS = [s.name for s in archdsl.list_specs()]

# Exact parameter counts of the published configurations: AlexNet's two-GPU net (Krizhevsky et
# al. 2012), VGG's Table 1 columns (Simonyan & Zisserman 2014; Table 2 gives them in millions),
# ResNet's Table 1 with option B shortcuts and the CIFAR-10 nets of section 4.2 (He et al. 2016).
PARAMS = {
    "alexnet": 60_965_224,
    "vgg_a": 132_863_336,
    "vgg_a_lrn": 132_863_336,
    "vgg_b": 133_047_848,
    "vgg_c": 133_638_952,
    "vgg_d": 138_357_544,
    "vgg_e": 143_667_240,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "cifar_resnet": 269_722,
    "cifar_plain": 269_722,
}

# Multiply-adds as the papers quote them (ResNet Table 1; VGG-19 in the ResNet paper, and
# VGG-16's 15.47e9), within 2 %.
PAPER_MACS = {
    "resnet18": 1.8e9,
    "resnet34": 3.6e9,
    "resnet50": 3.8e9,
    "resnet101": 7.6e9,
    "resnet152": 11.3e9,
    "vgg_d": 15.47e9,
    "vgg_e": 19.6e9,
}

# The same counted layer by layer from He et al. 2016, Table 1 (a conv: H_out x W_out x C_out x
# C_in/groups x k_h x k_w; an fc: in x out), stride on the first 1x1 conv of a bottleneck as
# published (three significant digits).
FORMULA_MACS = {
    "resnet18": 1.81e9,
    "resnet34": 3.66e9,
    "resnet50": 3.86e9,
    "resnet101": 7.57e9,
    "resnet152": 11.28e9,
}


def test_every_seed_network_is_bundled():
    assert set(PARAMS) <= set(SPECS)
    assert {"plain18", "plain34"} <= set(SPECS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameters_match_the_papers(name):
    assert archdsl.load(name).params == PARAMS[name]


def test_alexnet_without_groups():
    assert archdsl.load("alexnet", groups=1).params == 62_378_344


@pytest.mark.parametrize("n, params", [
    (3, 269_722), (5, 464_154), (7, 658_586), (9, 853_018), (18, 1_727_962), (200, 19_421_274),
])
def test_cifar_resnets(n, params):
    resnet = archdsl.load("cifar_resnet", n=n)
    plain = archdsl.load("cifar_plain", n=n)
    assert resnet.params == plain.params == params
    weighted = [d for _, d in resnet.ops() if d["op"] in (archdsl.Op.CONV, archdsl.Op.LINEAR)]
    assert len(weighted) == 6 * n + 2


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_macs_match_the_papers(name):
    macs = archdsl.load(name).macs
    assert abs(macs - PAPER_MACS[name]) / PAPER_MACS[name] < 0.02


@pytest.mark.parametrize("name", sorted(FORMULA_MACS))
def test_macs_by_the_reference_formula(name):
    assert round(archdsl.load(name).macs / 1e9, 2) == FORMULA_MACS[name] / 1e9


def test_resnet_shortcut_options_change_only_the_projections():
    a, b, c = (archdsl.load("resnet50", shortcut=s) for s in "ABC")
    assert a.params < b.params < c.params
    # Option A adds no parameters: a ResNet has exactly its plain twin's parameters.
    assert archdsl.load("resnet34", shortcut="A").params == archdsl.load("plain34").params


def test_table1_output_sizes():
    g = archdsl.load("resnet50")
    sizes = {d["scope"].split(".")[0]: g.shape(n) for n, d in g.ops() if d["scope"]}
    assert str(sizes["imagenet_stem1"]) == "64x56x56"
    vgg = archdsl.load("vgg_e")
    pools = [vgg.shape(n) for n, d in vgg.ops() if d["op"] is archdsl.Op.MAXPOOL]
    assert [str(s) for s in pools] == ["64x112x112", "128x56x56", "256x28x28", "512x14x14", "512x7x7"]
    alex = archdsl.load("alexnet")
    convs = [str(alex.shape(n)) for n, d in alex.ops() if d["op"] is archdsl.Op.CONV]
    assert convs == ["96x55x55", "256x27x27", "384x13x13", "384x13x13", "256x13x13"]


@pytest.mark.parametrize("name", SPECS)
def test_module_agrees_with_analysis(name):
    graph = archdsl.load(name)
    with torch.device("meta"):  # shapes and counts without allocating 100M+ parameters
        module = archdsl.compile(graph)
        out = module(torch.empty(2, *graph.input_shape.dims))
    assert sum(p.numel() for p in module.parameters()) == graph.params
    assert tuple(out.shape) == (2, *graph.output_shape.dims)


@pytest.mark.parametrize("name", SPECS)
def test_emitted_source_is_the_same_module(name):
    # A small input keeps the forward pass cheap; the FC sizes follow it.
    graph = archdsl.load(name, input="3x64x64")
    source = emit_source(graph)
    assert emit_source(archdsl.load(name, input="3x64x64")) == source  # deterministic
    namespace = {}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    emitted = namespace[class_name(graph.name)]()
    module = archdsl.compile(graph, softmax=True)  # the graph as emitted: with its softmax
    assert [(k, v.shape) for k, v in emitted.state_dict().items()] == \
           [(k, v.shape) for k, v in module.state_dict().items()]
    emitted.load_state_dict(module.state_dict())
    module.eval(), emitted.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), module(x), rtol=0, atol=0)
