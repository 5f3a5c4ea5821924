"""Compile a network's Triton kernels for a GPU without the GPU, and report what each costs.

On a GPU the autotuner compiles, for every launch, each tile config that survives its prune,
then times them. This module does the compiling part offline: for a graph lowered for the
``triton`` backend (the caller runs the pipeline; this module does not) it lists the launches
the backend makes (:func:`launches`), takes each launch's arguments from
the kernel's own ``launch_args`` on meta tensors (so no memory is allocated and nothing can
drift from what a real launch passes), specialises them with Triton's own binder, prunes the
configs with the kernel's own prune function, and compiles every survivor for the target
(sm_90 is the H100). For each config it reports the shared memory, the registers per thread,
the local memory (register spills), and whether the dot became Hopper's ``wgmma``.

    archdsl kernels specs/vgg_d.arch                 # bf16, batch 64, sm_90
    archdsl kernels alexnet --training --check       # exit 1 on a config that fails, spills
                                                     # or on a launch with no config that fits

What it does not tell is speed: that takes the GPU (``benchmarks/bench_conv.py``,
``bench_lrn.py``). What it does tell, without one, is that every kernel the backend would
launch compiles with the installed Triton, fits the target's shared memory and keeps its
working set in registers -- the failures that otherwise show up only on the GPU, as configs the
autotuner silently skips or as spills that make a config slow.

Triton compiles ahead of time only in a process where its interpreter is off: the kernels
are decorated once, at import, for one mode or the other. Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from archdsl.backends import TRITON
from archdsl.codegen.triton import support
from archdsl.codegen.triton.hopper import MAX_REGISTERS, SHARED_LIMIT, issue_share
from archdsl.ir import ArchGraph, Op
from archdsl.ops.conv import conv_shape
from archdsl.tables import fixed_width

__all__ = ["Compiled", "Launch", "compile_launches", "launches", "report", "table"]


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class AotError(RuntimeError):
    """Offline compilation cannot run in this process (interpreter on, triton missing)."""


@dataclass(frozen=True, eq=False)
class Launch:
    """One kernel launch of a lowered graph: the layer, the autotuned kernel and its arguments."""

    layer: str
    kernel: object  # triton.runtime.Autotuner
    args: tuple
    meta: dict
    what: str = ""  # "conv 3x3/1 bias relu", "lrn forward", ...

    @property
    def kernel_name(self) -> str:
        return jit_function(self.kernel).__name__


def _unwrap(kernel) -> tuple[object, dict]:
    """The ``@triton.jit`` function under an autotuner, and the meta-parameters the
    ``triton.heuristics`` between them compute."""
    from triton.runtime.autotuner import Heuristics  # triton only once a kernel is at hand

    values, fn = {}, kernel.fn
    while isinstance(fn, Heuristics):
        values.update(fn.values)
        fn = fn.fn
    return fn, values


def jit_function(kernel):
    """The ``@triton.jit`` function under an autotuner (and ``triton.heuristics``)."""
    return _unwrap(kernel)[0]


@dataclass
class Compiled:
    """One tile config of one kernel variant, compiled for the target."""

    kernel: str
    variant: str  # dtype and the launch's flags
    config: str
    layers: list[str]
    shared: int = 0  # bytes
    registers: int = 0  # per thread
    spill: int = 0  # bytes of local memory per thread
    wgmma: bool = False
    async_copies: list[int] = field(default_factory=list)  # widths (bytes) of global->shared copies
    stores: list[int] = field(default_factory=list)  # widths (bytes) of global stores
    loop_instructions: int | None = None  # SASS instructions per warp per K iteration
    loop_mma: int = 0  # warpgroup MMA instructions among them
    issue_share: float | None = None  # issue slots that loop needs at the peak tensor rate
    error: str | None = None
    seconds: float = 0.0

    def fits(self, arch: int) -> bool:
        limit = SHARED_LIMIT.get(arch)
        return self.error is None and (limit is None or self.shared <= limit)

    def problem(self, arch: int) -> str | None:
        """Why this config is not clean on the target, or None."""
        if self.error is not None:
            return f"does not compile: {self.error}"
        if not self.fits(arch):
            return f"needs {self.shared / 1024:.0f} KB shared memory, sm_{arch} has {SHARED_LIMIT[arch] / 1024:.0f} KB"
        if self.spill:
            return f"spills {self.spill} bytes per thread to local memory"
        return None


# --------------------------------------------------------------------------------------------
# The launches of a graph
# --------------------------------------------------------------------------------------------


def _meta_tensor(batch: int, shape, dtype, channels_last: bool) -> torch.Tensor:
    t = torch.empty(batch, *shape.dims, dtype=dtype, device="meta")
    return t.to(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def launches(lowered: ArchGraph, *, batch: int = 64, dtype: torch.dtype = torch.bfloat16,
             training: bool = False) -> list[Launch]:
    """The Triton launches of one forward (and, with ``training``, the LRN backward) of
    ``lowered``, a graph lowered for the triton backend, on channels_last activations.

    A conv node launches as :func:`archdsl.codegen.triton.runtime.fused_conv` runs it: in eval
    mode a BN is folded into the conv (so it has a bias) and the ReLU and residual go to the
    epilogue, and so does a fused 2x2 max-pool; in training mode a conv followed by a BN runs
    without bias, residual or ReLU (the BN runs between them), and a fused pool runs after it.
    """
    # Imported here, not at the top: they import triton, and a process without it gets
    # AotError's advice from report() instead of an ImportError.
    from archdsl.codegen.triton import conv as conv_kernels
    from archdsl.codegen.triton import lrn as lrn_kernels

    out: list[Launch] = []
    for name in lowered.order():
        data = lowered.nodes[name]
        op, a = data["op"], data["attrs"]
        if op not in TRITON.overrides:  # not lowered to one of the backend's kernels
            continue
        x_shape = lowered.shape(data["args"][0])
        x = _meta_tensor(batch, x_shape, dtype, channels_last=True)
        if op is Op.LRN:
            params = (a["size"], lrn_kernels._effective_alpha(a["alpha"], a["size"], a["mode"]), a["beta"], a["k"])
            passes = [("forward", None)] + ([("backward", torch.empty_like(x))] if training else [])
            for direction, grad in passes:
                _, tuned, _, _, args, meta = lrn_kernels.launch_args(x, *params, grad_y=grad)
                out.append(Launch(name, tuned, args, meta, f"lrn n={a['size']} {direction}"))
            continue
        bn = op is Op.FUSED_CONV and a["bn"]
        relu = op is Op.FUSED_CONV and a["relu"]
        residual = op is Op.FUSED_CONV and a.get("residual", False)
        groups = a["groups"]
        # A fused pool runs in the epilogue at inference, except after the small-C kernel
        # (which has none: its conv output goes to the max-pool kernel, not listed here).
        pool = (op is Op.FUSED_CONV and a.get("pool", False) and not training
                and not conv_kernels.uses_small_c_kernel(x_shape.c // groups))
        if training and bn:  # the BN runs on the conv's raw output
            has_bias, relu, residual = a["bias"], False, False
        else:
            has_bias = a["bias"] or bn
        y_shape = lowered.shape(name) if pool else conv_shape(a, x_shape)
        y = _meta_tensor(batch, y_shape, dtype, channels_last=True)
        w = torch.empty(a["out_channels"], x_shape.c // groups, *a["kernel"], dtype=dtype, device="meta")
        bias = torch.empty(a["out_channels"], dtype=dtype, device="meta") if has_bias else None
        kernel, _, args, flags = conv_kernels.launch_args(
            x, conv_kernels.pack_weight(w, groups), bias, y if residual else None, y,
            a["kernel"], a["stride"], a["padding"], groups, relu, pool=pool)
        kh, kw = a["kernel"]
        what = f"conv {kh}x{kw}/{a['stride'][0]}" + (f" g{groups}" if groups > 1 else "")
        what += " pool" if pool else ""
        out.append(Launch(name, kernel, args, flags, what))
    return out


# --------------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------------


def _triton():
    if support.INTERPRET:
        raise AotError("offline compilation needs Triton's compiler, and TRITON_INTERPRET=1 is set "
                       "in this process: run it with TRITON_INTERPRET unset")
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as err:  # pragma: no cover - triton is in the test extra
        raise AotError(f"offline compilation needs triton (pip install 'triton>=3.6'): {err}") from None
    return triton, GPUTarget, ASTSource, make_backend, create_function_from_signature


def _cuda_tool(name: str) -> str | None:
    """A CUDA binary tool: the one shipped in Triton's wheel, else one on PATH."""
    import triton.backends.nvidia as nvidia

    bundled = os.path.join(os.path.dirname(nvidia.__file__), "bin", name)
    return bundled if os.path.exists(bundled) else shutil.which(name)


