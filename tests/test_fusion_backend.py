"""The triton backend end to end: the lowering of FUSED_CONV, the BN fold, state_dict
compatibility with the torch backend, the emitted source, the fallback notice, and the kernels
in whole (tiny) networks.

Most numerical checks run the triton backend's *fallback* path (``support.kernel_can_run``
patched to False: F.conv2d with the folded weight and bias): it exercises the graph rewrite,
the lowering, the fold and its cache at full speed. The kernel itself runs under Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU) only in the tiny
whole-network tests at the end; its per-layer accuracy is tests/test_kernel_conv.py's business.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fusion_passes import SPEC_NETS, fused, random_graphs

import archdsl
import archdsl.testing as at
from archdsl.codegen.fold import fold_bn
from archdsl.codegen.torch_source import class_name, emit_source
from archdsl.codegen.triton import runtime, support
from archdsl.ir import Op
from archdsl.ops import describe

NEEDS_KERNELS = "needs a CUDA device or TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU)"
needs_kernels = pytest.mark.skipif(not support.available(), reason=NEEDS_KERNELS)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters (the defaults make the fold a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    return module


@pytest.fixture
def no_kernel(monkeypatch):
    """The triton backend's PyTorch fallback (F.conv2d on folded weights), without the notice
    leaking between tests."""
    monkeypatch.setattr(runtime, "kernel_can_run", lambda x, w: False)
    monkeypatch.setattr(support, "_noticed", True)


@pytest.fixture
def torch_ops_only(no_kernel, monkeypatch):
    """Every triton-backend layer on its PyTorch path: the convs (as ``no_kernel``), and the
    pools and LRN as well, which otherwise run their kernels under the CPU interpreter (the
    kernels' own tests are tests/test_kernel_*.py)."""
    monkeypatch.setattr(support, "kernel_can_run", lambda x, w=None: False)


@pytest.fixture
def fresh_notice(monkeypatch):
    """A process in which the fallback notice has not been given yet."""
    monkeypatch.setattr(support, "_noticed", False)


def pair(spec, seed=0, **kwargs):
    """(torch-backend module, triton-backend module holding its weights), BN randomised.

    The triton backend's LRN layers are switched to their PyTorch path: under the interpreter
    the LRN kernel takes minutes on AlexNet, and it is tests/test_kernel_lrn.py's subject.
    """
    torch.manual_seed(seed)
    ref = randomise(archdsl.compile(spec, softmax=True, **kwargs), seed)
    tri = archdsl.compile(spec, backend="triton", softmax=True, **kwargs)
    tri.load_state_dict(ref.state_dict(), strict=True)
    for m in tri.modules():
        if type(m).__name__ == "LocalResponseNorm" and getattr(m, "backend", None) == "triton":
            m.backend = "torch"
    return ref, tri


def assert_close_logs(a, b, softmax: bool):
    # A softmax output squeezes differences; compare log-probabilities where there is one.
    if softmax:
        a, b = a.clamp_min(1e-30).log(), b.clamp_min(1e-30).log()
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def same_training_step(ref, tri, x, softmax=True, seed=1, kernels=None, every_grad=False):
    """Train-mode forward (dropout masks drawn alike), backward; outputs, gradients and the
    updated BN running statistics agree.

    ``kernels``: the ``kernels_only`` fixture's (install, remove), installed around the triton
    module's forward, so its convs must all run in the Triton kernel. ``every_grad``: every
    parameter gets a non-zero gradient (nothing between the loss and it is cut off).
    """
    install, remove = kernels or (lambda: None, lambda: None)
    ref.train(), tri.train()
    outs = []
    for m in (ref, tri):
        torch.manual_seed(seed)
        if m is tri:
            install()
        try:
            y = m(x)
        finally:
            remove()
        if y.requires_grad:  # a graph may have no parameters at all
            (y.clamp_min(1e-30).log() if softmax else y).square().mean().backward()
        outs.append(y)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    grads_ref = {k: p.grad for k, p in ref.named_parameters()}
    grads_tri = {k: p.grad for k, p in tri.named_parameters()}
    assert grads_ref.keys() == grads_tri.keys()
    for k in grads_ref:
        if every_grad:
            assert grads_tri[k] is not None and grads_tri[k].abs().sum() > 0, k
        torch.testing.assert_close(grads_tri[k], grads_ref[k], rtol=1e-3, atol=1e-5, msg=k)
    sd_ref, sd_tri = ref.state_dict(), tri.state_dict()
    for k in sd_ref:
        torch.testing.assert_close(sd_tri[k], sd_ref[k], rtol=1e-5, atol=1e-6, msg=k)


# --------------------------------------------------------------------------------------------
# random graphs and specs, lowered
# --------------------------------------------------------------------------------------------


# deadline=None and too_slow suppressed: both time the wall clock, which a busy machine stretches.
# function_scoped_fixture suppressed: no_kernel only patches module attributes, the same for every
# example, so that it is not reset between examples changes nothing.
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(random_graphs(), st.integers(0, 2**16))
def test_random_graphs_keep_their_function(no_kernel, g, seed):
    """Same weights: eval (folded BN) and training (batch statistics) forward agree, and so do
    gradients and the updated running statistics."""
    torch.manual_seed(seed)
    ref = randomise(archdsl.compile(g), seed)
    tri = archdsl.compile(g, backend="triton")
    tri.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, *g.input_shape.dims, generator=torch.Generator().manual_seed(seed))
    ref.eval(), tri.eval()
    with torch.no_grad():
        torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-4)
    same_training_step(ref, tri, x, softmax=False)


