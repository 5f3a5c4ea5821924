"""Facts about the target GPUs that the tile pruning and the offline compiler both reason with.

One home for them, so that what the prune assumes and what ``archdsl kernels`` reports about
the compiled binaries cannot drift apart. Imports neither torch nor triton.
"""

from __future__ import annotations

__all__ = [
    "ISSUE_PER_CLOCK",
    "MAX_REGISTERS",
    "SHARED_LIMIT",
    "TENSOR_MACS_PER_CLOCK",
    "issue_share",
]

#: Largest shared memory one block may use (the opt-in limit), bytes, by compute capability.
SHARED_LIMIT = {80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376, 90: 232_448, 100: 232_448}

#: Registers one thread may hold.
MAX_REGISTERS = 255

#: Dense multiply-adds per clock of one sm_90 SM's tensor cores, by operand width in bytes:
#: the H100's 989 TFLOP/s of 16-bit math at 1.83 GHz on 132 SMs is 2048 (the H200 has the same
#: SM and clock); TF32 runs at half that rate.
TENSOR_MACS_PER_CLOCK = {2: 2048, 4: 1024}

#: Instructions one SM issues per clock: four schedulers, one instruction each.
ISSUE_PER_CLOCK = 4


def issue_share(instructions: float, warps: int, tile_macs: int, elem_bytes: int) -> float:
    """The fraction of an SM's issue slots a GEMM's K loop needs to keep its tensor cores at peak.

    One iteration of one CTA does ``tile_macs`` (BLOCK_M x BLOCK_N x BLOCK_K) multiply-adds,
    which take ``tile_macs / TENSOR_MACS_PER_CLOCK`` clocks at the peak rate, while each of its
    ``warps`` warps issues ``instructions`` instructions through the SM's four schedulers. Both
    scale alike with the number of CTAs resident on the SM, so the share does not depend on
    occupancy. Above 1.0 the loop cannot reach the tensor rate however well its latencies hide:
    issue, not math, bounds it; close to 1.0 every stall shows as lost tensor time.

    Args:
        instructions: SASS instructions per warp per K iteration (warpgroup MMAs included).
        warps: warps per CTA.
        tile_macs: BLOCK_M * BLOCK_N * BLOCK_K.
        elem_bytes: operand width, 2 (fp16/bf16) or 4 (fp32 through TF32).
    """
    clocks = tile_macs / TENSOR_MACS_PER_CLOCK[elem_bytes]
    return instructions * warps / (ISSUE_PER_CLOCK * clocks)
