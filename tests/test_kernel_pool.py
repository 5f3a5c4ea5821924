"""Max pooling in Triton: the conv kernel's pooled epilogue and the standalone pool kernel,
against PyTorch in float64 (under Triton's CPU interpreter without a GPU, so shapes are tiny).

A max selects one of its inputs, so the pooled results are exactly the unpooled kernel's
values: the tolerances are the conv's (tests/test_kernel_conv.py), and the pool kernel alone
is compared exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archdsl.codegen.triton import conv, pool

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _ieee_fp32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _rand(gen, *shape, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=DEVICE, dtype=dtype)


# (batch, c_in, c_out, h, w, k, stride, padding): conv output sizes even, odd, 2 and 3
POOL_CASES = {
    "even_map": (2, 16, 16, 6, 8, 3, 1, 1),
    "odd_map": (1, 16, 20, 7, 5, 3, 1, 1),  # a last row and column the pool drops
    "two_by_two": (1, 32, 16, 2, 2, 1, 1, 0),  # one quad
    "strided_odd": (2, 20, 16, 9, 11, 3, 2, 1),  # 5x6 conv output
    "multi_tile": (2, 16, 24, 12, 10, 3, 1, 1),  # 60 quads: several M tiles, two N tiles
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("small_c", [False, True], ids=["fused", "small_c_then_pool"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_conv_with_pool_matches_conv_relu_then_max_pool(case, small_c, dtype):
    batch, c_in, c_out, h, w, k, stride, padding = POOL_CASES[case]
    gen = torch.Generator().manual_seed(list(POOL_CASES).index(case))
    x = _rand(gen, batch, c_in, h, w, dtype=dtype)
    wt = _rand(gen, c_out, c_in, k, k, dtype=dtype, scale=(c_in * k * k) ** -0.5)
    b = _rand(gen, c_out, dtype=dtype)
    ref = F.max_pool2d(torch.relu(F.conv2d(x.cpu().double(), wt.cpu().double(), b.cpu().double(), stride,
                                           padding)), 2)
    out = torch.full(ref.shape, float("nan"), device=DEVICE, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    y = conv._forward(x, wt, b, stride, padding, 1, True, out=out, small_c=small_c, pool=True)
    assert y is out and y.shape == ref.shape
    y = y.cpu().double()
    assert not torch.isnan(y).any()
    rel = float((y - ref).norm() / ref.norm())
    assert rel <= TOL[dtype], rel


def test_pool_flag_of_the_public_function_and_its_limits():
    gen = torch.Generator().manual_seed(3)
    x = _rand(gen, 1, 16, 5, 5, dtype=torch.float32)
    wt = _rand(gen, 16, 16, 3, 3, dtype=torch.float32, scale=0.1)
    with torch.no_grad():
        y = conv.conv2d(x, wt, None, 1, 1, relu=False, pool=True)
    ref = F.max_pool2d(F.conv2d(x.double(), wt.double(), None, 1, 1), 2)
    assert y.shape == (1, 16, 2, 2) and torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-6)
    assert (y < 0).any()  # no ReLU asked, none applied
    with pytest.raises(ValueError, match="inference only"):
        conv.conv2d(x, wt.requires_grad_(True), pool=True)
    with pytest.raises(ValueError, match="no residual"):
        conv._forward(x, wt.detach(), None, 1, 1, residual=torch.zeros(1, 16, 5, 5), pool=True)
    with pytest.raises(ValueError, match="does not fit"):
        conv._forward(x[:, :, :1], wt.detach(), None, 1, 0, pool=True)


# (shape, kernel, stride, padding): VGG's 2x2/2, AlexNet's overlapping 3x3/2, ResNet's 3x3/2 pad 1
POOLS = [
    ((2, 20, 8, 8), 2, 2, 0),
    ((1, 24, 7, 9), 2, 2, 0),
    ((2, 16, 13, 13), 3, 2, 0),
    ((1, 40, 9, 6), 3, 2, 1),
    ((1, 3, 5, 5), (3, 1), (1, 2), (1, 0)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw_in", "nhwc_in"])
@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS, ids=[str(i) for i in range(len(POOLS))])
def test_max_pool_matches_pytorch_exactly(shape, kernel, stride, padding, channels_last, dtype):
    x = _rand(torch.Generator().manual_seed(1), *shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = pool.max_pool2d(x, kernel, stride, padding)
    ref = F.max_pool2d(x.cpu().float(), kernel, stride, padding).to(dtype)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.cpu(), ref)


def test_max_pool_rejects_what_it_cannot_do():
    x = torch.zeros(1, 4, 6, 6, device=DEVICE)
    with pytest.raises(ValueError, match="not a valid pool"):
        pool.max_pool2d(x, 2, 2, 2)
    with pytest.raises(TypeError, match="does not take"):
        pool.max_pool2d(x.double(), 2)
    with pytest.raises(ValueError, match="does not fit"):
        pool.max_pool2d(x[:, :, :1], 2)
