"""Foreign weights onto specs by structure (`archdsl.load_pretrained`, `archdsl convert`), the
specs written for torchvision's and timm's nets, and what a mismatched import reports.

The torchvision and timm comparisons need torchvision, which installs beside a different torch
build than the main environment's: they run in a second environment (see .ci/run) and skip,
saying so, where torchvision is absent."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archdsl
from archdsl.cli import main
from archdsl.codegen.torch_source import class_name
from archdsl.pretrained import WeightMismatch, load_pretrained, map_weights, read_weights


def logits(name, small=False, **params):
    """The spec's graph without its final softmax: the foreign nets return logits. With
    ``small``, at a 64x64 input where that changes no weight (nets that pool globally)."""
    graph = archdsl.load(name, **params)
    if small and archdsl.load(name, input="3x64x64", **params).params == graph.params:
        graph = archdsl.load(name, input="3x64x64", **params)
    out = graph.graph["output"]
    if graph.nodes[out]["op"] is archdsl.Op.SOFTMAX:
        graph.graph["output"] = graph.nodes[out]["args"][0]
        graph.remove_node(out)
    return graph


def randomize(module):
    """Batch norm that is not the identity, so that a misplaced statistic shows."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return module.eval()


# -- the specs for the model zoos' nets ----------------------------------------------------------

