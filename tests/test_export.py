"""`archdsl export`: every bundled spec as ONNX (run in onnxruntime, compared with the PyTorch
module) and as a torch.export program; names from the spec; trained weights; the dense form
with a dynamic size. Parameterised over `archdsl list`."""

import warnings

import pytest
import torch

import archdsl
from archdsl.cli import main
from archdsl.errors import SpecError
from archdsl.export import ExportError, check_onnx, prepare, to_onnx, to_pt2, trace

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install 'archdsl[export]')")
pytest.importorskip("onnxscript", reason="torch.onnx needs onnxscript (pip install 'archdsl[export]')")
ort = pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install 'archdsl[export]')")

SPECS = [s.name for s in archdsl.list_specs()]
SMALL = "3x64x64"


def _graph(name):
    """The spec at a small input where it takes one (its fc layers then follow the smaller map):
    the same statements and ops, at a fraction of the time; else at its own input."""
    try:
        return archdsl.load(name, input=SMALL)
    except SpecError:
        return archdsl.load(name)


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        yield


@pytest.mark.slow
@pytest.mark.parametrize("name", SPECS)
def test_every_bundled_spec_exports_to_onnx_and_pt2(name):
    torch.manual_seed(0)
    module, example, dynamic = prepare(_graph(name), batch=2)
    program = trace(module, example, dynamic)
    data = to_onnx(program)
    model = onnx.load_from_string(data)
    # The spec's names: initializers are the state dict's keys, with its exact tensors.
    state = module.state_dict()
    inits = {t.name: t for t in model.graph.initializer}
    params = dict(module.named_parameters())
    assert set(params) <= set(inits)
    key = next(iter(params))
    assert torch.equal(torch.from_numpy(onnx.numpy_helper.to_array(inits[key]).copy()), state[key])
    weighted = {key.rsplit(".", 1)[0] for key in params}  # each gives at least one node of its name
    assert weighted <= {node.name.split("/")[0] for node in model.graph.node}
    # activations and additions are named after their module too (basic_stage1.basic1.relu2), not the
    # op (a Concat of the exporter's own shape arithmetic has no module, so concats are not counted)
    paths = set(module.paths.values())
    named = [n.name.split("/")[0] for n in model.graph.node if n.op_type in ("Relu", "Add")]
    assert named and all(name in paths for name in named), sorted(set(named) - paths)[:5]
    # onnxruntime agrees with PyTorch, at the traced batch and at another (the batch is dynamic).
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch in (2, 3):
        x = torch.randn(batch, *example.shape[1:])
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = module(x)
        _close(torch.from_numpy(got), want)
    # The torch.export program saves, loads and runs as the module does.
    loaded = torch.export.load(__import__("io").BytesIO(to_pt2(program)))
    with torch.no_grad():
        _close(loaded.module()(example), module(example))


def test_dense_form_has_a_dynamic_size(tmp_path):
    torch.manual_seed(0)
    module, example, dynamic = prepare("cifar_resnet", dense=True)
    program = trace(module, example, dynamic)
    session = ort.InferenceSession(to_onnx(program), providers=["CPUExecutionProvider"])
    loaded = torch.export.load(__import__("io").BytesIO(to_pt2(program))).module()
    for size in ((36, 36), (48, 60)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            want = module(x)
            _close(loaded(x), want)
        assert want.shape[2:] != (1, 1)  # a score map, not one score per image
        (got,) = session.run(None, {"input": x.numpy()})
        _close(torch.from_numpy(got), want)


def test_trained_weights_are_exported(tmp_path):
    torch.manual_seed(0)
    trained = archdsl.compile("cifar_resnet")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    weights = tmp_path / "w.pt"
    torch.save(trained.state_dict(), weights)
    out = tmp_path / "net.onnx"
    assert main(["export", "cifar_resnet", "--weights", str(weights), "--onnx", str(out), "--check"]) == 0
    model = onnx.load(str(out))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for key, value in trained.state_dict().items():
        if key in inits:
            assert torch.equal(torch.from_numpy(inits[key].copy()), value), key
    x = torch.randn(2, 3, 32, 32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    _close(torch.from_numpy(got), trained.eval()(x).detach())


def test_weights_that_do_not_fit_are_an_error(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(archdsl.compile("cifar_plain", n=5).state_dict(), weights)
    out = tmp_path / "net.onnx"
    assert main(["export", "cifar_resnet", "--weights", str(weights), "--onnx", str(out)]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ExportError, match="no weights file"):
        prepare("cifar_resnet", weights=tmp_path / "missing.pt")


def test_export_needs_an_output(capsys):
    assert main(["export", "cifar_resnet"]) == 2
    assert "--onnx" in capsys.readouterr().err


def test_check_compares_with_the_module():
    module, example, dynamic = prepare("cifar_resnet")
    data = to_onnx(trace(module, example, dynamic))
    assert check_onnx(data, module, example) < 1e-4
    with torch.no_grad():  # a different module: the check sees it
        next(module.parameters()).add_(1.0)
    assert check_onnx(data, module, example) > 1e-4
