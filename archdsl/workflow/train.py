"""The training loop: plain PyTorch, a recipe (recipes.py), data (data.py), a run folder (runs.py).

The loss is the cross-entropy of the net's scores (logits): a spec ending in ``softmax`` is
trained without that softmax (:func:`logits_module`), as the papers train it.

A run can be trusted to mean what it says: the spec, parameters, recipe, seed and versions are
recorded before the first step; a checkpoint is written atomically at every evaluation; on
SIGINT or SIGTERM the loop finishes its step (an evaluation stops between two batches), writes
a checkpoint and stops; ``resume=True`` continues from it (evaluating first if it was stopped
during an evaluation), on the CPU bit for bit (the data order and augmentation are functions of
(seed, epoch, sample), and the RNG states are in the checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from archdsl.errors import SpecError
from archdsl.frontend.values import Value
from archdsl.ir import ArchGraph
from archdsl.limits import DEFAULT, Limits
from archdsl.workflow import data as data_mod
from archdsl.workflow import dist, runs
from archdsl.workflow.counts import depth
from archdsl.workflow.recipes import Recipe, recipe as preset


@dataclass(frozen=True)
class Options:
    """How to run (not what to learn): device, precision, checkpoints, reproducibility."""

    device: str = "auto"  # auto: CUDA (this rank's GPU) when there is one, else the CPU
    seed: int = 0
    backend: str = "torch"  # or "triton": archdsl's kernels where they apply
    amp: bool | None = None  # bf16 autocast; default on CUDA only
    channels_last: bool | None = None  # default on CUDA only
    compile: bool = False  # torch.compile the module
    sync_bn: bool = False  # distributed runs: batch statistics over the global batch (CUDA)
    eval_every: int = 0  # iterations between evaluations and checkpoints (0: one epoch)
    stop_after: int = 0  # stop after this iteration as if interrupted (a time-sliced job)
    progress: bool = True  # tqdm bars, on rank 0
    eval_batch: int = 0  # images per evaluation batch and rank (0: twice the training one)


class TrainError(Exception):
    """A run that cannot start: an existing run folder, a mismatched resume, bad data."""


def logits_module(graph: ArchGraph, backend: str = "torch") -> torch.nn.Module:
    """The module of ``graph`` returning scores (a softmax that ends the spec is left out), as
    ``F.cross_entropy`` expects."""
    from archdsl import compile as compile_spec

    return compile_spec(graph, backend=backend, softmax=False)


def _vector(scores: torch.Tensor) -> torch.Tensor:
    """N x C scores from a net that ends in a pooled 1x1 map (SqueezeNet's conv classifier:
    N x C x 1 x 1); other outputs as they are."""
    return scores.flatten(1) if scores.dim() == 4 and scores.shape[2:] == (1, 1) else scores


def learning_rate(recipe: Recipe, iteration: int, total: int, drops: int) -> float:
    """The lr of one iteration: warm-up, then the base lr times gamma per milestone passed
    (multistep) or per plateau seen (plateau)."""
    if iteration < recipe.warmup_iterations:
        return recipe.warmup_lr
    if recipe.schedule == "multistep":
        drops = sum(iteration >= round(m * total) for m in recipe.milestones)
    elif recipe.schedule == "constant":
        drops = 0
    return recipe.lr * recipe.gamma ** drops


def _device(options: Options, world: dist.World) -> str:
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"device {device}: no CUDA device is available")
        if device == "cuda":
            device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(torch.device(device))
    return device


class _Signals:
    """SIGINT/SIGTERM set a flag the loop reads between steps (the main thread only can
    install handlers; elsewhere, e.g. in a notebook's worker thread, signals keep their default)."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _rng_state(world: dist.World) -> list:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if not world.distributed:
        return [state]
    gathered: list = [None] * world.size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def _set_rng_state(states: list, world: dist.World) -> None:
    state = states[world.rank] if world.rank < len(states) else states[0]
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _check_run_folder(out: Path, digest: str, recipe: Recipe, resume: bool) -> None:
    """A new run never overwrites one; a resumed run must be of the same spec, parameters and
    recipe (how it is run, the device or the evaluation interval, may change)."""
    if resume:
        if not (out / runs.CHECKPOINT_FILE).is_file():
            raise TrainError(f"--resume: no checkpoint in {out}")
        recorded = runs.read_run(out)
        if recorded.get("spec_sha256") != digest:
            raise TrainError(f"--resume: {out} trained another spec or other parameters "
                             f"(spec hash {recorded.get('spec_sha256', '?')[:12]}, now {digest[:12]})")
        now = json.loads(json.dumps(recipe.to_json()))
        changed = sorted(k for k in now if recorded.get("recipe", {}).get(k) != now[k])
        if changed:
            raise TrainError(f"--resume: {out} was trained with another recipe (differs in {', '.join(changed)})")
    elif (out / runs.RUN_FILE).exists():
        raise TrainError(f"{out} already holds a run; continue it with --resume or choose another --out")


def _plateau(state: dict, recipe: Recipe, watched: float) -> None:
    """Track the best watched error; on a plateau schedule, count a drop of the lr after more
    than ``patience`` evaluations without improvement (at most ``max_drops``)."""
    if watched < state["best"]:
        state["best"], state["bad"] = watched, 0
        return
    state["bad"] += 1
    if recipe.schedule == "plateau" and state["bad"] > recipe.patience and state["drops"] < recipe.max_drops:
        state["drops"], state["bad"] = state["drops"] + 1, 0


def train(spec: str | Path, data: str | Path | data_mod.Dataset, out: str | Path, *, recipe: Recipe | str = "resnet-cifar",
          params: dict[str, Value] | None = None, net: str | None = None, limits: Limits = DEFAULT,
          options: Options = Options(), resume: bool = False) -> dict:
    """Train a spec and write its run folder; returns ``run.json``'s content.

    Args:
        spec: a .arch file or a bundled spec's name.
        data: ``digits`` (bundled), a CIFAR-10/100 python-batch folder, or an image folder
            (see :mod:`archdsl.workflow.data`), or a :class:`~archdsl.workflow.data.Dataset`.
        out: the run folder. It must not hold a run unless ``resume``.
        recipe: a :class:`Recipe` or a preset's name (:data:`archdsl.workflow.recipes.PRESETS`).
        params: the net's parameters, e.g. ``{"n": 5}``.
        net, limits: as for :func:`archdsl.load`.
        options: device, precision, seed, evaluation interval (:class:`Options`).
        resume: continue the run in ``out`` from its checkpoint.

    Raises:
        SpecError: a bad spec or recipe; TrainError, DataError: a run that cannot start.
    """
    from torch.utils.data import DistributedSampler

    from archdsl.pipeline import load

    params = dict(params or {})
    recipe = preset(recipe) if isinstance(recipe, str) else recipe
    recipe.check()
    out = Path(out)
    world = dist.init("cpu" if options.device == "auto" and not torch.cuda.is_available() else options.device)
    device = _device(options, world)
    if world.distributed and device.startswith("cuda"):
        world = dist.World(world.rank, world.size, world.local_rank, device)
    cuda = device.startswith("cuda")
    amp = cuda if options.amp is None else options.amp
    channels_last = cuda if options.channels_last is None else options.channels_last

    graph = load(spec, net=net, limits=limits, params=params)
    spec_text = runs.canonical_spec(spec, graph.graph.get("params", params), net=net, limits=limits)
    digest = runs.spec_hash(spec_text)
    _check_run_folder(out, digest, recipe, resume)
    dist.barrier(world)  # every rank has looked before rank 0 writes the run folder

    size = (graph.input_shape.h, graph.input_shape.w)
    dataset = data if isinstance(data, data_mod.Dataset) else data_mod.open_data(data, size)
    outputs = graph.output_shape.dims[0]
    if len(dataset.train.classes) > outputs:
        raise TrainError(f"the data has {len(dataset.train.classes)} classes and the net {outputs} outputs "
                         "(set the net's class count, e.g. --set classes=...)")
    if recipe.batch_size % world.size:
        raise TrainError(f"batch size {recipe.batch_size} does not split over {world.size} ranks")
    local_batch = recipe.batch_size // world.size

    torch.manual_seed(options.seed)  # the same initial weights on every rank
    random.seed(options.seed)
    base = logits_module(graph, options.backend).to(device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    if options.sync_bn and world.distributed:
        base = torch.nn.SyncBatchNorm.convert_sync_batchnorm(base)
    model = base
    if world.distributed:
        model = torch.nn.parallel.DistributedDataParallel(base, device_ids=[device] if cuda else None)
    runner = torch.compile(model) if options.compile else model
    # Evaluation runs the bare module: DDP's forward broadcasts buffers, a collective that
    # would hang when the ranks' shards of the test set make different numbers of batches.
    scorer = (torch.compile(base) if options.compile else base) if world.distributed else runner
    torch.manual_seed(options.seed + world.rank)  # dropout masks differ between ranks

    sampler = DistributedSampler(dataset.train, num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=options.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_batch
    if steps_per_epoch < 1:
        raise TrainError(f"{len(dataset.train)} training images make no batch of {recipe.batch_size}")
    total = recipe.iterations or recipe.epochs * steps_per_epoch
    eval_every = options.eval_every or steps_per_epoch
    optimizer = torch.optim.SGD(base.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)

    state = {"iteration": 0, "drops": 0, "best": math.inf, "bad": 0, "tallies": [0.0, 0.0, 0.0],
             "elapsed": 0.0, "pending": None}
    if resume:
        ckpt = runs.load_checkpoint(out / runs.CHECKPOINT_FILE)
        base.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], world)
        state = {k: ckpt.get(k, default) for k, default in state.items()}  # older runs: no pending row
    info = {
        "spec": str(spec), "net": graph.name, "arguments": graph.graph.get("params", params),
        "spec_file": runs.SPEC_FILE, "spec_sha256": digest, "recipe": recipe.to_json(),
        "options": asdict(options), "seed": options.seed, "data": dataset.describe(),
        "counts": {"param_count": graph.params, "mac_count": graph.macs, "depth": depth(graph)},
        "world_size": world.size, "device": device, "amp": amp, "channels_last": channels_last,
        "iterations": total, "steps_per_epoch": steps_per_epoch, "versions": runs.versions(),
        "command": runs.command_line(), "status": "running",
    }
    if world.main:
        runs.write_text(out / runs.SPEC_FILE, spec_text)
        kept = [r for r in runs.read_metrics(out) if r["iteration"] <= state["iteration"]] if resume else []
        runs.write_text(out / runs.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        runs.write_json(out / runs.RUN_FILE, info)

    def inputs(pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = data_mod.normalise(pixels.to(device, non_blocking=True), dataset.mean, dataset.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels.to(device, non_blocking=True)

    def checkpoint() -> None:
        rng = _rng_state(world)
        if world.main:
            runs.save_checkpoint(out / runs.CHECKPOINT_FILE, {
                **state, "model": base.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng})

    def evaluate(signals: _Signals) -> dict | None:
        """The test scores; None when a signal cut the evaluation short (on every rank alike)."""
        test = dataset.test
        if test is None:
            return {}
        base.eval()
        mine = torch.arange(world.rank, len(test), world.size)
        step = options.eval_batch or 2 * local_batch
        # The same number of batches on every rank (the shards differ by one image at most), so
        # that the per-batch "was a signal received?" collective pairs up across ranks.
        starts = range(0, -(-len(test) // world.size), step)
        loss = top1 = top5 = 0.0
        if bar is not None:  # a test set of 50,000 images is a long loop of its own
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"test {graph.name}", unit="batch", leave=False, dynamic_ncols=True)
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            for start in starts:
                if dist.any_rank(signals.received is not None, world):
                    return None
                if start >= len(mine):
                    continue
                x, y = inputs(*data_mod.batch(test, mine[start:start + step], recipe, size, None))
                scores = _vector(scorer(x)).float()
                loss += F.cross_entropy(scores, y, reduction="sum").item()
                best = scores.topk(min(5, scores.shape[1]), dim=1).indices
                top1 += (best[:, 0] != y).sum().item()
                top5 += (best != y[:, None]).all(1).sum().item()
        loss, top1, top5, n = dist.all_sum([loss, top1, top5, float(len(mine))], world)
        return {"test_loss": loss / n, "test_top1_error": top1 / n,
                "test_top5_error": top5 / n if outputs >= 5 else None}

    def record(head: dict, tail: dict, signals: _Signals) -> bool:
        """Evaluate, append the metrics row (``head``, the test scores, ``tail``), checkpoint.

        A signal during the evaluation stops it at once: the checkpoint then holds the row's
        training half, and the resumed run evaluates the same weights before its first step, so
        its metrics are those of a run never stopped. Returns False in that case.
        """
        scores = evaluate(signals)
        model.train()
        if scores is None:
            state["pending"] = {"head": head, "tail": tail}
            checkpoint()
            return False
        state["pending"] = None
        row = {**head, **scores, **tail}
        _plateau(state, recipe, row.get("test_top1_error", row["train_loss"]))
        if world.main:
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                err=f"{row.get('test_top1_error', row['train_error']):.3f}")
        checkpoint()
        return True

    metrics_path = out / runs.METRICS_FILE
    stopped = None
    bar = None
    if options.progress and world.main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=state["iteration"], desc=f"train {graph.name}", unit="it",
                   dynamic_ncols=True)
    started = time.perf_counter() - state["elapsed"]
    interval_start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    with _Signals() as signals:
        if state["pending"] is not None:  # stopped during an evaluation: finish it first
            if not record(**state["pending"], signals=signals):
                stopped = signals.received
            interval_start = time.perf_counter()
        while state["iteration"] < total and stopped is None:
            epoch, position = divmod(state["iteration"], steps_per_epoch)
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.int64)
            draws = data_mod.epoch_draws(len(dataset.train), options.seed, epoch)
            model.train()
            for step in range(position, steps_per_epoch):
                indices = order[step * local_batch:(step + 1) * local_batch]
                x, y = inputs(*data_mod.batch(dataset.train, indices, recipe, size, draws))
                lr = learning_rate(recipe, state["iteration"], total, state["drops"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                    scores = _vector(runner(x))
                loss = F.cross_entropy(scores.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double() * len(y)
                wrong += (scores.detach().argmax(1) != y).sum().double()
                seen += len(y)
                state["iteration"] += 1
                it = state["iteration"]
                if bar is not None:
                    bar.update(1)
                halt = signals.received is not None or (options.stop_after and it >= options.stop_after)
                halt = dist.any_rank(bool(halt), world)
                if it % eval_every == 0 or it == total or halt:
                    tallies = dist.all_sum([loss_sum.item(), wrong.item(), float(seen)], world)
                    state["tallies"] = [a + b for a, b in zip(state["tallies"], tallies)]
                    train_time = time.perf_counter() - interval_start
                    state["elapsed"] = time.perf_counter() - started
                    loss_sum.zero_()
                    wrong.zero_()
                    images_per_s = tallies[2] / train_time if train_time > 0 else None
                    seen = 0
                if it % eval_every == 0 or it == total:
                    summed_loss, summed_wrong, n = state["tallies"]
                    state["tallies"] = [0.0, 0.0, 0.0]
                    head = {"iteration": it, "epoch": round(it / steps_per_epoch, 4), "lr": lr,
                            "train_loss": summed_loss / n, "train_error": summed_wrong / n}
                    tail = {"images_per_s": images_per_s, "elapsed_s": round(state["elapsed"], 3)}
                    if not record(head, tail, signals):
                        halt = True
                    interval_start = time.perf_counter()
                elif halt:
                    checkpoint()
                if halt:
                    stopped = signals.received or "stop_after"
                    break
                if it >= total:
                    break
    if bar is not None:
        bar.close()
    if world.distributed:
        info["replicas_identical"] = dist.identical(base.state_dict(), world)
    dist.barrier(world)
    info["elapsed_s"] = round(time.perf_counter() - started, 3)
    info["completed_iterations"] = state["iteration"]
    if stopped is None:
        info["status"] = "done"
        if world.main:
            runs.write_atomic_bytes(out / runs.MODEL_FILE, lambda f: torch.save(base.state_dict(), f))
    else:
        info["status"] = "interrupted"
        info["signal"] = signal.Signals(stopped).name if isinstance(stopped, int) else stopped
    if world.main:
        runs.write_json(out / runs.RUN_FILE, info)
    return info