# The same settings, for the same reasons as above.
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(at.graphs(**SPEC_NETS), st.integers(0, 2**16))
def test_random_specs_keep_their_function(no_kernel, g, seed):
    torch.manual_seed(seed)
    ref = randomise(archdsl.compile(g), seed)
    tri = archdsl.compile(g, backend="triton")
    tri.load_state_dict(ref.state_dict(), strict=True)
    for m in tri.modules():  # see pair()
        if type(m).__name__ == "LocalResponseNorm" and getattr(m, "backend", None) == "triton":
            m.backend = "torch"
    x = torch.randn(3, *g.input_shape.dims, generator=torch.Generator().manual_seed(seed))
    ref.eval(), tri.eval()
    with torch.no_grad():
        torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-5)
    same_training_step(ref, tri, x, softmax=False)


# --------------------------------------------------------------------------------------------
# the fold, the lowering, state_dict compatibility
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_fold_bn_matches_conv_then_bn(bias, groups):
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias).double()
    bn = randomise(torch.nn.BatchNorm2d(6, eps=1e-3).double().eval(), 5)
    x = torch.randn(2, 4, 7, 7, generator=gen, dtype=torch.float64)
    w, b = fold_bn(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    want = bn(conv(x))
    got = torch.nn.functional.conv2d(x, w, b, padding=1, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # low precision weights are folded in float32, then rounded once
    w16, b16 = fold_bn(conv.weight.bfloat16(), None, bn.running_mean.float(), bn.running_var.float(),
                       bn.weight.float(), bn.bias.float(), bn.eps)
    assert w16.dtype == b16.dtype == torch.bfloat16
    w32, _ = fold_bn(conv.weight.bfloat16().float(), None, bn.running_mean.float(), bn.running_var.float(),
                     bn.weight.float(), bn.bias.float(), bn.eps)
    assert torch.equal(w16, w32.bfloat16())


def test_state_dicts_are_interchangeable():
    ref = archdsl.compile("cifar_resnet", n=1)
    tri = archdsl.compile("cifar_resnet", n=1, backend="triton")
    assert list(tri.state_dict()) == list(ref.state_dict())
    assert [(k, v.shape) for k, v in tri.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    tri.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(tri.state_dict(), strict=True)
    # the fused layers are the kernel's module, the BNs ordinary ones under their own names
    from archdsl.codegen.triton.conv import FusedConv2d
    assert isinstance(tri.conv1, FusedConv2d) and not tri.conv1.relu
    assert type(tri.bn1) is torch.nn.BatchNorm2d
    assert isinstance(archdsl.compile("alexnet", backend="triton").conv1, FusedConv2d)
    assert archdsl.compile("alexnet", backend="triton").conv1.relu


@pytest.mark.parametrize("spec,kwargs,batch", [
    ("cifar_resnet", {"n": 1}, 4),
    ("cifar_resnet", {"n": 3, "shortcut": "B"}, 2),
    ("alexnet", {"input": "3x67x67", "classes": 10}, 2),
    ("vgg_a", {"input": "3x32x32", "classes": 10}, 2),
])
def test_bundled_nets_keep_their_function(no_kernel, spec, kwargs, batch):
    ref, tri = pair(spec, **kwargs)
    x = torch.randn(batch, *tri_shape(spec, kwargs), generator=torch.Generator().manual_seed(1))
    ref.eval(), tri.eval()
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)
        assert_close_logs(ref(x), tri(x), softmax=True)  # a second call: from the fold cache
    # eval mode with autograd: folded on every call, differentiably
    y_ref, y_tri = ref(x), tri(x)
    assert_close_logs(y_ref, y_tri, softmax=True)
    y_ref.log().sum().backward()
    y_tri.log().sum().backward()
    for (k, p), q in zip(ref.named_parameters(), tri.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=k)
    ref.zero_grad(set_to_none=True), tri.zero_grad(set_to_none=True)
    same_training_step(ref, tri, x)


def tri_shape(spec, kwargs):
    return archdsl.load(spec, **kwargs).input_shape.dims


def test_the_fold_follows_new_weights_and_statistics(no_kernel):
    ref, tri = pair("cifar_resnet", n=1)
    x = torch.randn(2, 3, 32, 32)
    ref.eval(), tri.eval()
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)
        # in-place updates (the version counter moves)
        for m in (ref, tri):
            m.bn1.running_var.mul_(3.0)
            m.basic_stage1.basic1.conv1.weight.mul_(-1.0)
        assert_close_logs(ref(x), tri(x), softmax=True)
        # a new state dict
        other = randomise(archdsl.compile("cifar_resnet", n=1), seed=7)
        ref.load_state_dict(other.state_dict()), tri.load_state_dict(other.state_dict())
        assert_close_logs(ref(x), tri(x), softmax=True)
    # a training step updates the running statistics; eval afterwards uses the new ones
    same_training_step(ref, tri, x)
    ref.eval(), tri.eval()
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)
    # and inference_mode works (the cache must not hold inference tensors)
    with torch.inference_mode():
        assert_close_logs(ref(x), tri(x), softmax=True)
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)


