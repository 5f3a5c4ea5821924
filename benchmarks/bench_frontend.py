"""Front-end speed: spec -> checked, counted graph.

Compares, side by side in one run:
  * archdsl.load("resnet152") (parse, expand, infer every shape, count parameters and MACs)
    against torch.fx.symbolic_trace of the same network written by hand in PyTorch
    (tracing alone: no shapes, no counts; the module is built before the clock starts);
  * the 1202-layer CIFAR ResNet (n=200) against the 0.5 s budget;
  * DAG-shaped nets: GoogLeNet, DenseNet-121 and DenseNet-264 (264 layers, 58 + 64 + ...
    concatenations), the last against twice ResNet-152's time;
  * cost against depth (CIFAR ResNets, n = 25 ... 400), which should be linear.

    python benchmarks/bench_frontend.py            # prints a markdown table
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.fx
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import archdsl  # noqa: E402
from archdsl.limits import Limits  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py)


def timed(fn, repeat: int) -> float:
    fn()  # warm: grammar compiled, files cached
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)  # the least disturbed run, as timeit advises


# -- ResNet-152 as one would write it in PyTorch (v1 strides, option B shortcuts) ----------
class Bottleneck(nn.Module):
    def __init__(self, cin: int, c: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * c)
        self.proj = None
        if stride != 1 or cin != 4 * c:
            self.proj = nn.Sequential(nn.Conv2d(cin, 4 * c, 1, stride, bias=False), nn.BatchNorm2d(4 * c))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet(nn.Module):
    def __init__(self, depths=(3, 8, 36, 3), classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), depths)):
            for j in range(n):
                blocks.append(Bottleneck(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = 4 * c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    rows = []
    with torch.device("meta"):
        model = ResNet()
    assert sum(p.numel() for p in model.parameters()) == archdsl.load("resnet152").params == 60_192_808
    fx_time = timed(lambda: torch.fx.symbolic_trace(model), args.repeat)
    dsl_time = timed(lambda: archdsl.load("resnet152"), args.repeat)
    rows.append(("ResNet-152: archdsl.load (checked + counted)", f"{dsl_time * 1e3:.1f} ms", ""))
    rows.append(("ResNet-152: torch.fx.symbolic_trace (trace only)", f"{fx_time * 1e3:.1f} ms",
                 f"archdsl / fx = {dsl_time / fx_time:.2f}"))

    googlenet = timed(lambda: archdsl.load("googlenet"), args.repeat)
    rows.append(("GoogLeNet: archdsl.load", f"{googlenet * 1e3:.1f} ms", f"{len(archdsl.load('googlenet'))} nodes"))
    densenet121 = timed(lambda: archdsl.load("densenet121"), args.repeat)
    rows.append(("DenseNet-121: archdsl.load", f"{densenet121 * 1e3:.1f} ms",
                 f"{len(archdsl.load('densenet121'))} nodes"))
    densenet264 = timed(lambda: archdsl.load("densenet121", blocks=(6, 12, 64, 48)), args.repeat)
    rows.append(("DenseNet-264 (blocks=[6,12,64,48]): archdsl.load", f"{densenet264 * 1e3:.1f} ms",
                 f"DenseNet-264 / ResNet-152 = {densenet264 / dsl_time:.2f} (budget 2)"))

    big = timed(lambda: archdsl.load("cifar_resnet", n=200), args.repeat)
    rows.append(("CIFAR ResNet-1202 (n=200): archdsl.load", f"{big * 1e3:.1f} ms", "budget 500 ms"))

    limits = Limits(max_nodes=1_000_000)
    per_layer = []
    for n in (25, 50, 100, 200, 400, 800):
        t = timed(lambda: archdsl.load("cifar_resnet", n=n, limits=limits), args.repeat)
        layers = 6 * n + 2
        per_layer.append(t / layers)
        rows.append((f"CIFAR ResNet-{layers} (n={n})", f"{t * 1e3:.1f} ms", f"{t / layers * 1e6:.1f} us/layer"))
    spread = max(per_layer) / min(per_layer)
    rows.append(("depth scaling: max/min time per layer", f"{spread:.2f}", "1.0 = linear"))

    head = [
        f"Front-end speed ({datetime.date.today()}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}; "
        "best of repeated runs after one warm-up)",
        "",
        "| measurement | time | note |",
        "| --- | ---: | --- |",
    ]
    print(common.write_table("\n".join(head + [f"| {a} | {b} | {c} |" for a, b, c in rows]), "frontend.md"))


if __name__ == "__main__":
    main()
