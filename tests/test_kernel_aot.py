"""The kernels compiled for the H100 (sm_90) without one: ``archdsl kernels`` and its tile pruning.

The interpreter tests check what the kernels compute; these check what the GPU's compiler makes
of them. Every tile config that the triton backend's launches keep after pruning, for every
seed net, is compiled for sm_90 with the installed Triton (its bundled ptxas), and must fit the
H100's shared memory, keep to registers (no local-memory spills), use Hopper's wgmma for the
convolution's dot, and move its tiles in 16-byte vectors. A config that fails any of these would be skipped or slow on the GPU,
where nothing else would say so.

Triton compiles ahead of time only with its interpreter off, and this test process has it on
(tests/conftest.py), so the compiling runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.codegen.triton import aot, conv_kernels
from archdsl.pipeline import lower_graph

ROOT = Path(__file__).resolve().parents[1]


def _kernels(*args: str) -> subprocess.CompletedProcess:
    """``archdsl kernels ARGS`` in a process with Triton's compiler (interpreter off)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "archdsl", "kernels", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


# Each seed net's launches in one dtype; training adds LRN's backward and the unfolded-BN
# variants. Together they cover both conv kernels with and without bias, ReLU and residual,
# grouped convs, and both LRN kernels.
CASES = [
    ("vgg_d", "bf16", False),
    ("alexnet", "bf16", True),
    ("vgg_a_lrn", "fp16", True),
    ("resnet50", "bf16", False),
    ("resnet50", "fp16", True),
    ("resnet50", "fp32", False),
]


# The K loop's issue budget. Above 100 % of the SM's issue slots at the peak tensor rate the
# loop cannot feed the tensor cores however well its latencies hide, so no kept config may
# need more. The main-layer tiles (128x128, 128x256: VGG's and ResNet's 128-512-channel
# layers, where the time goes) must stay within 180 instructions per K iteration, about 70 %
# and 35 % of the slots: the rest is what hides the copies' and barriers' latencies.
MAX_ISSUE_SHARE = 1.0
MAX_MAIN_TILE_INSTRUCTIONS = 180


@pytest.mark.parametrize("spec, dtype, training", CASES, ids=[f"{s}-{d}{'-train' * t}" for s, d, t in CASES])
def test_every_kept_config_compiles_for_sm90_fits_and_does_not_spill(spec, dtype, training):
    proc = _kernels(spec, "--dtype", dtype, *(["--training"] if training else []), "--json", "--check")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["arch"] == 90 and report["problems"] == []
    rows = report["configs"]
    assert rows
    for row in rows:
        assert row["error"] is None
        assert 0 < row["shared"] <= aot.SHARED_LIMIT[90] or row["kernel"].startswith("_lrn")
        assert 0 < row["registers"] <= aot.MAX_REGISTERS, row  # read off the cubin
        assert row["spill"] == 0, row
        if row["kernel"].startswith("conv2d"):
            assert row["wgmma"], row  # the dot runs on Hopper's warpgroup MMA
            assert row["stores"] == [16], row  # the output leaves in 16-byte vectors
        if row["kernel"] == "conv2d_fwd_kernel":
            # Both operand tiles reach shared memory as 16-byte async copies, in every dtype
            # (fp32 needs its weight K-contiguous for that: pack_weight).
            assert row["async_copies"] == [16], row
            # The K loop was found in the SASS, and it leaves the tensor rate room to issue.
            assert row["loop_instructions"] and row["loop_mma"] >= 2, row
            assert row["issue_share"] <= MAX_ISSUE_SHARE, row
            if row["config"].startswith(("128x128x", "128x256x")):
                assert row["loop_instructions"] <= MAX_MAIN_TILE_INSTRUCTIONS, row
        if row["kernel"] == "conv2d_fwd_small_c_kernel":
            # The stem copy's pixels (4 channels) reach shared memory as whole-vector async
            # copies (8 bytes in 16-bit types, 16 in fp32), not element by element.
            pixel = 4 * (4 if "fp32" in row["variant"] else 2)
            assert pixel in row["async_copies"] and min(row["async_copies"]) >= 4, row
        if row["kernel"] == "_lrn_fwd_kernel":
            assert row["stores"] == [16], row
    # Every launch of the net has compiled configs of its own kernel.
    for launch in report["launches"]:
        assert any(launch["layer"] in r["layers"] and r["kernel"] == launch["kernel"] for r in rows), launch


def test_a_net_without_kernels_says_so(tmp_path):
    spec = tmp_path / "mlp.arch"
    spec.write_text("net mlp : 16x1x1 {\n    fc-10\n}\n")
    proc = _kernels(str(spec), "--check")
    assert proc.returncode == 0, proc.stderr
    assert "mlp: 0 launches" in proc.stdout and "no kernel launches" in proc.stdout


def test_kernels_refuses_to_run_under_the_interpreter(capsys):
    from archdsl.cli import main

    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    if torch.cuda.is_available():
        pytest.skip("the interpreter is on only without a CUDA device (tests/conftest.py)")
    assert main(["kernels", "vgg_a"]) == 2
    err = capsys.readouterr().err
    assert "TRITON_INTERPRET" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# The launches of a graph (in process: only shapes and flags, no compiling)
# --------------------------------------------------------------------------------------------


def _by_layer(items):
    return {x.layer: x for x in items}


