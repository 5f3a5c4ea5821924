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
    # Pre-activation CIFAR ResNets (He et al. 2016, "Identity Mappings"): "1.7M" each in the
    # paper; the exact counts follow from its description (test_preact_cifar_resnets_by_hand).
    "preact_resnet110": 1_727_962,
    "preact_resnet164": 1_703_258,
    # torchvision's layouts (googlenet without its auxiliary classifiers, densenet121)
    "googlenet": 6_624_904,
    "densenet121": 7_978_856,
    "squeezenet": 1_248_424,  # squeezenet1_0
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


def test_resnet50_v1_5_moves_the_stride_not_the_parameters():
    # torchvision's ResNet-50 ("v1.5"): each stage's stride on its first 3x3 instead of its
    # first 1x1. The weights are the same; the 3x3s of stages 3-5 run on the larger map, so
    # the count of multiply-adds is torchvision's 4.09e9, not the paper's 3.86e9.
    v1, v15 = archdsl.load("resnet50"), archdsl.load("resnet50", v1_5=1)
    assert v15.params == v1.params == 25_557_032
    assert v15.macs == 4_089_184_256
    assert v1.macs < v15.macs
    assert str(v15.output_shape) == "1000"


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


def _bn(c):
    return 2 * c  # scale and shift


def test_preact_cifar_resnets_by_hand():
    """The counts pinned above, derived from the paper's description (He et al. 2016,
    "Identity Mappings", section 4 and appendix): convs without bias (BN follows or precedes
    each), a BN before every conv of a unit, a final BN before the pooling, fc-10 with bias.

    ResNet-110: 18 basic units [3x3, c; 3x3, c] per stage, c = 16, 32, 64, shortcuts as the
    original CIFAR nets (option A, no parameters). Each unit has two BNs; the first unit's
    first BN sits on conv1's output, so the BNs match the original net's one-per-conv, and the
    count equals the original ResNet-110's 1,727,962 (He et al. 2016, "Deep Residual Learning",
    section 4.2; Table 6 rounds it to 1.7M; ``cifar_resnet`` at n=18, tests/test_sweep.py).

    ResNet-164: 18 bottleneck units [1x1, c; 3x3, c; 1x1, 4c] per stage, c = 16, 32, 64;
    where the dimensions grow (the first unit of each stage: 16->64, 64->128, 128->256) a 1x1
    projection without BN, sharing the unit's leading BN-ReLU ("when reducing the feature map
    size we use projection shortcuts ... with pre-activation").
    """
    def basic(cin, c):
        return _bn(cin) + cin * c * 9 + _bn(c) + c * c * 9

    stages = [(16, 16), (16, 32), (32, 64)]
    body = sum(basic(cin, c) + 17 * basic(c, c) for cin, c in stages)
    resnet110 = 3 * 16 * 9 + body + _bn(64) + 64 * 10 + 10
    assert resnet110 == 1_727_962 == PARAMS["preact_resnet110"]

    def bottleneck(cin, c, project):
        convs = _bn(cin) + cin * c + _bn(c) + c * c * 9 + _bn(c) + c * 4 * c
        return convs + (cin * 4 * c if project else 0)

    stages = [(16, 16), (64, 32), (128, 64)]
    body = sum(bottleneck(cin, c, True) + 17 * bottleneck(4 * c, c, False) for cin, c in stages)
    resnet164 = 3 * 16 * 9 + body + _bn(256) + 256 * 10 + 10
    assert resnet164 == 1_703_258 == PARAMS["preact_resnet164"]
    # 164 = 9n + 2 weighted layers for n = 18, plus the three projections
    weighted = [d for _, d in archdsl.load("preact_resnet164").ops()
                if d["op"] in (archdsl.Op.CONV, archdsl.Op.LINEAR)]
    assert len(weighted) == 9 * 18 + 2 + 3


def test_preact_units_end_at_the_addition():
    g = archdsl.load("preact_resnet110")
    adds = [n for n, d in g.ops() if d["op"] is archdsl.Op.ADD]
    assert len(adds) == 3 * 18
    for add in adds[:-1]:  # the next unit's BN reads the raw sum (no ReLU after the addition)
        assert all(g.nodes[u]["op"] is not archdsl.Op.RELU for u in g.users(add))


# GoogLeNet's Inception modules (Table 1): #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTIONS = [
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64),  # 3a, 3b
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128),  # 4a-4e
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),  # 5a, 5b
]


def test_googlenet_columns_concatenate_to_table1s_widths():
    g = archdsl.load("googlenet")
    concats = [g.shape(n) for n, d in g.ops() if d["op"] is archdsl.Op.CONCAT]
    widths = [c1 + c3 + c5 + pp for c1, _, c3, _, c5, pp in INCEPTIONS]
    assert [s.c for s in concats] == widths == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert [(s.h, s.w) for s in concats] == [(28, 28)] * 2 + [(14, 14)] * 5 + [(7, 7)] * 2


def test_googlenet_paper_layout():
    """The paper's layout differs from torchvision's in three ways, each counted here: every
    conv has a bias (c) instead of a BN (2c), the "5x5" columns have 5x5 kernels (16 more
    weights per pair of channels than 3x3), and LRN (no parameters)."""
    torchvision, paper = archdsl.load("googlenet"), archdsl.load("googlenet", layout="paper")
    bn_channels = 64 + 64 + 192 + sum(sum(cfg) for cfg in INCEPTIONS)
    wider = sum(c5r * c5 * (25 - 9) for _, _, _, c5r, c5, _ in INCEPTIONS)
    assert paper.params - torchvision.params == wider - bn_channels
    assert paper.params == 6_998_552
    ops = [d["op"] for _, d in paper.ops()]
    assert ops.count(archdsl.Op.LRN) == 2 and archdsl.Op.BATCHNORM not in ops


@pytest.mark.parametrize("blocks, params", [
    ((6, 12, 32, 32), 14_149_480),  # torchvision's densenet169
    ((6, 12, 48, 32), 20_013_928),  # densenet201
])
def test_densenet_depths_are_one_list(blocks, params):
    assert archdsl.load("densenet121", blocks=blocks).params == params


def test_densenet121_widths_grow_by_k_per_layer():
    g = archdsl.load("densenet121")
    concats = [g.shape(n).c for n, d in g.ops() if d["op"] is archdsl.Op.CONCAT]
    assert len(concats) == 6 + 12 + 24 + 16
    # 64 + 32 i in block 1; transitions halve: 256 -> 128, 512 -> 256, 1024 -> 512
    assert concats[:6] == [64 + 32 * i for i in range(1, 7)]
    assert concats[6] == 128 + 32 and concats[-1] == 512 + 16 * 32 == 1024
    assert str(g.output_shape) == "1000" and g.shape("gap1").dims == (1024, 1, 1)


# torchvision's published "GFLOPS" for its googlenet and densenet121 (multiply-adds, two
# significant digits), within 1 %: the concatenations and gates add no MACs.
TORCHVISION_MACS = {"googlenet": 1.50e9, "densenet121": 2.83e9}


@pytest.mark.parametrize("name", sorted(TORCHVISION_MACS))
def test_dag_macs_match_torchvision(name):
    macs = archdsl.load(name).macs
    assert abs(macs - TORCHVISION_MACS[name]) / TORCHVISION_MACS[name] < 0.01