def _run_tool(name: str, args: list[str], cubin: bytes) -> str | None:
    """``name args kernel.cubin``'s output, or None without the tool."""
    tool = _cuda_tool(name)
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([tool, *args, path], capture_output=True, text=True, check=True).stdout


_SASS_LINE = re.compile(r"^\s*(?:(\.L_x_\d+):|/\*[0-9a-f]+\*/\s+(.*?)\s*;)")
_BRANCH = re.compile(r"\bBRA\b.*\((\.L_x_\d+)\)")
_MMA = re.compile(r"\b[HQI]GMMA\.")


def main_loop(sass: str) -> tuple[int, int] | None:
    """(instructions, warpgroup MMAs) in the body of the innermost loop of ``sass`` (nvdisasm's
    text) that issues warpgroup MMAs, i.e. a GEMM kernel's K loop; None without one.

    A loop is a branch back to a label above it; its body runs from the label to the branch,
    both included. Every instruction counts, predicated-off ones too: they take issue slots.
    """
    labels: dict[str, int] = {}
    code: list[str] = []
    loops: list[tuple[int, int]] = []
    for line in sass.splitlines():
        match = _SASS_LINE.match(line)
        if match is None:
            continue
        label, instr = match.groups()
        if label:
            labels[label] = len(code)
            continue
        branch = _BRANCH.search(instr)
        if branch and branch.group(1) in labels:
            loops.append((labels[branch.group(1)], len(code)))
        code.append(instr)
    found = [(end + 1 - start, sum(bool(_MMA.search(i)) for i in code[start:end + 1]))
             for start, end in loops]
    found = [f for f in found if f[1]]
    return min(found) if found else None