def test_launches_follow_the_fused_graph_alexnet():
    graph = lower_graph(archdsl.load("alexnet"), "triton")
    items = aot.launches(graph, batch=8)
    convs = [x for x in items if x.what.startswith("conv")]
    lrns = [x for x in items if x.what.startswith("lrn")]
    assert len(convs) == 5 and len(lrns) == 2
    assert convs[0].kernel is conv_kernels.conv2d_fwd_small_c_kernel  # 3 input channels
    assert all(x.kernel is conv_kernels.conv2d_fwd_kernel for x in convs[1:])
    assert all(x.meta["HAS_BIAS"] and x.meta["APPLY_RELU"] and not x.meta["HAS_RESIDUAL"] for x in convs)
    assert [x.what for x in convs] == ["conv 11x11/4", "conv 5x5/1 g2", "conv 3x3/1", "conv 3x3/1 g2",
                                       "conv 3x3/1 g2"]
    # The launch arguments are the kernel's: batch first among the sizes, then the image. The
    # small-C kernel reads the stem copy: RGB padded to 4 channels, the image by the conv's
    # padding (224 + 2 * 2), so the kernel itself pads nothing.
    named = dict(zip(convs[0].kernel.fn.arg_names, convs[0].args))
    assert (named["BATCH"], named["IN_H"], named["C_IN_G"], named["STRIDE_H"]) == (8, 228, 4, 4)
    assert (named["PAD_H"], named["PAD_W"], named["OUT_H"]) == (0, 0, 55)
    assert tuple(named["x_ptr"].shape) == (8, 4, 228, 228) and named["x_ptr"].stride(1) == 1
    assert (convs[0].meta["KH"], convs[0].meta["C_IN"], convs[1].meta["KW"]) == (11, 3, 5)  # constexpr
    assert convs[0].meta["C_PAD"] == 4 and tuple(named["w_ptr"].shape) == (1, 11 * 11 * 4, 96)
    assert named["x_ptr"].is_meta and named["x_ptr"].is_contiguous(memory_format=torch.channels_last)
    training = aot.launches(graph, batch=8, training=True)
    assert sum(x.what.endswith("backward") for x in training) == 2


def test_launches_of_a_resnet_put_the_residual_in_the_epilogue_only_in_eval():
    graph = lower_graph(archdsl.load("resnet18"), "triton")
    evals = aot.launches(graph, batch=2)
    assert sum(x.meta["HAS_RESIDUAL"] for x in evals) == 8  # one per basic block
    assert all(x.meta["HAS_BIAS"] for x in evals)  # BN folded into a bias
    # 3 projections (no ReLU): ReLU everywhere else.
    assert sum(not x.meta["APPLY_RELU"] for x in evals) == 3
    train = aot.launches(graph, batch=2, training=True)
    assert len(train) == len(evals)
    assert not any(x.meta["HAS_RESIDUAL"] or x.meta["APPLY_RELU"] or x.meta["HAS_BIAS"] for x in train)


def test_launches_of_vgg_pool_in_the_epilogue_only_in_eval():
    graph = lower_graph(archdsl.load("vgg_d"), "triton")
    evals = aot.launches(graph, batch=2)
    pooled = [x for x in evals if x.meta.get("POOL")]
    assert [x.layer for x in pooled] == [n for n, d in graph.ops() if d["attrs"].get("pool")]
    assert len(pooled) == 5 and all(x.what.endswith(" pool") for x in pooled)
    # the output the launch writes is the pooled map: the conv's rows, four per output pixel
    named = dict(zip(pooled[0].kernel.fn.arg_names, pooled[0].args))
    assert tuple(named["y_ptr"].shape) == (2, 64, 112, 112) and named["OUT_H"] == 224
    train = aot.launches(graph, batch=2, training=True)
    assert len(train) == len(evals) and not any(x.meta.get("POOL") for x in train)
    assert tuple(dict(zip(train[1].kernel.fn.arg_names, train[1].args))["y_ptr"].shape) == (2, 64, 224, 224)


# --------------------------------------------------------------------------------------------
# The K loop in the SASS, and what it implies at the tensor rate
# --------------------------------------------------------------------------------------------

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
.L_x_1:
        /*0020*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R4.64], P0 ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;
        /*0050*/              @!PT LDS RZ, [RZ] ;
        /*0060*/               @P1 BRA `(.L_x_1) ;
        /*0070*/                   ISETP.NE.AND P2, PT, R2, 0x8, PT ;
        /*0080*/               @P2 BRA `(.L_x_0) ;
.L_x_2:
        /*0090*/                   STG.E.128 desc[UR4][R6.64], R8 ;
        /*00a0*/                   BRA `(.L_x_2);
"""


def test_main_loop_is_the_innermost_loop_with_warpgroup_mmas():
    # .L_x_1 .. its branch: 5 instructions, 2 MMAs; the outer loop and the trailing
    # self-branch (no MMA) are not it. Predicated-off instructions count: they issue.
    assert aot.main_loop(SASS) == (5, 2)
    assert aot.main_loop(SASS.replace("HGMMA", "HMMA")) is None  # no warpgroup MMA: no K loop


def test_issue_share_at_the_tensor_rate():
    from archdsl.codegen.triton.hopper import issue_share

    # 247 instructions per warp on 8 warps around a 128x128x64 bf16 tile: 512 clocks of
    # tensor work against 1976 issue slots of the 2048 the SM's 4 schedulers have then.
    assert issue_share(247, 8, 128 * 128 * 64, 2) == pytest.approx(1976 / 2048)
    # TF32 runs at half the rate: the same loop has twice the clocks to issue in.
    assert issue_share(247, 8, 128 * 128 * 64, 4) == pytest.approx(1976 / 4096)
