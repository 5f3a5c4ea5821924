"""Tests of the Triton LRN kernels against a float64 reference.

Without a CUDA device these run under Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes are small; tests marked ``gpu`` need a CUDA device.

Tolerances are relative to the reference's scale: 1e-5 for float32 (the kernels compute in
fp32, so the error is a few fp32 roundings), 3e-3 for float16 (the output and, in the
backward, the upstream gradient are rounded to fp16: 2**-11 relative each) and 2e-2 for
bfloat16 (2**-8).
"""

import math

import pytest
import torch
import torch.nn.functional as F
import triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archdsl.codegen.triton import lrn as lrn_module
from archdsl.codegen.triton.lrn import LocalResponseNorm, lrn, lrn_reference, lrn_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}

# (alpha, k, input scale). With AlexNet's alpha=1e-4, k=2 and unit-sized activations the
# denominator is almost the constant 2**0.75, which would hide a wrong window; large inputs
# and a large alpha make the window sum dominate it.
PARAMS = [(1e-4, 2.0, 10.0), (1e-2, 1.0, 3.0), (1e-2, 1.0, 10.0), (1e-3, 0.5, 30.0)]


def _input(shape, scale, dtype=torch.float32, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    x = x.to(DEVICE)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _assert_close(actual, expected, rtol, what=""):
    """Relative-norm error within rtol, and every element within rtol of the largest one."""
    assert actual.shape == expected.shape
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().item() or 1.0
    rel = ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()
    assert rel <= rtol, f"{what}: relative error {rel:.3g} > {rtol:.3g}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


def _reference_grad(x, grad_y, size, alpha, beta, k, mode):
    xd = x.detach().double().requires_grad_(True)
    yd = lrn_reference(xd, size, alpha, beta, k, mode)
    (gd,) = torch.autograd.grad(yd, xd, grad_y.double())
    return yd.detach(), gd


def _check(x, size, alpha, beta, k, mode, rtol, seed=1):
    """Forward and gradient of lrn() on x against float64 autograd of the reference."""
    x = x.detach().requires_grad_(True)
    y = lrn(x, size, alpha, beta, k, mode)
    gen = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    (dx,) = torch.autograd.grad(y, x, grad_y)
    y_ref, dx_ref = _reference_grad(x, grad_y, size, alpha, beta, k, mode)

    assert y.dtype == x.dtype and dx.dtype == x.dtype
    fmt = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), "output not in the input's memory format"
    assert dx.is_contiguous(memory_format=fmt), "gradient not in the input's memory format"
    _assert_close(y, y_ref, rtol, "forward")
    _assert_close(dx, dx_ref, rtol, "backward")


# ---------------------------------------------------------------------------------------------
# Correctness against float64
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 6])
@pytest.mark.parametrize("channels", [1, 3, 5, 7, 16, 33])
def test_fp32_matches_float64(channels, size, channels_last):
    # Cycle through the modes and (alpha, k, scale) so every (C, size) sees several of them.
    case = channels * 7 + size
    mode = ("sum", "avg")[case % 2]
    alpha, k, scale = PARAMS[case % len(PARAMS)]
    batch = 1 + case % 2
    x = _input((batch, channels, 3, 5), scale, channels_last=channels_last, seed=case)
    _check(x, size, alpha, 0.75, k, mode, RTOL[torch.float32], seed=case)