_ASYNC_COPY = re.compile(r"cp\.async\.c[ag]\.shared\.global[^\[]*\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")
_STORE = re.compile(r"\bst\.global(?:\.[a-zA-Z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\s")


def _widths(ptx: str) -> tuple[list[int], list[int]]:
    """The byte widths of the async global->shared copies and of the global stores in ``ptx``:
    16 means whole 16-byte vectors, the widest an sm_90 thread moves in one instruction."""
    copies = {int(m, 0) for m in _ASYNC_COPY.findall(ptx)}
    stores = {int(v or 1) * int(bits) // 8 for v, bits in _STORE.findall(ptx)}
    return sorted(copies), sorted(stores)


_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)")


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local memory bytes per thread) of a cubin's kernel."""
    text = _run_tool("cuobjdump", ["-res-usage"], cubin)
    if text is None:
        return 0, 0
    match = _RES_USAGE.search(text)
    if match is None:
        raise AotError(f"cannot read cuobjdump's resource usage:\n{text}")
    registers, stack, local = map(int, match.groups())
    return registers, max(stack, local)


def _describe(config) -> str:
    kw = config.kwargs
    if "BLOCK_M" in kw:
        tile = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}"
    else:
        tile = f"C{kw['BLOCK_C']}xP{kw['BLOCK_P']}"
    return f"{tile} w{config.num_warps} s{config.num_stages}" + (" persistent" if kw.get("PERSISTENT") else "")


def _variant(launch: Launch) -> str:
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    dtypes = sorted({names.get(a.dtype, str(a.dtype)) for a in launch.args if isinstance(a, torch.Tensor)})
    flags = [k.lower() for k, v in launch.meta.items()
             if isinstance(v, bool) and v and k not in ("ALLOW_TF32",)]
    flags = [f.replace("has_", "").replace("apply_", "").replace("beta_is_3_4", "beta=3/4") for f in flags]
    size = launch.meta.get("SIZE")
    return " ".join([*dtypes, *(f"n={size}",) * (size is not None), *flags])