def test_emitted_triton_source_runs_like_the_in_process_module(no_kernel, tmp_path):
    from archdsl.cli import main

    out = tmp_path / "net.py"
    assert main(["build", "cifar_resnet", "--set", "n=1", "--backend", "triton", "--softmax", "-o", str(out)]) == 0
    source = out.read_text()
    assert "from archdsl.codegen.triton.conv import FusedConv2d" in source
    assert "fused_conv(x, self.conv1, self.bn1, relu=True)" in source
    namespace = {}
    exec(compile(source, str(out), "exec"), namespace)
    emitted = namespace["CifarResnet"]()
    ref, tri = pair("cifar_resnet", n=1)
    emitted.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    for m in (ref, tri, emitted):
        m.eval()
    with torch.no_grad():
        assert torch.equal(emitted(x), tri(x))
        assert_close_logs(ref(x), emitted(x), softmax=True)
    # the torch backend's source of the fused graph is the unfused computation, op for op
    g = fused(archdsl.load("cifar_resnet", n=1))
    torch_source = emit_source(g, backend="torch")
    assert "torch.relu(self.bn1(self.conv1(x)))" in torch_source
    namespace = {}
    exec(compile(torch_source, "<torch>", "exec"), namespace)
    plain = namespace["CifarResnet"]()
    plain.load_state_dict(ref.state_dict(), strict=True)
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), ref(x))


def test_build_summary_shows_the_fused_graph(capsys, tmp_path):
    from archdsl.cli import main

    assert main(["build", "resnet18", "--backend", "triton", "-o", str(tmp_path / "r.py")]) == 0
    text = capsys.readouterr().out
    assert "conv+bn+relu 7x7/2 pad 3, 64 no-bias" in text
    assert "conv+bn+add+relu 3x3/1 pad 1, 64 no-bias" in text  # a block's second conv and its add
    assert "conv+bn 1x1/2 pad 0, 128 no-bias" in text  # a projection shortcut
    assert " bn " not in text and "layer1_bn" not in text
    assert "11,689,512" in text  # parameters unchanged by fusion
    assert "backend triton: fused 20 convs: 3 conv+bn, 8 conv+bn+add+relu, 9 conv+bn+relu; batch norm folded" in text
    assert " add " not in text
    assert main(["build", "resnet18", "-o", str(tmp_path / "t.py")]) == 0
    assert "conv+bn" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# the fallback notice