@pytest.mark.parametrize("mode", ["sum", "avg"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("channels,size", [(3, 5), (7, 2), (16, 6), (33, 5)])
def test_fp16_matches_float64(channels, size, channels_last, mode):
    x = _input((2, channels, 3, 5), 10.0, torch.float16, channels_last, seed=channels + size)
    _check(x, size, 1e-2, 0.75, 1.0, mode, RTOL[torch.float16])


@pytest.mark.parametrize("beta", [0.5, 0.75, 1.0, 2.0])
def test_other_betas(beta):
    x = _input((1, 9, 5, 3), 5.0, seed=3)
    _check(x, 5, 1e-2, beta, 1.0, "sum", RTOL[torch.float32])


# log2(0) and 0 * inf in the out-of-range lanes make numpy warn under the interpreter.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("size", [2, 5])
def test_k_zero_with_zero_edge_channels(size):
    """With k = 0, the window of a channel i past the last one holds only zeros when the last
    channel is zero, so d_i = 0; such i are in the backward's transposed window of the last
    channel and must not turn its gradient into NaN (0 * inf)."""
    x = _input((1, 6, 3, 3), 3.0, seed=15)
    x[:, -1] = 0.0
    _check(x, size, 1e-2, 0.75, 0.0, "sum", RTOL[torch.float32])


@pytest.mark.parametrize(
    "block",
    [(64, 4), (4, 8), (2, 16), (1, 64)],
    ids=["all-channels", "chunks-of-4", "chunks-of-2", "one-channel-per-program"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_explicit_tilings(block, channels_last):
    """Channel chunks narrower than the window (halo beyond the neighbouring chunk), pixel
    blocks that do not divide H*W, and the single-chunk path."""
    size, alpha, beta, k = 6, 1e-2, 0.75, 1.0
    x = _input((2, 13, 3, 5), 10.0, channels_last=channels_last, seed=5)
    grad_y = _input((2, 13, 3, 5), 1.0, channels_last=channels_last, seed=6)
    y_ref, dx_ref = _reference_grad(x, grad_y, size, alpha, beta, k, "sum")
    y = lrn_module._lrn_forward(x, size, alpha, beta, k, block=block)
    dx = lrn_module._lrn_backward(x, grad_y, size, alpha, beta, k, block=block)
    _assert_close(y, y_ref, RTOL[torch.float32], "forward")
    _assert_close(dx, dx_ref, RTOL[torch.float32], "backward")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_every_element_written(channels_last):
    """Outputs pre-filled with NaN come back finite and equal to the reference everywhere."""
    x = _input((2, 11, 5, 3), 10.0, channels_last=channels_last, seed=7)
    grad_y = _input((2, 11, 5, 3), 1.0, channels_last=channels_last, seed=8)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.full_like(x, math.nan, memory_format=fmt)
    dx = torch.full_like(x, math.nan, memory_format=fmt)
    lrn_module._lrn_forward(x, 5, 1e-2, 0.75, 1.0, out=y)
    lrn_module._lrn_backward(x, grad_y, 5, 1e-2, 0.75, 1.0, out=dx)
    y_ref, dx_ref = _reference_grad(x, grad_y, 5, 1e-2, 0.75, 1.0, "sum")
    assert not y.isnan().any() and not dx.isnan().any()
    _assert_close(y, y_ref, RTOL[torch.float32], "forward")
    _assert_close(dx, dx_ref, RTOL[torch.float32], "backward")


def test_non_contiguous_input_and_expanded_grad():
    base = _input((2, 14, 4, 5), 10.0, seed=9)
    x = base[:, ::2]  # channel stride 2 * H * W: read in place, no copy
    x.requires_grad_(True)
    y = lrn(x, 3, 1e-2, 0.75, 1.0)
    y.sum().backward()  # upstream gradient is an expanded scalar (all strides 0)
    y_ref, dx_ref = _reference_grad(x, torch.ones_like(x), 3, 1e-2, 0.75, 1.0, "sum")
    _assert_close(y, y_ref, RTOL[torch.float32], "forward")
    _assert_close(x.grad, dx_ref, RTOL[torch.float32], "backward")

    # H and W not walkable with one stride: copied first, the result is still right.
    z = _input((1, 5, 6, 8), 10.0, seed=10)[:, :, ::2, 1::2]
    _assert_close(lrn(z, 5, 1e-2, 0.75, 1.0), lrn_reference(z.double(), 5, 1e-2, 0.75, 1.0), 1e-5, "strided")


def test_empty_input():
    for shape in [(0, 4, 3, 3), (2, 4, 0, 3)]:
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        y = lrn(x)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


# deadline=None and too_slow suppressed: both time the wall clock, which Triton's CPU interpreter on
# a busy machine stretches; the shapes drawn are small instead. No other health check applies to
# these plain draws (no filters, no fixtures, small data).
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 40),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    size=st.integers(1, 9),
    mode=st.sampled_from(["sum", "avg"]),
    channels_last=st.booleans(),
    alpha=st.sampled_from([1e-4, 1e-3, 1e-2, 0.1]),
    beta=st.sampled_from([0.5, 0.75, 1.0]),
    k=st.sampled_from([0.5, 1.0, 2.0]),
    scale=st.sampled_from([1.0, 10.0]),
)
def test_random_shapes_and_parameters(
    batch, channels, height, width, size, mode, channels_last, alpha, beta, k, scale
):
    shape = (batch, channels, height, width)
    x = _input(shape, scale, channels_last=channels_last, seed=channels * 31 + size)
    _check(x, size, alpha, beta, k, mode, RTOL[torch.float32])


# ---------------------------------------------------------------------------------------------
# Channel runs: vector edges, halos, layouts
# ---------------------------------------------------------------------------------------------


def _check_tiled(x, size, block, rtol, mode="sum", alpha=1e-2, k=1.0, seed=20):
    """Forward and backward of the kernels, forced to `block`, against float64 autograd of
    the reference (the gradient check: the kernel's dx against the reference's Jacobian)."""
    gen = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    fmt = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
    grad_y = grad_y.contiguous(memory_format=fmt)
    alpha_eff = lrn_module._effective_alpha(alpha, size, mode)
    y_ref, dx_ref = _reference_grad(x, grad_y, size, alpha, 0.75, k, mode)
    y = lrn_module._lrn_forward(x, size, alpha_eff, 0.75, k, block=block)
    dx = lrn_module._lrn_backward(x, grad_y, size, alpha_eff, 0.75, k, block=block)
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)
    _assert_close(y, y_ref, rtol, f"forward {tuple(x.shape)} n={size} block={block}")
    _assert_close(dx, dx_ref, rtol, f"backward {tuple(x.shape)} n={size} block={block}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [2, 3, 4, 5])
@pytest.mark.parametrize("channels", [3, 13, 24, 96])
def test_runs_odd_spatial_and_ragged_channels(channels, size, channels_last, dtype):
    """Odd H*W (5x7: NCHW rows that no vector width keeps aligned), channel counts below a run
    (3), ragged at the last run (13: channel masks per element) and whole runs (24, 96:
    masks per vector, for fp16's 8-channel vectors and fp32's 4), with odd and even windows
    (the backward's mirrored window). The 32-channel chunk puts runs at chunk edges, whose
    halo comes from the neighbouring program."""
    x = _input((2, channels, 5, 7), 10.0, dtype, channels_last, seed=channels * 10 + size)
    _check_tiled(x, size, (32, 32, 4), RTOL[dtype], mode=("sum", "avg")[size % 2], seed=size)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("block", [(128, 512, 4), (32, 1024, 4)], ids=["all-channels", "chunks-of-32"])
def test_alexnet_lrn1_image(block, channels_last):
    """AlexNet's first LRN, one image of 96x55x55 (its batch of 128 cut to 1 for the
    interpreter), in the tilings the autotuner tries on a GPU."""
    x = _input((1, 96, 55, 55), 10.0, torch.float16, channels_last, seed=21)
    _check_tiled(x, 5, block, RTOL[torch.float16], alpha=1e-3, k=2.0)


@pytest.mark.parametrize("size", [6, 9])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_halo_wider_than_a_vector(size, channels_last):
    """Windows whose backward halo (size - 1 channels each side) spans more than one fp32
    vector of 4 channels, and runs of 2 and 4 channels (chunks narrower than 8)."""
    x = _input((2, 21, 3, 4), 10.0, torch.float32, channels_last, seed=22 + size)
    for block in [(16, 16, 4), (4, 16, 4), (2, 32, 4)]:
        _check_tiled(x, size, block, RTOL[torch.float32])


@pytest.mark.parametrize(
    "shape,channels_last,dtype,expected",
    [
        ((2, 96, 55, 55), True, torch.bfloat16, dict(CHANNELS_LAST=True, VEC=8, EVEN_C=True)),
        ((2, 13, 5, 7), True, torch.float32, dict(CHANNELS_LAST=True, VEC=4, EVEN_C=False)),
        ((2, 96, 55, 55), False, torch.bfloat16, dict(CHANNELS_LAST=False, VEC=8, EVEN_C=True, ROW_ALIGN=1)),
        ((2, 64, 14, 14), False, torch.float16, dict(CHANNELS_LAST=False, VEC=8, ROW_ALIGN=4)),
        ((2, 64, 56, 56), False, torch.float32, dict(CHANNELS_LAST=False, VEC=4, ROW_ALIGN=4)),
    ],
)
def test_launch_flags(shape, channels_last, dtype, expected):
    """The layout flags launch_args derives: which axis the vectors run along, their width,
    whether channel masks are uniform per vector, and the alignment all NCHW rows share
    (gcd of H*W and the vector width: 1 for AlexNet's 55x55)."""
    x = torch.empty(shape, dtype=dtype, device="meta")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    for grad in (None, torch.empty_like(x)):
        meta = lrn_module.launch_args(x, 5, 1e-4, 0.75, 2.0, grad_y=grad)[5]
        assert {key: meta[key] for key in expected} == expected


@pytest.mark.parametrize("dtype,vec", [(torch.bfloat16, 8), (torch.float32, 4)])
def test_prune_nchw_holds_runs_by_vectors_of_pixels(dtype, vec):
    """NCHW tiles keep each thread on a run of 8 channels by 2 to `vec` pixels (at most 4 in
    the forward and 2 in the backward when the rows are not aligned), and aligned rows get a
    16-byte vector of pixels."""
    for max_block_c, per_thread, backward in ((256, (8, 16, 32, 64), False), (128, (8, 16, 32), True)):
        configs = lrn_module._tile_configs(max_block_c, per_thread, interpret=False)
        for hw, most in ((56 * 56, vec), (55 * 55, min(vec, 2 if backward else 4))):
            x = torch.empty(64, 96, hw, 1, dtype=dtype, device="meta")
            named = {"C": 96, "P": hw, "stride_xc": hw, "X": x}
            kept = lrn_module._prune_configs(configs, named, backward=backward, SIZE=5)
            assert kept
            per = [cfg.kwargs["BLOCK_P"] * (cfg.kwargs["BLOCK_C"] // 8) / (32 * cfg.num_warps) for cfg in kept]
            assert all(2 <= p <= most for p in per), per
            if max(per_thread) >= 8 * most:
                assert max(per) == most


# ---------------------------------------------------------------------------------------------
# Conventions: PyTorch's averaging, the paper's sum, the module
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9])
def test_avg_mode_matches_pytorch(size):
    x = _input((2, 7, 3, 5), 10.0, seed=size)
    expected = F.local_response_norm(x, size, alpha=1e-2, beta=0.75, k=1.0)
    _assert_close(lrn(x, size, 1e-2, 0.75, 1.0, mode="avg"), expected, RTOL[torch.float32], "avg vs torch")
    _assert_close(lrn_torch(x, size, 1e-2, 0.75, 1.0, mode="avg"), expected, 1e-12, "lrn_torch")
    reference = lrn_reference(x, size, 1e-2, 0.75, 1.0, mode="avg")
    _assert_close(reference, expected, RTOL[torch.float32], "reference")


@pytest.mark.parametrize("size", [2, 5])
def test_sum_is_avg_with_alpha_times_size(size):
    x = _input((1, 9, 3, 3), 10.0, seed=11)
    alpha = 1e-3
    summed = lrn(x, size, alpha, mode="sum")
    _assert_close(summed, lrn(x, size, alpha * size, mode="avg"), RTOL[torch.float32], "kernel")
    reference = lrn_reference(x.double(), size, alpha, mode="sum")
    _assert_close(lrn_torch(x, size, alpha, mode="sum"), reference, 1e-5, "lrn_torch")


def test_sum_mode_matches_alexnet_formula():
    """b_i = a_i / (k + alpha * sum_{j=max(0,i-2)}^{min(C-1,i+2)} a_j^2)^beta, written out."""
    x = _input((1, 6, 2, 2), 10.0, seed=12).double()
    alpha, beta, k = 1e-2, 0.75, 2.0
    expected = torch.empty_like(x)
    for i in range(6):
        window = x[:, max(0, i - 2) : min(5, i + 2) + 1]
        expected[:, i] = x[:, i] / (k + alpha * (window**2).sum(1)) ** beta
    _assert_close(lrn_reference(x, 5, alpha, beta, k), expected, 1e-12, "reference")
    _assert_close(lrn(x.float(), 5, alpha, beta, k), expected, RTOL[torch.float32], "kernel")


def test_module():
    m = LocalResponseNorm(size=5, alpha=1e-2, beta=0.75, k=1.0, mode="sum")
    assert (m.size, m.alpha, m.beta, m.k, m.mode, m.backend) == (5, 1e-2, 0.75, 1.0, "sum", "triton")
    text = repr(m)
    for part in ("size=5", "alpha=0.01", "beta=0.75", "k=1.0", "mode='sum'", "backend='triton'"):
        assert part in text
    assert LocalResponseNorm().k == 2.0 and LocalResponseNorm().alpha == 1e-4  # the paper's defaults

    x = _input((2, 8, 3, 3), 10.0, seed=13).requires_grad_(True)
    y = m(x)
    y.backward(torch.ones_like(y))
    torch_m = LocalResponseNorm(5, 1e-2, 0.75, 1.0, "sum", backend="torch")
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch_m(x2)
    y2.backward(torch.ones_like(y2))
    _assert_close(y, y2, RTOL[torch.float32], "module forward")
    _assert_close(x.grad, x2.grad, RTOL[torch.float32], "module backward")


def test_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="backend"):
        LocalResponseNorm(backend="cuda")
    with pytest.raises(ValueError, match="mode"):
        LocalResponseNorm(mode="mean")
    with pytest.raises(ValueError, match="size"):
        LocalResponseNorm(size=0)


# ---------------------------------------------------------------------------------------------
# Input checking and autotuning space
# ---------------------------------------------------------------------------------------------


def test_bad_inputs():
    x = torch.randn(1, 4, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="4-D"):
        lrn(x[0])
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lrn(torch.ones(1, 4, 3, 3, dtype=torch.int32, device=DEVICE))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lrn(x.double())
    with pytest.raises(ValueError, match="size"):
        lrn(x, size=0)
    with pytest.raises(TypeError, match="size"):
        lrn(x, size=2.5)
    with pytest.raises(ValueError, match="mode"):
        lrn(x, mode="mean")
    with pytest.raises(TypeError, match="Tensor"):
        lrn(x.tolist())
    with pytest.raises(ValueError, match="4-D"):
        lrn_reference(x[0])
    with pytest.raises(ValueError, match="mode"):
        lrn_torch(x, mode="max")


@pytest.mark.parametrize(
    "channels,pixels,channels_last",
    [(96, 55 * 55, False), (96, 128 * 55 * 55, True), (256, 27 * 27, False), (64, 224 * 224, False),
     (1000, 1, True), (3, 15, False), (1, 1, False)],
)
def test_autotune_space(channels, pixels, channels_last):
    """The GPU configs (built here without a GPU) prune to a non-empty set of sensible tiles."""
    for max_block_c, per_thread in ((256, (8, 16)), (128, (2, 4))):
        configs = lrn_module._tile_configs(max_block_c, per_thread, interpret=False)
        stride_c = 1 if channels_last else pixels
        kept = lrn_module._prune_configs(configs, {"C": channels, "P": pixels, "stride_xc": stride_c}, SIZE=5)
        assert kept
        full = min(1 << (channels - 1).bit_length(), max_block_c)
        for cfg in kept:
            block_c, block_p = cfg.kwargs["BLOCK_C"], cfg.kwargs["BLOCK_P"]
            assert block_c == full or (not channels_last and block_c == 32)
            assert block_c * block_p <= 32 * cfg.num_warps * max(per_thread)


def test_prune_keeps_a_config_when_no_chunk_matches():
    """A config list without the ideal channel chunk (the interpreter's single config, say)
    still leaves something to run."""
    only = [triton.Config({"BLOCK_C": 16, "BLOCK_P": 16}, num_warps=1)]
    for stride_c in (1, 15):
        assert lrn_module._prune_configs(only, {"C": 7, "P": 15, "stride_xc": stride_c}, SIZE=5) == only


# ---------------------------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape,size", [((4, 96, 27, 27), 5), ((2, 256, 13, 13), 5), ((3, 64, 30, 30), 6)])
def test_gpu_bf16_and_fp32(shape, size, channels_last):
    for dtype in (torch.bfloat16, torch.float32):
        x = _input(shape, 10.0, dtype, channels_last, seed=14)
        _check(x, size, 1e-2, 0.75, 1.0, "sum", RTOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_gpu_more_than_2_31_elements(channels_last):
    """Offsets past 2**31 elements (4.3 GB of fp16 per tensor): checks pixels at both ends."""
    shape = (2, 16, 8192, 8200)
    assert math.prod(shape) > 2**31
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs about 20 GB of GPU memory")
    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad_y = torch.randn_like(x)
    y = lrn_module._lrn_forward(x, 5, 1e-2, 0.75, 1.0)
    dx = lrn_module._lrn_backward(x, grad_y, 5, 1e-2, 0.75, 1.0)
    for rows in (slice(0, 2), slice(-2, None)):
        for img in (0, 1):
            xs, gs = x[img : img + 1, :, rows], grad_y[img : img + 1, :, rows]
            y_ref, dx_ref = _reference_grad(xs, gs, 5, 1e-2, 0.75, 1.0, "sum")
            _assert_close(y[img : img + 1, :, rows], y_ref, RTOL[torch.float16], "forward tail")
            _assert_close(dx[img : img + 1, :, rows], dx_ref, RTOL[torch.float16], "backward tail")