def compile_launches(items: Iterable[Launch], *, arch: int = 90, progress=None) -> list[Compiled]:
    """Compile every pruned config of every launch for ``sm_<arch>``; each distinct binary once.

    Launches whose specialised signature is the same (same dtypes, flags, divisibility of the
    sizes and strides) compile to the same binary, so their layers share its rows.
    """
    triton, GPUTarget, ASTSource, make_backend, create_function_from_signature = _triton()
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binders = {}
    rows: dict[str, Compiled] = {}
    for launch in items:
        tuned, fn = launch.kernel, jit_function(launch.kernel)
        named = dict(zip(fn.arg_names, launch.args))
        prune_args = dict(launch.meta, shared_limit=SHARED_LIMIT.get(arch))
        configs = tuned.early_config_prune(tuned.configs, named, **prune_args) \
            if tuned.early_config_prune else tuned.configs
        if fn not in binders:
            binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
        for config in configs:
            kwargs = dict(launch.meta, **config.kwargs, num_warps=config.num_warps,
                          num_stages=config.num_stages)
            for name, rule in _unwrap(tuned)[1].items():
                kwargs[name] = rule({**named, **kwargs})
            bound, specialization, options = binders[fn](*launch.args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
            key = repr((fn.__name__, signature, sorted(constexprs.items()), sorted(attrs.items()),
                        sorted(options.__dict__.items())))
            if key in rows:
                if launch.layer not in rows[key].layers:
                    rows[key].layers.append(launch.layer)
                continue
            row = rows[key] = Compiled(launch.kernel_name, _variant(launch), _describe(config), [launch.layer])
            if progress:
                progress(row)
            start = time.perf_counter()
            try:
                binary = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
            except Exception as err:  # a compile failure is what the report is for
                last_line = (str(err).strip().splitlines() or [""])[-1]
                row.error = f"{type(err).__name__}: {last_line[:200]}"
            else:
                row.shared = binary.metadata.shared
                row.registers, row.spill = _resource_usage(binary.asm["cubin"])
                ptx = binary.asm.get("ptx", "")
                row.wgmma = "wgmma" in ptx
                row.async_copies, row.stores = _widths(ptx)
                sass = _run_tool("nvdisasm", ["-c"], binary.asm["cubin"])
                loop = main_loop(sass) if sass else None
                if loop is not None:
                    row.loop_instructions, row.loop_mma = loop
                    kw = config.kwargs
                    elem = next(a.element_size() for a in launch.args if isinstance(a, torch.Tensor))
                    row.issue_share = issue_share(row.loop_instructions, config.num_warps,
                                                  kw["BLOCK_M"] * kw["BLOCK_N"] * kw["BLOCK_K"], elem)
            row.seconds = time.perf_counter() - start
    return list(rows.values())


@dataclass
class Report:
    net: str
    arch: int
    dtype: str
    batch: int
    training: bool
    launches: list[Launch]
    rows: list[Compiled]
    seconds: float
    triton_version: str

    def problems(self) -> list[str]:
        """Configs that fail, spill or do not fit, and launches left with no config that fits."""
        found = [f"{r.kernel} {r.variant} {r.config}: {p}" for r in self.rows
                 if (p := r.problem(self.arch)) is not None]
        for launch in self.launches:
            if not any(launch.layer in r.layers and r.kernel == launch.kernel_name and r.fits(self.arch)
                       for r in self.rows):
                found.append(f"{launch.layer} ({launch.what}): no config compiles and fits sm_{self.arch}")
        return found

    def to_json(self) -> dict:
        return {
            "net": self.net, "arch": self.arch, "dtype": self.dtype, "batch": self.batch,
            "training": self.training, "triton": self.triton_version, "seconds": round(self.seconds, 2),
            "launches": [{"layer": x.layer, "kernel": x.kernel_name, "what": x.what} for x in self.launches],
            "configs": [{k: v for k, v in vars(r).items() if k != "seconds"} for r in self.rows],
            "problems": self.problems(),
        }


def report(lowered: ArchGraph, *, arch: int = 90, dtype: str = "bf16", batch: int = 64,
           training: bool = False, progress=None) -> Report:
    """Compile every kernel launch of ``lowered`` (a graph lowered for the triton backend)
    for ``sm_<arch>``."""
    triton = _triton()[0]
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    start = time.perf_counter()
    items = launches(lowered, batch=batch, dtype=DTYPES[dtype], training=training)
    rows = compile_launches(items, arch=arch, progress=progress)
    return Report(lowered.name, arch, dtype, batch, training, items, rows, time.perf_counter() - start,
                  triton.__version__)


def _layers(names: list[str], width: int = 34) -> str:
    text = names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rep: Report) -> str:
    """The report as a fixed-width table, one row per compiled config."""
    limit = SHARED_LIMIT.get(rep.arch)
    head = (f"{rep.net}: {len(rep.launches)} launches, {len(rep.rows)} configs compiled for sm_{rep.arch} "
            f"(triton {rep.triton_version}, {rep.dtype}, batch {rep.batch}"
            f"{', training' if rep.training else ''}) in {rep.seconds:.1f} s")
    if limit:
        head += f"; shared memory limit {limit / 1024:.0f} KB"
    if not rep.launches:
        return f"{head}\n\nno kernel launches: the net has no conv or LRN layer"
    cols = ("kernel", "variant", "config", "layers", "smem KB", "regs", "spill B", "wgmma", "copy B", "store B",
            "instr/K-iter", "issue %", "status")
    body = []
    for r in rep.rows:
        status = "ok" if r.problem(rep.arch) is None else (
            "ERROR" if r.error else "too big" if not r.fits(rep.arch) else "spills")
        body.append((r.kernel.replace("_kernel", ""), r.variant, r.config, _layers(r.layers),
                     f"{r.shared / 1024:.0f}", str(r.registers), str(r.spill), "yes" if r.wgmma else "-",
                     ",".join(map(str, r.async_copies)) or "-", ",".join(map(str, r.stores)) or "-",
                     "-" if r.loop_instructions is None else f"{r.loop_instructions} ({r.loop_mma} mma)",
                     "-" if r.issue_share is None else f"{100 * r.issue_share:.0f}", status))
    lines = [head, "", *fixed_width(cols, body, right={4, 5, 6, 10, 11})]
    problems = rep.problems()
    lines.append("")
    lines.append("\n".join(problems) if problems else "every config compiles, fits and keeps to registers")
    return "\n".join(lines)