# --------------------------------------------------------------------------------------------


def _runtime_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "archdsl" in str(w.message)]


def test_without_a_device_the_triton_backend_runs_pytorch_ops_and_says_so_once(monkeypatch, fresh_notice):
    monkeypatch.setattr(support, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not support.available() and "no CUDA device" in support.unavailable_reason()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tri = archdsl.compile("cifar_resnet", n=1, backend="triton", softmax=True)
        tri2 = archdsl.compile("alexnet", backend="triton", input="3x67x67")
    notes = _runtime_warnings(record)
    assert len(notes) == 1, [str(w.message) for w in record]
    assert "falls back to PyTorch ops" in str(notes[0].message) and "no CUDA device" in str(notes[0].message)
    assert tri.backend == "torch" and tri.requested_backend == "triton" and "requested 'triton'" in repr(tri)
    assert type(tri.conv1) is torch.nn.Conv2d and type(tri2.conv1) is torch.nn.Conv2d
    assert type(tri2.lrn1) is torch.nn.LocalResponseNorm
    # not silently wrong either: same function as the torch backend
    ref = randomise(archdsl.compile("cifar_resnet", n=1, softmax=True))
    tri.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), tri.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)


def test_without_triton_the_backend_falls_back(monkeypatch, fresh_notice):
    monkeypatch.setattr(support, "_triton_importable", lambda: False)
    with pytest.warns(RuntimeWarning, match="triton package cannot be imported"):
        tri = archdsl.compile("cifar_resnet", n=1, backend="triton")
    assert tri.backend == "torch" and type(tri.conv1) is torch.nn.Conv2d


@needs_kernels
def test_inputs_the_kernel_does_not_take_fall_back_with_the_notice(fresh_notice):
    ref, tri = pair("cifar_resnet", n=1)
    ref, tri = ref.double().eval(), tri.double().eval()  # float64: no kernel takes it
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with torch.no_grad():
            got, want = tri(x), ref(x)
            tri(x)
    notes = _runtime_warnings(record)
    assert len(notes) == 1 and "does not take a torch.float64 input" in str(notes[0].message)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # once per process: a later fallback of another kind stays quiet
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        support.notice("another reason")
    assert not record


@needs_kernels
def test_the_kernels_running_gives_no_notice(fresh_notice):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tri = archdsl.compile("cifar_resnet", n=1, backend="triton")
    assert not _runtime_warnings(record) and tri.backend == "triton"


# --------------------------------------------------------------------------------------------
# the kernels in a whole (tiny) network
# --------------------------------------------------------------------------------------------

TINY = """net tiny : 3x8x8 {
    conv3-8 bias=false; bn
    residual { conv3-8 bias=false; bn; conv3-8 bias=false; bn }
    conv3-8/2 groups=2
    conv1-4 act=none
    gap; fc-5
}"""


@pytest.fixture
def kernels_only(monkeypatch):
    """Fail if any conv falls back to F.conv2d: the Triton kernel must do them all."""
    if not support.available():
        pytest.skip(NEEDS_KERNELS)
    real = torch.nn.functional.conv2d

    def forbidden(*args, **kwargs):
        raise AssertionError("a convolution fell back to F.conv2d")

    def install():
        monkeypatch.setattr(torch.nn.functional, "conv2d", forbidden)

    def remove():
        monkeypatch.setattr(torch.nn.functional, "conv2d", real)

    return install, remove