# Parameter counts as torchvision's model documentation gives them.
TORCHVISION_PARAMS = {
    "vgg_a_bn": 132_868_840,  # vgg11_bn
    "vgg_b_bn": 133_053_736,  # vgg13_bn
    "vgg_d_bn": 138_365_992,  # vgg16_bn
    "vgg_e_bn": 143_678_248,  # vgg19_bn
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    "alexnet_tv": 61_100_840,
    "squeezenet": 1_248_424,  # squeezenet1_0
    "densenet121": 7_978_856,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_zoo_specs_have_torchvisions_parameter_counts(name):
    assert archdsl.load(name).params == TORCHVISION_PARAMS[name]


def test_resnet_v1_5_moves_the_stride_not_the_parameters():
    v1, v15 = archdsl.load("resnet50"), archdsl.load("resnet50", v1_5=1)
    assert v1.params == v15.params == 25_557_032
    assert v1.macs == 3_857_973_248  # unchanged by the option: v1 stays the default
    assert v15.macs == 4_089_184_256  # torchvision's ResNet50_Weights: 4.09 GFLOPS (multiply-adds), the v1.5 layout
    for name in ("resnet101", "resnet152"):
        assert archdsl.load(name, v1_5=1).params == archdsl.load(name).params
    strided = [(d["attrs"]["kernel"], d["attrs"]["stride"]) for _, d in v15.ops()
               if d["op"] is archdsl.Op.CONV and d["attrs"]["stride"] != (1, 1)]
    # the stem, then per stage 2-4 the 3x3 and the projection
    assert strided == [((7, 7), (2, 2))] + [((3, 3), (2, 2)), ((1, 1), (2, 2))] * 3


def test_zoo_macs():
    # torchvision's documented GFLOPS column (multiply-accumulates), to its two decimals
    assert round(archdsl.load("resnext50_32x4d").macs / 1e9, 2) == 4.23
    assert round(archdsl.load("wide_resnet50_2").macs / 1e9, 1) == 11.4
    assert round(archdsl.load("alexnet_tv").macs / 1e9, 2) == 0.71
    for key in "abde":  # batch norm adds no multiply-accumulates
        assert archdsl.load(f"vgg_{key}_bn").macs == archdsl.load(f"vgg_{key}").macs


# -- structural import, without torchvision ------------------------------------------------------

class ForeignBlock(nn.Module):
    """A CIFAR basic block written as other code bases write it (option A shortcut)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = self.norm_b(self.conv_b(F.relu(self.norm_a(self.conv_a(x)))))
        short = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra)) if self.extra else x
        return F.relu(y + short)


class ForeignResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(ForeignBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def test_foreign_state_dict_loads_by_structure():
    torch.manual_seed(0)
    foreign = randomize(ForeignResNet20())
    model = load_pretrained(logits("cifar_resnet"), foreign.state_dict()).eval()
    assert model.weight_map.ok
    assert len(model.weight_map.pairs) == len(foreign.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), foreign(x), rtol=1e-5, atol=1e-5)
    # The foreign module itself: its call order, and its strides are compared too.
    again = load_pretrained(logits("cifar_resnet"), foreign, input_shape=(3, 32, 32)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), foreign(x), rtol=1e-5, atol=1e-5)


def test_convert_writes_a_file_the_emitted_source_loads(tmp_path, capsys):
    torch.manual_seed(0)
    foreign = randomize(ForeignResNet20())
    src, dst = tmp_path / "foreign.pt", tmp_path / "archdsl.safetensors"
    torch.save(foreign.state_dict(), src)
    assert main(["convert", "cifar_resnet", "--from", str(src), "--to", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "stem.0.weight" in out and "conv1.weight" in out and "ok" in out  # the per-tensor report
    assert main(["build", "cifar_resnet", "-o", str(tmp_path / "net.py")]) == 0
    namespace = {}
    exec(compile((tmp_path / "net.py").read_text(), "net.py", "exec"), namespace)
    emitted = namespace[class_name("cifar_resnet")]()
    emitted.load_state_dict(read_weights(dst))  # strict: every key there, none left over
    module = load_pretrained("cifar_resnet", foreign.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(emitted.eval()(x), module.eval()(x), rtol=0, atol=0)


def _meta_state(name, **params):
    with torch.device("meta"):  # shapes only: the mapping never reads the values
        return archdsl.compile(name, **params).state_dict()


def _meta_module(name, **params):
    with torch.device("meta"):
        return archdsl.compile(name, **params)


def test_weights_saved_under_the_old_flat_keys_convert(tmp_path, capsys):
    """Modules once named every tensor after its graph node (``basic4_conv1.weight``); such a
    file maps onto today's tree (``basic_stage2.basic1.conv1.weight``) by structure."""
    graph = archdsl.load("cifar_resnet", n=2)
    model = randomize(archdsl.compile(graph)).eval()
    node_of = {path: node for node, path in model.paths.items()}
    flat = {}
    for key, value in model.state_dict().items():
        path, _, role = key.rpartition(".")
        flat[f"{node_of[path]}.{role}"] = value
    assert "basic4_conv1.weight" in flat and "basic_stage2.basic1.conv1.weight" in model.state_dict()
    torch.save(flat, tmp_path / "flat.pt")
    assert main(["convert", "cifar_resnet", "--set", "n=2", "--from", str(tmp_path / "flat.pt"),
                 "--to", str(tmp_path / "tree.pt")]) == 0
    capsys.readouterr()
    fresh = archdsl.compile(graph).eval()
    fresh.load_state_dict(torch.load(tmp_path / "tree.pt", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    again = load_pretrained("cifar_resnet", flat, n=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_vgg16_weights_into_vgg19_are_refused_with_a_report(tmp_path, capsys):
    layers = {}  # VGG-16's tensors under torchvision-style names, features.<i>.weight
    state = {f"features.{layers.setdefault(k.rsplit('.', 1)[0], len(layers))}.{k.rsplit('.', 1)[1]}": v
             for k, v in _meta_state("vgg_d").items()}
    report = map_weights(_meta_module("vgg_e"), state, (3, 224, 224), "torchvision")
    assert not report.ok
    assert "the spec has 19 layers with weights, the source 16" in report.problems[0]
    assert any(p.startswith("ambiguous") for p in report.problems)
    missing = [r.target for r in report.rows if r.status == "missing"]
    assert len(missing) == 3 * 2  # three convs, weight and bias
    with pytest.raises(WeightMismatch, match="19 layers with weights, the source 16"):
        load_pretrained(_meta_module("vgg_e"), state, "torchvision")


def test_partial_load_only_when_asked(tmp_path, capsys):
    torch.manual_seed(0)
    small = archdsl.compile("cifar_resnet")  # n=3 into n=5: the extra blocks stay as they are
    target = archdsl.compile("cifar_resnet", n=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightMismatch):
        load_pretrained(target, small.state_dict(), input_shape=(3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched
    load_pretrained(target, small.state_dict(), input_shape=(3, 32, 32), strict=False)
    report = target.weight_map
    assert 0 < sum(r.status == "ok" for r in report.rows) < len(before)
    src, dst = tmp_path / "small.pt", tmp_path / "out.pt"
    torch.save(small.state_dict(), src)
    assert main(["convert", "cifar_resnet", "--set", "n=5", "--from", str(src), "--to", str(dst)]) == 2
    assert "do not fit" in capsys.readouterr().err and not dst.exists()
    assert main(["convert", "cifar_resnet", "--set", "n=5", "--from", str(src), "--to", str(dst),
                 "--partial"]) == 0
    assert dst.exists()


def test_resnet_v1_checkpoint_and_v1_5_spec():
    v1_state = _meta_state("resnet50")
    # A state dict holds no strides: the tensors fit either way ...
    report = map_weights(_meta_module("resnet50", v1_5=1), v1_state, (3, 224, 224), "auto")
    assert report.ok and any("was not checked" in n for n in report.notes)
    # ... but torchvision's and timm's ResNets are all v1.5: a v1 spec is refused for them.
    for source in ("torchvision", "timm"):
        report = map_weights(_meta_module("resnet50"), v1_state, (3, 224, 224), source)
        assert any("v1_5=1" in p for p in report.problems)
    # Given the source module, the strides are compared: v1 into v1.5 is found.
    report = map_weights(_meta_module("resnet50", v1_5=1), _meta_module("resnet50"), (3, 224, 224))
    assert len([p for p in report.problems if "stride" in p]) == 2 * 3  # 1x1 and 3x3 of stages 2-4


def test_unreadable_weights_file(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["convert", "cifar_resnet", "--from", str(bad), "--to", str(tmp_path / "o.pt")]) == 2
    assert "cannot read" in capsys.readouterr().err


# -- torchvision and timm ------------------------------------------------------------------------

ZOO = [
    ("vgg11", "vgg_a", {}), ("vgg13", "vgg_b", {}), ("vgg16", "vgg_d", {}), ("vgg19", "vgg_e", {}),
    ("vgg11_bn", "vgg_a_bn", {}), ("vgg13_bn", "vgg_b_bn", {}), ("vgg16_bn", "vgg_d_bn", {}),
    ("vgg19_bn", "vgg_e_bn", {}),
    ("resnet18", "resnet18", {}), ("resnet34", "resnet34", {}), ("resnet50", "resnet50", {"v1_5": 1}),
    ("resnet101", "resnet101", {"v1_5": 1}), ("resnet152", "resnet152", {"v1_5": 1}),
    ("resnext50_32x4d", "resnext50_32x4d", {}), ("wide_resnet50_2", "wide_resnet50_2", {}),
    ("alexnet", "alexnet_tv", {}), ("squeezenet1_0", "squeezenet", {}), ("densenet121", "densenet121", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("tv_name, spec, params", ZOO, ids=[z[0] for z in ZOO])
def test_torchvision_weights_give_torchvisions_outputs(tv_name, spec, params):
    torchvision = pytest.importorskip(
        "torchvision", reason="torchvision is not installed here; it runs in CI's torchvision environment")
    torch.manual_seed(0)
    reference = randomize(getattr(torchvision.models, tv_name)())
    graph = logits(spec, small=True, **params)  # torchvision's nets pool adaptively: any size runs
    assert graph.params == sum(p.numel() for p in reference.parameters())
    model = load_pretrained(graph, reference.state_dict(), source="torchvision").eval()
    x = torch.randn(2, *graph.input_shape.dims)
    with torch.no_grad():
        # flatten: SqueezeNet's pooled conv classifier gives N x C x 1 x 1 where torchvision flattens
        torch.testing.assert_close(model(x).flatten(1), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_timm_resnet50_weights_give_timms_outputs():
    timm = pytest.importorskip("timm", reason="timm is not installed here; it runs in CI's torchvision environment")
    torch.manual_seed(0)
    reference = randomize(timm.create_model("resnet50", pretrained=False))
    model = load_pretrained(logits("resnet50", small=True, v1_5=1), reference.state_dict(), source="timm").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(WeightMismatch, match="v1_5=1"):  # the published v1 spec does not take them
        load_pretrained(logits("resnet50"), reference.state_dict(), source="timm")
