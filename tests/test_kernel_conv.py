"""The fused Triton convolution (archdsl.codegen.triton.conv) against F.conv2d in float64.

Without a GPU these run under Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which is slow: shapes are tiny and the kernels use one small tile config.

Tolerances (relative Frobenius error of the output, plus an element-wise bound):
  * float32: the interpreter's dot is exact fp32 with fp32 accumulation, so the only error is
    fp32 rounding (~1e-7); 1e-5 leaves room. On a GPU the fixture below turns TF32 off so
    the same bound holds.
  * float16: inputs are rounded to fp16 *before* the float64 reference is computed, so the
    reference sees exactly the kernel's operands. What is left is fp32 accumulation (~1e-7)
    and rounding the output to fp16 (up to 2**-11 ~ 4.9e-4 relative per element): 2e-3.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archdsl.codegen.triton import conv, conv_check, conv_tuning

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _ieee_fp32(monkeypatch):
    """fp32 tests compare at fp32 accuracy: no TF32 in the kernel (it follows cuDNN's flag)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _rand(gen, *shape, dtype, scale=1.0):
    # Fresh random values (never zeros), drawn on the CPU so every device sees the same ones.
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=DEVICE, dtype=dtype)


def _problem(
    batch, c_in, c_out, h, w, k, groups, *, dtype, bias=True, residual=False, stride=1, padding=0, seed=0
):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = _rand(gen, batch, c_in, h, w, dtype=dtype)
    fan_in = c_in // groups * kh * kw
    wt = _rand(gen, c_out, c_in // groups, kh, kw, dtype=dtype, scale=fan_in**-0.5)
    b = _rand(gen, c_out, dtype=dtype) if bias else None
    r = None
    if residual:
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        out_shape = (batch, c_out, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        r = _rand(gen, *out_shape, dtype=dtype)
    return x, wt, b, r


def _reference(x, wt, b, stride, padding, groups, relu, residual):
    """The fused op in float64 on the CPU, from the (already rounded) operands."""
    d = lambda t: None if t is None else t.detach().to("cpu", torch.float64)  # noqa: E731
    y = F.conv2d(d(x), d(wt), d(b), stride, padding, 1, groups)
    if residual is not None:
        y = y + d(residual)
    return torch.relu(y) if relu else y


def _assert_close(y, ref, dtype):
    assert y.shape == ref.shape, (y.shape, ref.shape)
    y = y.detach().to("cpu", torch.float64)
    assert not torch.isnan(y).any(), f"{int(torch.isnan(y).sum())} output elements NaN (unwritten?)"
    tol = TOL[dtype]
    rel = float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    assert rel <= tol, f"relative error {rel:.3e} > {tol:.0e}"
    atol = tol * float(ref.abs().max().clamp_min(1.0))
    bad = (y - ref).abs() > atol + tol * ref.abs()
    assert not bad.any(), f"{int(bad.sum())} elements off; max abs error {float((y - ref).abs().max()):.3e}"


def _poisoned(shape, dtype):
    """An output buffer full of NaN: any element the kernel fails to write stays NaN."""
    return torch.full(shape, float("nan"), device=DEVICE, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )


# (batch, c_in, c_out, h, w, kernel, stride, padding, groups, bias, residual, relu)
CASES = {
    "1x1_s1": (2, 8, 6, 5, 7, 1, 1, 0, 1, True, False, True),
    "1x1_s2": (1, 6, 8, 9, 9, 1, 2, 0, 1, False, True, False),
    "3x3_p1_s1": (2, 4, 8, 5, 7, 3, 1, 1, 1, True, True, True),
    "3x3_p1_s2": (1, 8, 6, 9, 9, 3, 2, 1, 1, True, False, False),
    "5x5_p2": (1, 6, 8, 9, 7, 5, 1, 2, 1, False, False, True),
    "7x7_s2_p3": (1, 3, 8, 11, 13, 7, 2, 3, 1, True, False, True),
    "11x11_s4_p2": (1, 3, 8, 19, 19, 11, 4, 2, 1, True, False, True),
    "groups2": (2, 8, 6, 7, 5, 3, 1, 1, 2, True, True, True),
    "groups3_s2": (1, 6, 9, 9, 7, 3, 2, 1, 3, False, False, True),
    "cin3_odd": (2, 3, 4, 7, 9, 3, 1, 1, 1, True, False, False),
    # More than one channel block per tap and more than one N tile (interpreter tile: 32x16x16).
    "wide_3x3": (1, 20, 24, 5, 5, 3, 1, 1, 1, True, True, True),
    "wide_groups2": (1, 36, 40, 5, 3, 3, 2, 1, 2, True, False, True),
    # Non-square kernel, stride and padding, on the general kernel's K walk.
    "rect_3x5_s21_p12": (1, 16, 8, 7, 8, (3, 5), (2, 1), (1, 2), 1, True, True, True),
    # A 5x5 kernel on a 2x3 image: every window is mostly padding.
    "all_padding_edge": (1, 4, 4, 2, 3, 5, 1, 2, 1, True, False, False),
    # Whole channel blocks and N tiles (the interpreter tile is 32x16x16): the general
    # kernel's loads without channel or column masks, alone and each with the other's mask.
    "even_k_even_n": (1, 32, 32, 5, 6, 3, 1, 1, 1, True, True, True),
    "even_k_odd_n": (2, 16, 20, 6, 5, 3, 2, 1, 1, True, False, True),
    "odd_k_even_n": (1, 20, 16, 5, 5, 3, 1, 1, 1, False, True, True),
    "even_1x1_groups2": (1, 32, 32, 3, 5, 1, 1, 0, 2, True, True, False),
    # 49 taps: more than one word of padding bits, so the loop compares coordinates.
    "7x7_even_k": (1, 16, 16, 9, 8, 7, 1, 3, 1, True, False, True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("small_c", [False, True], ids=["general", "small_c"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_f_conv2d(case, small_c, dtype):
    batch, c_in, c_out, h, w, k, stride, padding, groups, bias, residual, relu = CASES[case]
    x, wt, b, r = _problem(
        batch, c_in, c_out, h, w, k, groups, dtype=dtype, bias=bias, residual=residual,
        stride=stride, padding=padding, seed=list(CASES).index(case),
    )  # fmt: skip
    ref = _reference(x, wt, b, stride, padding, groups, relu, r)
    out = _poisoned(ref.shape, dtype)
    y = conv._forward(x, wt, b, stride, padding, groups, relu, r, out=out, small_c=small_c)
    assert y is out
    _assert_close(y, ref, dtype)


@pytest.mark.parametrize("small_c", [False, True], ids=["general", "small_c"])
@pytest.mark.parametrize("index_64", [False, True], ids=["int32", "int64"])
def test_offset_widths_give_the_same_result(index_64, small_c):
    """Both offset widths compute the same thing (past 2**31 only int64 is right: the GPU test
    below; the launch picks int64 only there, which the test after this one checks)."""
    x, wt, b, r = _problem(2, 16, 16, 7, 6, 3, 1, dtype=torch.float32, residual=True, padding=1, seed=11)
    ref = _reference(x, wt, b, 1, 1, 1, True, r)
    y = conv._forward(x, wt, b, 1, 1, 1, True, r, out=_poisoned(ref.shape, torch.float32), small_c=small_c,
                      index_64=index_64)
    _assert_close(y, ref, torch.float32)


def test_launch_picks_int64_offsets_only_past_2_31():
    def flags(n, c, hw, k=3):
        x = torch.empty(n, c, hw, hw, device="meta").to(memory_format=torch.channels_last)
        w = conv.pack_weight(torch.empty(c, c, k, k, device="meta"))
        y = torch.empty(n, c, hw - k + 1, hw - k + 1, device="meta").to(memory_format=torch.channels_last)
        return conv.launch_args(x, w, None, None, y, (k, k), (1, 1), (0, 0), 1, False)[3]

    assert flags(64, 64, 224)["INDEX_64"] is False  # 2.06e8 elements
    assert flags(64, 256, 1024)["INDEX_64"] is True  # 1.7e10 elements
    # 2**31 - 1 is the last offset int32 holds: an input of exactly 2**31 elements needs int64.
    assert flags(1, 2**13, 2**9)["INDEX_64"] is True
    assert flags(1, 2**13, 2**9 - 1)["INDEX_64"] is False
    assert flags(2, 8, 8)["KH"] == 3 and "C_IN" not in flags(2, 16, 8)
    assert flags(2, 3, 8)["C_IN"] == 3  # the small-C kernel divides by a constant


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_epilogue_combinations(bias, residual, relu):
    x, wt, b, r = _problem(
        2, 6, 8, 5, 5, 3, 1, dtype=torch.float32, bias=bias, residual=residual, padding=1, seed=7
    )
    y = conv.conv2d(x, wt, b, padding=1, relu=relu, residual=r)
    _assert_close(y, _reference(x, wt, b, 1, 1, 1, relu, r), torch.float32)
    if relu:
        assert (y >= 0).all()
    else:
        assert (y < 0).any()  # the ReLU really is off


def test_public_api_layouts_and_pairs():
    """NCHW input, non-contiguous residual, (h, w) stride/padding, a non-square kernel."""
    x, wt, b, _ = _problem(2, 6, 8, 7, 9, (3, 5), 2, dtype=torch.float32, seed=3)
    stride, padding = (1, 2), (2, 1)
    ref_shape = _reference(x, wt, b, stride, padding, 2, False, None).shape
    r = _rand(torch.Generator().manual_seed(4), *ref_shape, dtype=torch.float32)
    r_strided = r.transpose(2, 3).contiguous().transpose(2, 3)  # same values, odd layout
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    y = conv.conv2d(x, wt, b, stride=stride, padding=padding, groups=2, relu=True, residual=r_strided)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == x.dtype and y.device == x.device
    _assert_close(y, _reference(x, wt, b, stride, padding, 2, True, r), torch.float32)


def test_conv2d_relu_and_output_layout():
    x, wt, b, _ = _problem(1, 3, 16, 9, 9, 3, 1, dtype=torch.float16, seed=5)
    y = conv.conv2d_relu(x.contiguous(memory_format=torch.channels_last), wt, b, 2, 1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _assert_close(y, _reference(x, wt, b, 2, 1, 1, True, None), torch.float16)


def test_kernel_selection_by_channels():
    assert conv_tuning.uses_small_c_kernel(3)
    assert conv_tuning.uses_small_c_kernel(conv_tuning.SMALL_C_MAX - 1)
    assert not conv_tuning.uses_small_c_kernel(conv_tuning.SMALL_C_MAX)
    assert not conv_tuning.uses_small_c_kernel(64)


def test_pack_weight_layout():
    w = torch.randn(6, 4, 3, 2)  # C_out=6, groups=2 -> C_in_g=4, C_out_g=3
    p = conv.pack_weight(w, groups=2)
    assert p.shape == (2, 3 * 2 * 4, 3) and p.is_contiguous()
    g, r, s, c, o = 1, 2, 1, 3, 2
    assert p[g, (r * 2 + s) * 4 + c, o] == w[g * 3 + o, c, r, s]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pack_weight_stores_fp32_k_contiguous_for_the_general_kernel(dtype):
    w = torch.randn(6, 16, 3, 2).to(dtype)  # C_in_g = 16: the general kernel
    p = conv.pack_weight(w, groups=2)
    assert p.shape == (2, 3 * 2 * 16, 3)
    if dtype == torch.float32:  # K contiguous, for TF32 wgmma's K-major B operand
        assert p.stride() == (3 * 96, 1, 96)
    else:
        assert p.is_contiguous()
    g, r, s, c, o = 1, 2, 1, 13, 2
    assert p[g, (r * 2 + s) * 16 + c, o] == w[g * 3 + o, c, r, s]


# The small-C kernel on first layers: (batch, c_in, c_out, h, w, kernel, stride, padding, groups).
# Odd image sizes and output counts that fill neither the M nor the N tile, so the row and
# column masks and the copy's zero border are all exercised.
STEMS = {
    "vgg_3x3_s1": (2, 3, 24, 9, 7, 3, 1, 1, 1),
    "alexnet_11x11_s4": (1, 3, 20, 23, 21, 11, 4, 2, 1),
    "resnet_7x7_s2": (2, 3, 20, 13, 11, 7, 2, 3, 1),
    "gray_5x5_p2": (1, 1, 8, 6, 9, 5, 1, 2, 1),
    "c6_to_8_s2": (1, 6, 12, 7, 5, 3, 2, 1, 1),
    "c12_to_16": (1, 12, 8, 5, 6, (3, 2), 1, (0, 1), 1),
    "groups2_c3": (1, 6, 10, 7, 6, 3, 1, 1, 2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(STEMS))
def test_stem_kernel_matches_f_conv2d(case, dtype):
    batch, c_in, c_out, h, w, k, stride, padding, groups = STEMS[case]
    assert conv_tuning.uses_small_c_kernel(c_in // groups)
    x, wt, b, r = _problem(batch, c_in, c_out, h, w, k, groups, dtype=dtype, residual=True, stride=stride,
                           padding=padding, seed=list(STEMS).index(case))
    ref = _reference(x, wt, b, stride, padding, groups, True, r)
    y = conv._forward(x, wt, b, stride, padding, groups, True, r, out=_poisoned(ref.shape, dtype))
    _assert_close(y, ref, dtype)
    # Through the module too: its launch cache makes the stem copy on every call.
    fused = conv.FusedConv2d(c_in, c_out, k, stride, padding, groups, relu=True).to(DEVICE, dtype)
    with torch.no_grad():
        fused.weight.copy_(wt), fused.bias.copy_(b)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for _ in range(2):
            _assert_close(fused(x_cl, r), ref, dtype)


def test_stem_copy_and_padded_weight_layout():
    x = torch.randn(2, 6, 3, 5)  # groups 2 -> 3 channels each, padded to 4
    copy = conv.stem_input(x, 2, (1, 2))
    assert copy.shape == (2, 8, 5, 9) and copy.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(copy[:, [0, 1, 2, 4, 5, 6], 1:4, 2:7], x)
    assert not copy[:, [3, 7]].any()  # the padded channels
    inner = torch.zeros_like(copy, dtype=torch.bool)
    inner[:, :, 1:4, 2:7] = True
    assert not copy[~inner].any()  # the border
    w = torch.randn(10, 3, 2, 3)  # groups 2: C_out_g = 5
    p = conv.pack_weight(w, groups=2)
    assert p.shape == (2, 2 * 3 * 4, 5) and p.is_contiguous()
    g, r, s_, c, o = 1, 1, 2, 2, 4
    assert p[g, (r * 3 + s_) * 4 + c, o] == w[g * 5 + o, c, r, s_]
    assert not p[:, 3::4].any()  # channel 3 of every tap: zero
    assert conv_tuning.stem_channels(3) == 4 and conv_tuning.stem_channels(1) == 4
    assert conv_tuning.stem_channels(5) == 8 and conv_tuning.stem_channels(12) == 16
    with pytest.raises(ValueError, match="packed with 4 input channels"):
        xm = torch.empty(1, 3, 8, 8, device="meta").to(memory_format=torch.channels_last)
        y = torch.empty(1, 8, 6, 6, device="meta").to(memory_format=torch.channels_last)
        conv.launch_args(xm, conv.pack_weight(torch.empty(8, 3, 3, 3, device="meta"), small_c=False),
                         None, None, y, (3, 3), (1, 1), (0, 0), 1, False, small_c=True)


def test_stem_tiles_whole_taps_and_channel_runs():
    """K blocks of several taps (BLOCK_K > C_PAD), of one tap (=) and of part of a tap's
    channels (BLOCK_K < C_PAD: 16 of 32 padded channels), with several M and N tiles."""
    configs = [_config(16, 16, 16, 4, 1, group_size_m=3), _config(32, 16, 64, 4, 1, group_size_m=2)]
    for c_in, k, stride, padding in [(3, 7, 2, 3), (3, 11, 4, 2), (4, 3, 1, 1), (20, 3, 1, 1)]:
        results = conv_check.validate_configs(2, c_in, 24, 13, 11, k, stride=stride, padding=padding,
                                              configs=configs, small_c=True, dtype=torch.float32, device=DEVICE)
        assert [r.ok for r in results] == [True, True], results


def test_tile_configs_on_multi_tile_shapes():
    """Several tiles in M, N and K, with partial swizzle bands, for both kernels."""
    configs = [
        triton.Config(
            {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_SIZE_M": 3}, num_warps=4, num_stages=1
        ),
        triton.Config(
            {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_SIZE_M": 1}, num_warps=4, num_stages=1
        ),
    ]
    for small_c in (False, True):
        results = conv_check.validate_configs(
            2, 20, 40, 7, 5, 3, stride=1, padding=1, groups=1, configs=configs, small_c=small_c,
            dtype=torch.float32, device=DEVICE,
        )  # fmt: skip
        assert len(results) == len(configs)
        for res in results:
            assert res.ok and math.isfinite(res.rel_err), res


def test_empty_batch():
    x, wt, b, _ = _problem(1, 4, 8, 5, 5, 3, 1, dtype=torch.float32)
    y = conv.conv2d(x[:0], wt, b, padding=1)
    assert y.shape == (0, 8, 5, 5)


def test_autograd_matches_float64():
    x, wt, b, r = _problem(
        2, 6, 8, 7, 5, 3, 2, dtype=torch.float32, residual=True, stride=2, padding=1, seed=11
    )
    leaves = [t.clone().requires_grad_() for t in (x, wt, b, r)]
    y = conv.conv2d(
        leaves[0], leaves[1], leaves[2], stride=2, padding=1, groups=2, relu=True, residual=leaves[3]
    )
    grad_out = _rand(torch.Generator().manual_seed(12), *y.shape, dtype=torch.float32)
    y.backward(grad_out)

    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in (x, wt, b, r)]
    xr, wr, br, rr = ref_leaves
    y_ref = torch.relu(F.conv2d(xr, wr, br, 2, 1, 1, 2) + rr)
    y_ref.backward(grad_out.double().cpu())

    _assert_close(y, y_ref.detach(), torch.float32)
    for name, got, want in zip(("x", "weight", "bias", "residual"), leaves, ref_leaves, strict=True):
        assert got.grad is not None, name
        g, w_ = got.grad.double().cpu(), want.grad
        rel = float((g - w_).norm() / w_.norm())
        assert rel < 1e-5, f"grad of {name}: relative error {rel:.2e}"


def test_autograd_without_bias_or_relu():
    x, wt, _, _ = _problem(1, 4, 4, 5, 5, 1, 1, dtype=torch.float32, bias=False, seed=13)
    xg, wg = x.clone().requires_grad_(), wt.clone().requires_grad_()
    conv.conv2d(xg, wg).sum().backward()
    xr, wr = x.double().cpu().requires_grad_(), wt.double().cpu().requires_grad_()
    F.conv2d(xr, wr).sum().backward()
    assert torch.allclose(xg.grad.double().cpu(), xr.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(wg.grad.double().cpu(), wr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda x, w: (x[0], w, {}), ValueError, "x must be 4-D"),
        (lambda x, w: (x, w[0], {}), ValueError, "weight must be 4-D"),
        (lambda x, w: (x, w.half(), {}), TypeError, "weight dtype"),
        (lambda x, w: (x.double(), w.double(), {}), TypeError, "not supported"),
        (lambda x, w: (x, w, {"groups": 4}), ValueError, "not divisible by groups"),
        (lambda x, w: (x, w[:, :2], {}), ValueError, "expects 2 input channels"),
        (lambda x, w: (x, w[:5], {"groups": 2}), ValueError, r"output channels \(5\)"),
        (lambda x, w: (x, w, {"bias": torch.zeros(3, device=x.device)}), ValueError, "bias must have shape"),
        (
            lambda x, w: (x, w, {"bias": torch.zeros(8, device=x.device, dtype=torch.float16)}),
            TypeError,
            "bias dtype",
        ),
        (
            lambda x, w: (x, w, {"residual": torch.zeros(1, 8, 4, 4, device=x.device)}),
            ValueError,
            "residual must have",
        ),
        (lambda x, w: (x, w, {"stride": 0}), ValueError, "stride must be >= 1"),
        (lambda x, w: (x, w, {"padding": -1}), ValueError, "padding must be >= 0"),
        (lambda x, w: (x, w, {"stride": (1, 2, 3)}), TypeError, "pair of ints"),
        (lambda x, w: (x, w, {"groups": 0}), ValueError, "groups must be a positive int"),
        (lambda x, w: (x[:, :, :2, :2], w, {}), ValueError, "does not fit"),
    ],
)
def test_bad_inputs_raise(make, error, match):
    x, wt, _, _ = _problem(1, 6, 8, 5, 5, 3, 1, dtype=torch.float32, bias=False)
    x, wt, kwargs = make(x, wt)
    with pytest.raises(error, match=match):
        conv.conv2d(x, wt, **kwargs)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's own limitation")
def test_bfloat16_under_interpreter_is_refused():
    x, wt, _, _ = _problem(1, 4, 4, 5, 5, 3, 1, dtype=torch.float32, bias=False)
    with pytest.raises(TypeError, match="interpreter"):
        conv.conv2d(x.bfloat16(), wt.bfloat16())


def test_fused_module_loads_conv2d_state_dict():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2).to(DEVICE)
    fused = conv.FusedConv2d(6, 8, 3, stride=2, padding=1, groups=2, relu=True).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    assert set(fused.state_dict()) == {"weight", "bias"}
    assert (fused.stride, fused.padding, fused.groups, fused.relu) == ((2, 2), (1, 1), 2, True)
    x = _rand(torch.Generator().manual_seed(1), 2, 6, 9, 7, dtype=torch.float32)
    with torch.no_grad():
        y = fused(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        _assert_close(y, _reference(x, ref.weight, ref.bias, 2, 1, 2, True, None), torch.float32)

        # An in-place parameter update is seen by the next call (the packed weight is refreshed).
        fused.weight.mul_(-1.0)
        _assert_close(fused(x), _reference(x, -ref.weight, ref.bias, 2, 1, 2, True, None), torch.float32)

        # A copy of an existing layer, without ReLU, with a residual input.
        plain = conv.FusedConv2d.from_conv(ref)
        r = _rand(torch.Generator().manual_seed(2), 2, 8, 5, 4, dtype=torch.float32)
        _assert_close(
            plain(x, residual=r), _reference(x, ref.weight, ref.bias, 2, 1, 2, False, r), torch.float32
        )


def test_fused_module_under_inference_mode():
    x = _rand(torch.Generator().manual_seed(4), 1, 4, 5, 5, dtype=torch.float32)
    fused = conv.FusedConv2d(4, 8, 3, padding=1, relu=True).to(DEVICE)
    with torch.inference_mode():
        y = fused(x)  # a normal module run under inference mode
        made_inside = conv.FusedConv2d(4, 8, 3, padding=1).to(DEVICE)  # inference-tensor weights
        made_inside.load_state_dict(fused.state_dict())
        y_inside = made_inside(x)
    ref = _reference(x, fused.weight, fused.bias, 1, 1, 1, False, None)
    _assert_close(y, torch.relu(ref), torch.float32)
    _assert_close(y_inside, ref, torch.float32)


def test_fused_module_trains():
    torch.manual_seed(0)
    fused = conv.FusedConv2d(4, 4, 3, padding=1, relu=True).to(DEVICE)
    ref = torch.nn.Conv2d(4, 4, 3, padding=1).to(DEVICE)
    ref.load_state_dict(fused.state_dict())
    x = _rand(torch.Generator().manual_seed(3), 1, 4, 5, 5, dtype=torch.float32)
    fused(x).square().sum().backward()
    torch.relu(ref(x)).square().sum().backward()
    assert torch.allclose(fused.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(fused.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)


def test_fused_module_falls_back_for_unsupported_dtype():
    fused = conv.FusedConv2d(3, 4, 3, padding=1, relu=True).to(DEVICE).double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        assert torch.allclose(fused(x), torch.relu(F.conv2d(x, fused.weight, fused.bias, 1, 1)))


def test_fused_module_rejects_unsupported_options():
    with pytest.raises(ValueError, match="padding"):
        conv.FusedConv2d(3, 4, 3, padding="same")
    with pytest.raises(ValueError, match="dilation"):
        conv.FusedConv2d.from_conv(torch.nn.Conv2d(3, 4, 3, dilation=2))


# deadline=None and too_slow suppressed: both time the wall clock, and Triton's CPU interpreter on
# a busy machine is slow for reasons that are not the code's; the shapes drawn are small instead.
@settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip
@given(
    batch=st.integers(1, 2),
    c_in_g=st.integers(1, 5),
    c_out_g=st.integers(1, 5),
    groups=st.integers(1, 3),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    extra=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    small_c=st.booleans(),
    relu=st.booleans(),
)
def test_random_shapes(batch, c_in_g, c_out_g, groups, k, stride, padding, extra, small_c, relu):
    h, w = k[0] + extra[0], k[1] + extra[1]
    x, wt, b, _ = _problem(
        batch, c_in_g * groups, c_out_g * groups, h, w, k, groups, dtype=torch.float32, seed=batch
    )
    ref = _reference(x, wt, b, stride, padding, groups, relu, None)
    y = conv._forward(
        x,
        wt,
        b,
        stride,
        padding,
        groups,
        relu,
        None,
        out=_poisoned(ref.shape, torch.float32),
        small_c=small_c,
    )
    _assert_close(y, ref, torch.float32)


# ---------------------------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "shape",
    [
        # batch, c_in, c_out, h, w, k, stride, padding, groups
        (4, 3, 64, 224, 224, 7, 2, 3, 1),  # ResNet stem (small-C kernel)
        (4, 3, 96, 224, 224, 11, 4, 2, 1),  # AlexNet conv1
        (8, 64, 64, 56, 56, 3, 1, 1, 1),
        (8, 256, 512, 56, 56, 1, 2, 0, 1),  # ResNet projection
        (8, 96, 256, 27, 27, 5, 1, 2, 2),  # AlexNet conv2, grouped
        (8, 512, 512, 14, 14, 3, 1, 1, 1),
    ],
    ids=["stem7x7", "alex11x11", "3x3_64", "proj1x1s2", "alex5x5g2", "3x3_512"],
)
def test_gpu_realistic_shapes(shape, dtype):
    batch, c_in, c_out, h, w, k, stride, padding, groups = shape
    x, wt, b, r = _problem(
        batch, c_in, c_out, h, w, k, groups, dtype=dtype, residual=True, stride=stride, padding=padding
    )
    x = x.contiguous(memory_format=torch.channels_last)
    ref = _reference(x, wt, b, stride, padding, groups, True, r)
    y = conv.conv2d(x, wt, b, stride, padding, groups, relu=True, residual=r)
    _assert_close(y, ref, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "shape",
    [(4, 64, 96, 23, 19, 3, 1, 1, 1), (4, 3, 64, 45, 45, 7, 2, 3, 1), (4, 96, 128, 15, 15, 5, 1, 2, 2)],
    ids=["general", "small_c", "grouped"],
)
def test_gpu_every_autotune_config(shape, dtype):
    batch, c_in, c_out, h, w, k, stride, padding, groups = shape
    results = conv_check.validate_configs(batch, c_in, c_out, h, w, k, stride, padding, groups, dtype=dtype)
    bad = [r for r in results if not r.ok]
    assert not bad, "\n".join(f"{r.kernel} {r.config}: {r.note}" for r in bad)


@pytest.mark.gpu
def test_gpu_fp32_uses_tf32_like_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    x, wt, b, _ = _problem(4, 64, 64, 28, 28, 3, 1, dtype=torch.float32, padding=1)
    ref = _reference(x, wt, b, 1, 1, 1, True, None)
    y = conv.conv2d_relu(x, wt, b, 1, 1)
    rel = float((y.double().cpu() - ref).norm() / ref.norm())
    assert rel < 5e-3


@pytest.mark.gpu
def test_gpu_offsets_past_2_31():
    """An output of more than 2**31 elements: the last image must land in the right place."""
    gen = torch.Generator().manual_seed(0)
    x = _rand(gen, 64, 64, 260, 260, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wt = _rand(gen, 512, 64, 1, 1, dtype=torch.bfloat16, scale=0.125)
    y = conv.conv2d(x, wt)
    assert y.numel() > 2**31
    ref = _reference(x[-1:], wt, None, 1, 0, 1, False, None)
    _assert_close(y[-1:], ref, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Pruning by what fits the device
# --------------------------------------------------------------------------------------------


def _named(dtype, c_in=256, c_out=256, hw=56, batch=64):
    x = torch.empty(batch, c_in, hw, hw, dtype=dtype, device="meta")
    return {"x_ptr": x, "BATCH": batch, "OUT_H": hw, "OUT_W": hw, "C_IN_G": c_in, "C_OUT_G": c_out}


def _tiles(configs):
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
            for c in configs}


_config = conv_tuning._config
BIG = [_config(128, 256, 64, 8, 3), _config(128, 128, 32, 4, 4), _config(128, 128, 64, 8, 4), _config(64, 64, 32, 4, 5)]


def test_prune_drops_what_overflows_shared_memory_or_spills():
    bf16 = conv_tuning.prune_general(BIG, _named(torch.bfloat16), HAS_RESIDUAL=False)
    # 64x64x32 on 4 warps: its K loop needs more issue slots than the 16-bit tensor rate leaves.
    assert _tiles(bf16) == _tiles(BIG[:3])
    # A residual tile in the epilogue: 128 accumulators per thread spill, 64 do not.
    res = conv_tuning.prune_general(BIG, _named(torch.bfloat16), HAS_RESIDUAL=True)
    assert _tiles(res) == {(128, 128, 64, 8, 4)}
    # fp32 operands: 3 x (128 + 256) x 64 x 4 B = 288 KB of stages, over the 227 KB of an H100.
    # (TF32 runs at half the 16-bit rate, so 64x64x32's loop keeps up with it.)
    fp32 = conv_tuning.prune_general(BIG, _named(torch.float32), HAS_RESIDUAL=False)
    assert (128, 256, 64, 8, 3) not in _tiles(fp32) and (64, 64, 32, 4, 5) in _tiles(fp32)
    # The device's own limit decides where it is known (an sm_86 part has 99 KB).
    small = conv_tuning.prune_general(BIG, _named(torch.bfloat16), HAS_RESIDUAL=False, shared_limit=101_376)
    assert _tiles(small) == {(128, 128, 32, 4, 4)}


def test_prune_drops_tiles_whose_loop_outruns_the_issue_rate():
    narrow = [conv_tuning._config(128, 32, 64, 4, 4), conv_tuning._config(64, 64, 64, 4, 4),
              conv_tuning._config(128, 64, 64, 4, 4)]
    # 64 output channels: 128x32 moves 8 activation vectors per thread for 2 MMAs' worth of
    # work per warp (modelled 140 instructions, 109 % of the issue slots); the others fit.
    kept = conv_tuning.prune_general(narrow, _named(torch.bfloat16, c_in=64, c_out=64), HAS_RESIDUAL=False)
    assert _tiles(kept) == {(64, 64, 64, 4, 4), (128, 64, 64, 4, 4)}
    # 48 channels per group (AlexNet's conv2) need a channel mask: 64x64x64 no longer keeps up,
    # and 128x64x64 (8 gathered vectors beside a 64-per-thread accumulator, masked) spills with
    # Triton 3.6; none fits, so the prune keeps the smallest tile (the first of equal size).
    kept = conv_tuning.prune_general(narrow, _named(torch.bfloat16, c_in=48, c_out=64), HAS_RESIDUAL=False)
    assert _tiles(kept) == {(128, 32, 64, 4, 4)}
    # 4-byte (tf32) operands: 128x64x64 gathers 16 vectors per thread and spills; 64x64x64 fits.
    kept = conv_tuning.prune_general(narrow, _named(torch.float32, c_in=64, c_out=64), HAS_RESIDUAL=False)
    assert (128, 64, 64, 4, 4) not in _tiles(kept)
    # Never nothing: a layer only the dropped tile suits keeps it.
    only = conv_tuning.prune_general(narrow[:1], _named(torch.bfloat16, c_in=64, c_out=32), HAS_RESIDUAL=False)
    assert _tiles(only) == {(128, 32, 64, 4, 4)}


def test_prune_never_leaves_nothing():
    only_big = [conv_tuning._config(256, 128, 64, 8, 3)]
    kept = conv_tuning.prune_general(only_big, _named(torch.float32), HAS_RESIDUAL=True, shared_limit=1024)
    assert _tiles(kept) == _tiles(only_big)
    first = conv_tuning.prune_small_c(conv_tuning.small_c_configs(), _named(torch.float32, c_in=3, c_out=64),
                                      HAS_RESIDUAL=False, KH=7, KW=7)
    assert first


def test_small_c_prune_keeps_the_gathers_in_registers():
    configs = [_config(128, 64, 64, 4, 3), _config(128, 32, 32, 4, 3), _config(64, 128, 32, 4, 3)]
    kept = {(128, 32, 32, 4, 3), (64, 128, 32, 4, 3)}
    named = _named(torch.float32, c_in=3, c_out=128)
    assert _tiles(conv_tuning.prune_small_c(configs, named, KH=7, KW=7)) == kept
    # 2-byte operands: 64 accumulators and 64 gathered values per thread spill with Triton 3.6.
    named = _named(torch.bfloat16, c_in=3, c_out=128)
    assert _tiles(conv_tuning.prune_small_c(configs, named, KH=7, KW=7)) == kept
    configs.append(conv_tuning._config(128, 64, 32, 4, 3))  # 64 + 32 per thread: fits both
    assert (128, 64, 32, 4, 3) in _tiles(conv_tuning.prune_small_c(configs, named, KH=7, KW=7))


# --------------------------------------------------------------------------------------------
# The module's launch cache
# --------------------------------------------------------------------------------------------


def test_module_checks_a_layout_once_then_launches_from_its_cache(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    fused = conv.FusedConv2d(16, 16, 3, padding=1, relu=True).to(DEVICE)
    x = _rand(gen, 2, 16, 5, 6, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    r = _rand(gen, 2, 16, 5, 6, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    ref = lambda: _reference(x, fused.weight, fused.bias, 1, 1, 1, True, r)  # noqa: E731
    with torch.no_grad():
        _assert_close(fused(x, r), ref(), torch.float32)
        checks = []
        real = conv._check_inputs
        monkeypatch.setattr(conv, "_check_inputs", lambda *a: checks.append(a) or real(*a))
        _assert_close(fused(x, r), ref(), torch.float32)
        assert checks == []  # the second call of the layout is not checked again
        fused.weight.mul_(-1.0)  # an in-place update: repacked, the cached launch still serves
        _assert_close(fused(x, r), ref(), torch.float32)
        assert checks == []
        x2 = _rand(gen, 1, 16, 4, 4, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
        _assert_close(fused(x2), _reference(x2, fused.weight, fused.bias, 1, 1, 1, True, None), torch.float32)
        assert len(checks) == 1  # a new layout is checked once
        nchw = x.contiguous()  # not channels_last: the checked path, which converts it
        _assert_close(fused(nchw, r), ref(), torch.float32)
        assert len(checks) == 2
    # With autograd the checked path runs, and gradients flow.
    xg = x.clone().requires_grad_(True)
    fused(xg, r).sum().backward()
    assert xg.grad is not None and len(checks) == 3


@pytest.mark.parametrize("c_in, bn", [(16, False), (16, True), (3, False)], ids=["conv", "conv_bn", "small_c"])
def test_fused_pool_packs_once_and_launches_from_the_cache(monkeypatch, c_in, bn):
    """The lowered module's pooled node (runtime.fused_conv(..., pool=True)) runs through the
    conv's cached packed weight and launch: several eval calls pack the weight once and check
    the layout once; an in-place weight update repacks once more (and, with a BN, refolds)."""
    from archdsl.codegen.triton import runtime

    gen = torch.Generator().manual_seed(6)
    layer = conv.FusedConv2d(c_in, 16, 3, padding=1, relu=not bn).to(DEVICE).eval()
    norm = None
    if bn:
        norm = torch.nn.BatchNorm2d(16).to(DEVICE).eval()
        with torch.no_grad():
            for t in (norm.weight, norm.bias, norm.running_mean):
                t.copy_(_rand(gen, 16, dtype=torch.float32))
            norm.running_var.copy_(_rand(gen, 16, dtype=torch.float32).abs() + 0.5)
    x = _rand(gen, 2, c_in, 6, 9, dtype=torch.float32).contiguous(memory_format=torch.channels_last)

    def ref():
        y = _reference(x, layer.weight, layer.bias, 1, 1, 1, False, None)
        if norm is not None:
            d = lambda t: t.detach().to("cpu", torch.float64)[None, :, None, None]  # noqa: E731
            y = (y - d(norm.running_mean)) / (d(norm.running_var) + norm.eps).sqrt() * d(norm.weight) + d(norm.bias)
        return F.max_pool2d(torch.relu(y), 2)

    packs, checks = [], []
    real_pack, real_check = conv.pack_weight, conv._check_inputs
    monkeypatch.setattr(conv, "pack_weight", lambda *a: packs.append(a) or real_pack(*a))
    monkeypatch.setattr(conv, "_check_inputs", lambda *a: checks.append(a) or real_check(*a))
    with torch.no_grad():
        for _ in range(3):
            _assert_close(runtime.fused_conv(x, layer, norm, relu=True, pool=True), ref(), torch.float32)
        assert (len(packs), len(checks)) == (1, 1)
        layer.weight.mul_(-1.0)  # an optimizer-style in-place update
        for _ in range(2):
            _assert_close(runtime.fused_conv(x, layer, norm, relu=True, pool=True), ref(), torch.float32)
        # Repacked once; with a BN the refolded conv is a new module, whose layout is checked once.
        assert (len(packs), len(checks)) == (2, 2 if bn else 1)


# --------------------------------------------------------------------------------------------
# The persistent grid for a partial last wave
# --------------------------------------------------------------------------------------------


def _uses_persistent(batch, hw, c_out, groups=1, pool=False, block=(128, 128), sms=132):
    return conv_tuning.uses_persistent_grid(dict(
        BATCH=batch, OUT_H=hw, OUT_W=hw, C_OUT_G=c_out, GROUPS=groups, POOL=pool,
        BLOCK_M=block[0], BLOCK_N=block[1], NUM_SMS=sms))


def test_persistent_grid_only_for_a_partial_last_wave_under_three_waves():
    # VGG-16 conv5 at batch 64: 98 x 4 = 392 tiles of 128x128, 2.97 waves of 132 SMs.
    assert _uses_persistent(64, 14, 512)
    assert not _uses_persistent(33, 16, 512)  # 66 x 4 = 264 tiles: two whole waves
    assert not _uses_persistent(8, 7, 512)  # 4 x 4 = 16 tiles: under one wave
    assert not _uses_persistent(64, 224, 64)  # 25,088 tiles: the last wave is a small share
    assert not _uses_persistent(64, 14, 256, groups=2)  # grouped convs keep one program per tile
    # A pooled launch counts whole 2x2 quads: a 15x15 conv output pooled has 64 x 7 x 7 x 4
    # rows (392 tiles), unpooled 64 x 225 (452 tiles, over three waves).
    assert _uses_persistent(64, 15, 512, pool=True) and not _uses_persistent(64, 15, 512)
    assert not _uses_persistent(64, 14, 512, sms=98)  # a whole number of waves on that device


def test_prune_keeps_the_persistent_twin_only_for_a_partial_last_wave():
    twins = [_config(128, 128, 64, 8, 3, persistent=False), _config(128, 128, 64, 8, 3, persistent=True)]
    assert {c.kwargs.get("PERSISTENT") for c in conv_tuning.general_configs()} <= {False, True}

    def kept(batch, hw, **kwargs):
        named = {**_named(torch.bfloat16, c_in=512, c_out=512, hw=hw, batch=batch), "GROUPS": 1}
        pruned = conv_tuning.prune_general(twins, named, HAS_RESIDUAL=False, POOL=False, **kwargs)
        return [c.kwargs["PERSISTENT"] for c in pruned]

    assert kept(64, 14, NUM_SMS=132) == [False, True]  # 392 tiles: the autotuner times both
    assert kept(33, 16, NUM_SMS=132) == [False]  # 264 tiles: two whole waves
    assert kept(64, 14, NUM_SMS=98) == [False]  # four whole waves on a 98-SM part


# (batch, c_in, c_out, h, w, kernel, stride, padding, pool): several M and N tiles of the
# interpreter's 32x16 tile, with partial tiles in both.
PERSISTENT_CASES = {
    "3x3_residual": (2, 20, 40, 9, 7, 3, 1, 1, False),
    "1x1_s2": (2, 16, 24, 11, 13, 1, 2, 0, False),
    "3x3_pool": (2, 16, 24, 12, 10, 3, 1, 1, True),
    "5x5_pool_odd": (1, 20, 20, 13, 11, 5, 1, 2, True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(PERSISTENT_CASES))
def test_persistent_grid_matches_f_conv2d(case, dtype):
    batch, c_in, c_out, h, w, k, stride, padding, pool = PERSISTENT_CASES[case]
    x, wt, b, r = _problem(batch, c_in, c_out, h, w, k, 1, dtype=dtype, residual=not pool, stride=stride,
                           padding=padding, seed=list(PERSISTENT_CASES).index(case))
    ref = _reference(x, wt, b, stride, padding, 1, True, r)
    if pool:
        ref = F.max_pool2d(ref, 2)
    # The interpreter's tile as a persistent config, on an SM count that leaves a partial
    # last wave (sms < tiles < 2 * sms): each program loops over two or three tiles.
    (single,) = conv_tuning.general_configs()
    persistent = _config(*(single.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")), single.num_warps,
                         single.num_stages, single.kwargs["GROUP_SIZE_M"], persistent=True)
    out = _poisoned(ref.shape, dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    kernel, grid, args, flags = conv.launch_args(
        x_cl, conv.pack_weight(wt), b, r, out, (k, k), (stride, stride), (padding, padding), 1, True, pool=pool,
        num_sms=1)
    named = {**dict(zip(kernel.arg_names, args)), **flags, **single.kwargs}
    tiles = grid(named)[0]
    sms = tiles // 2 + 1
    named["NUM_SMS"] = sms
    assert tiles >= 3 and conv_tuning.uses_persistent_grid(named)
    assert grid({**named, **persistent.kwargs}) == (sms, 1)
    y = conv._forward(x, wt, b, stride, padding, 1, True, r, out=out, pool=pool, num_sms=sms, config=persistent)
    _assert_close(y, ref, dtype)