def test_triton_backend_agrees_with_torch_on_a_tiny_net(kernels_only, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 comparisons on a GPU
    install, remove = kernels_only
    device = "cuda" if torch.cuda.is_available() else "cpu"
    graph = archdsl.loads(TINY)
    f = fused(graph)
    assert [describe(d["op"], d["attrs"]).split(" ")[0] for _, d in f.ops() if d["op"] is Op.FUSED_CONV] == [
        "conv+bn+relu", "conv+bn+relu", "conv+bn+add+relu", "conv+relu"]
    torch.manual_seed(0)
    ref = randomise(archdsl.compile(graph)).to(device)
    tri = archdsl.compile(graph, backend="triton").to(device)
    tri.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    ref.eval(), tri.eval()
    with torch.no_grad():
        want = ref(x)
        install()
        got = tri(x)
        remove()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # training: kernel forward (BN on batch statistics in between), PyTorch gradients
    same_training_step(ref, tri, x, softmax=False, kernels=kernels_only)


# --------------------------------------------------------------------------------------------
# a max-pool fused into the conv's epilogue
# --------------------------------------------------------------------------------------------

POOLED = """net pooled : 3x10x10 {
    conv3-8; maxpool
    conv3-8 bias=false; bn; maxpool
    conv3-8 act=none; maxpool
    gap; fc-5
}"""


# A BN at the start of the second block commutes ahead of the first block's last ReLU, so the
# calls cannot be contracted and the graph is lowered flat; the first block's conv+bn fuses.
ACROSS_BLOCKS = """block b1() { conv1x1-4; batchnorm; conv1x1-4 }
block b2() { batchnorm; conv1x1-2 act=none }
net t : 3x8x8 { b1(); b2() }"""


def test_a_graph_lowered_flat_keeps_the_fused_batch_norms_name():
    """Found by test_random_specs_keep_their_function: lowered flat, the fused conv's BN was
    named as in its block (``bn1``) where every other layer has its node name (``b11_bn1``)."""
    g = archdsl.loads(ACROSS_BLOCKS)
    ref, tri = pair(g)
    assert "b11_bn1.weight" in ref.state_dict()  # flat: node names
    assert list(tri.state_dict()) == list(ref.state_dict())
    tri.load_state_dict(ref.state_dict(), strict=True)
    source = emit_source(fused(g), backend="triton")
    assert "self.b11_bn1 = nn.BatchNorm2d(4" in source and "self.bn1 " not in source


def test_pooled_convs_keep_the_state_dict_and_lower_to_pool_calls():
    f = fused(archdsl.loads(POOLED))
    assert [describe(d["op"], d["attrs"]).split(" ")[0] for _, d in f.ops() if d["op"] is Op.FUSED_CONV] == [
        "conv+relu+maxpool", "conv+bn+relu+maxpool", "conv+maxpool"]
    ref, tri = pair(archdsl.loads(POOLED))
    assert [(k, v.shape) for k, v in tri.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert not hasattr(tri, "pool1") and isinstance(ref.pool1, torch.nn.MaxPool2d)
    source = emit_source(f, backend="triton")
    assert "x = fused_conv(x, self.conv1, pool=True)" in source
    assert "x = fused_conv(x, self.conv2, self.bn1, relu=True, pool=True)" in source
    assert "F.max_pool2d(torch.relu(self.conv1(x)), 2)" in emit_source(f, backend="torch")


def test_pooled_fallback_is_the_torch_backend_bit_for_bit(no_kernel):
    # without a BN (nothing folded) the fallback runs exactly the torch backend's ops
    text = POOLED.replace("conv3-8 bias=false; bn; maxpool", "conv3-8; maxpool")
    ref, tri = pair(archdsl.loads(text))
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    ref.eval(), tri.eval()
    with torch.no_grad():
        assert torch.equal(tri(x), ref(x))
    assert torch.equal(tri(x), ref(x))  # with autograd
    ref.train(), tri.train()
    assert torch.equal(tri(x), ref(x))
    # with a BN: the fold, within rounding; training and gradients as the torch backend's
    ref, tri = pair(archdsl.loads(POOLED))
    ref.eval(), tri.eval()
    with torch.no_grad():
        torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-5)
    same_training_step(ref, tri, x)


def test_emitted_pooled_source_runs_like_the_in_process_module(no_kernel, tmp_path):
    from archdsl.cli import main

    spec, out = tmp_path / "pooled.arch", tmp_path / "pooled.py"
    spec.write_text(POOLED)
    assert main(["build", str(spec), "--backend", "triton", "-o", str(out)]) == 0
    source = out.read_text()
    assert source.count("pool=True") == 3 and "MaxPool2d" not in source
    namespace = {}
    exec(compile(source, str(out), "exec"), namespace)
    emitted = namespace["Pooled"]()
    ref, tri = pair(archdsl.loads(POOLED))
    emitted.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 10, 10)
    for m in (ref, tri, emitted):
        m.eval()
    with torch.no_grad():
        assert torch.equal(emitted(x), tri(x))
        torch.testing.assert_close(emitted(x), ref(x), rtol=1e-4, atol=1e-5)


