"""Training throughput: ``archdsl train``'s loop against a hand-written PyTorch loop.

Both train the same module (the spec's logits module), on the same in-memory CIFAR-style
images with the same augmentation (4-pixel pad, random crop, flip), optimiser (SGD, momentum,
weight decay), batch and precision (bf16 autocast and channels_last on CUDA, fp32 on the CPU).

A shared machine's load changes from one minute to the next, so the two loops take turns in
short chunks of steps within one process: ``--chunk`` steps of the hand loop, then ``--chunk``
steps of ``archdsl train`` (``stop_after`` ends its chunk with a checkpoint, ``resume``
continues it), and so on. Every step is timed on its own (archdsl's metrics give each step's
images/s with evaluation and checkpoint excluded; both loops read their loss after every
step), the first step of every chunk is left out (a resumed run's first step warms up again),
and the table gives the median and the best step of each loop and their ratios.

    python benchmarks/bench_train.py                       # ResNet-20, batch 128
    python benchmarks/bench_train.py --set n=1             # a smaller net: the loop's overhead shows more
    python benchmarks/bench_train.py --smoke               # every code path, tiny (CI)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import archdsl  # noqa: E402
from archdsl.frontend.values import parse_cli_value  # noqa: E402
from archdsl.workflow import data  # noqa: E402
from archdsl.workflow.recipes import recipe  # noqa: E402
from archdsl.workflow.runs import read_metrics  # noqa: E402
from archdsl.workflow.train import Options, logits_module, train  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py)


def hand_loop(graph, images, labels, mean, std, batch, device, cuda, seed):
    """Images/s of each step of a plain PyTorch training loop, written as one would by hand
    (a generator: the caller takes as many steps as it wants, when it wants)."""
    torch.manual_seed(seed)
    model = logits_module(graph).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    order = torch.randperm(len(labels))
    model.train()
    for step in itertools.count():
        start = time.perf_counter()
        idx = order[(step * batch) % len(labels):][:batch]
        x = F.pad(images[idx], (4, 4, 4, 4))
        ys, xs = torch.randint(0, 9, (batch,)).tolist(), torch.randint(0, 9, (batch,)).tolist()
        x = torch.stack([img[:, a:a + 32, b:b + 32] for img, a, b in zip(x, ys, xs)])
        flip = torch.rand(batch) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        x = (x.to(device, non_blocking=True).float() - m) / s
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[idx].to(device, non_blocking=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # wait for the step, as archdsl's interval ends with a read of its tallies
        yield batch / (time.perf_counter() - start)


def archdsl_chunk(spec, params, dataset, batch, total, done, chunk, device, out: Path) -> list[float]:
    """Steps ``done + 1 .. done + chunk`` of one ``archdsl train`` run; their images/s."""
    r = recipe("resnet-cifar", batch_size=batch, iterations=total, schedule="constant")
    train(spec, dataset, out, recipe=r, params=params, resume=done > 0,
          options=Options(device=device, eval_every=1, progress=False, stop_after=done + chunk))
    return [row["images_per_s"] for row in read_metrics(out)[done:done + chunk]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="cifar_resnet")
    ap.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=4, help="steps per turn of each loop (default 4)")
    ap.add_argument("--turns", type=int, default=5, help="turns of each loop (default 5)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny net and batch, two turns: checks the script")
    args = ap.parse_args()
    if args.smoke:
        args.params, args.batch, args.chunk, args.turns = ["n=1"], 8, 2, 2
    if args.chunk < 2:
        ap.error("--chunk must be at least 2 (the first step of each chunk is not counted)")
    params = {k: parse_cli_value(v) for k, v in (p.split("=", 1) for p in args.params)}
    graph = archdsl.load(args.spec, **params)
    if graph.input_shape.dims != (3, 32, 32):
        print("bench_train.py: the benchmark's data are 3x32x32 CIFAR-style images", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    total = args.chunk * args.turns
    images, labels = data.synthetic(args.batch * total, 10, 32, seed=0)
    dataset = data.in_memory("synthetic", [str(i) for i in range(10)], (images, labels), None)

    hand, ours = [], []
    started = time.perf_counter()
    steps = hand_loop(graph, images, labels, dataset.mean, dataset.std, args.batch, args.device, cuda, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for turn in range(args.turns):
            hand += list(itertools.islice(steps, args.chunk))[1:]
            ours += archdsl_chunk(args.spec, params, dataset, args.batch, total, turn * args.chunk, args.chunk,
                                  args.device, Path(tmp) / "run")[1:]
    h, a = statistics.median(hand), statistics.median(ours)
    hb, ab = max(hand), max(ours)
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    settings = ", ".join(f"{k}={v}" for k, v in params.items())
    lines = [
        f"Training throughput, {graph.name}" + (f" ({settings})" if settings else "")
        + f", batch {args.batch}, {args.turns} turns of {args.chunk} steps per loop "
          f"({len(hand)} + {len(ours)} steps timed), {time.perf_counter() - started:.0f} s",
        f"- device: {device}{' -- SMOKE RUN, the numbers mean nothing' if args.smoke else ''}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {datetime.date.today()}",
        f"- precision: {'bf16 autocast, channels_last' if cuda else 'fp32'}",
        "",
        "| loop | images/s, median step | ratio | images/s, best step | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| hand-written PyTorch | {h:,.1f} | 1.000 | {hb:,.1f} | 1.000 |",
        f"| archdsl train | {a:,.1f} | **{a / h:.3f}** | {ab:,.1f} | {ab / hb:.3f} |",
    ]
    print(common.write_table("\n".join(lines), "train.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