def test_build_summary_counts_the_fused_pools(capsys, tmp_path):
    from archdsl.cli import main

    assert main(["build", "vgg_d", "--backend", "triton", "-o", str(tmp_path / "v.py")]) == 0
    text = capsys.readouterr().out
    assert ("backend triton: fused 13 convs: 8 conv+relu, 5 conv+relu+maxpool; "
            "5 max-pools (2x2/2) in the conv epilogue at inference") in text
    assert "conv+relu+maxpool 3x3/1 pad 1, 64" in text and "138,357,544" in text


@pytest.mark.parametrize("text", [
    "net tiny_pool : 3x8x8 { conv3-8; maxpool }",
    "net tiny_pool : 3x9x9 { conv3-8 bias=false; bn; maxpool; conv3-8 act=none; maxpool }",  # odd maps
], ids=["conv_relu_pool", "bn_and_odd_maps"])
def test_triton_backend_pools_in_the_kernel_and_agrees_with_torch(kernels_only, monkeypatch, text):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 comparisons on a GPU
    install, remove = kernels_only
    device = "cuda" if torch.cuda.is_available() else "cpu"
    graph = archdsl.loads(text)
    assert all(d["attrs"].get("pool") for _, d in fused(graph).ops() if d["op"] is Op.FUSED_CONV)
    torch.manual_seed(0)
    ref = randomise(archdsl.compile(graph)).to(device)
    tri = archdsl.compile(graph, backend="triton").to(device)
    tri.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, *graph.input_shape.dims, generator=torch.Generator().manual_seed(2)).to(device)
    real_pool = torch.nn.functional.max_pool2d

    def no_pool(*args, **kwargs):
        raise AssertionError("a fused pool ran as F.max_pool2d at inference")

    ref.eval(), tri.eval()
    with torch.no_grad():
        want = ref(x)
        install()
        monkeypatch.setattr(torch.nn.functional, "max_pool2d", no_pool)
        got = tri(x)
        monkeypatch.setattr(torch.nn.functional, "max_pool2d", real_pool)
        remove()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # training: the kernel's conv, then F.max_pool2d; gradients flow to every parameter
    same_training_step(ref, tri, x, softmax=False, kernels=kernels_only, every_grad=True)


@pytest.mark.parametrize("name", [s.name for s in archdsl.list_specs()])
def test_every_bundled_specs_triton_source_is_the_in_process_module(torch_ops_only, name):
    """The emitted triton source of each bundled net (fused convs, fused pools, LRN) runs what
    the in-process module runs, bit for bit, on the fallback path; at a small input, to stay
    cheap (vgg_a_lrn's LRN kernel alone took 30 s under the interpreter)."""
    graph = archdsl.load(name, input="3x64x64")
    lowered = fused(graph)
    source = emit_source(lowered, backend="triton")
    namespace = {}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    emitted = namespace[class_name(graph.name)]()
    module = randomise(archdsl.compile(graph, backend="triton", softmax=True))
    assert [(k, v.shape) for k, v in emitted.state_dict().items()] == \
           [(k, v.shape) for k, v in module.state_dict().items()]
    emitted.load_state_dict(module.state_dict())
    module.eval(), emitted.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(emitted(x), module(x))


@pytest.mark.parametrize("name", [s.name for s in archdsl.list_specs()])
def test_every_backend_gives_a_bundled_spec_the_same_state_dict_keys(name):
    # A fusion never takes a layer with state out of its block call (a pre-activation net's
    # final BN stays at the top, not inside the last block's conv), so a state dict moves
    # between backends unchanged.
    graph = archdsl.load(name)
    with torch.device("meta"):
        keys = {backend: list(archdsl.compile(graph, backend=backend).state_dict()) for backend in ("torch", "triton")}
    assert keys["triton"] == keys["torch"]
