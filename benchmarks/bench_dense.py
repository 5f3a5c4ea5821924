"""Images per second: dense multi-scale evaluation against 150-crop evaluation, VGG-16 (vgg_d).

Both follow the VGG test protocol as :mod:`archdsl.evaluation` runs it, per image and end to
end (rescaling, normalisation, forward passes, softmax and averaging), on synthetic 4:3 RGB
images (500x375, ImageNet's most common size); the median time per image is reported:

    dense        the fully-convolutional net over the whole image and its flip, at each scale Q
    multi-crop   a 5x5 grid of 224x224 crops and their flips per scale: 150 crops over 3 scales,
                 through the ordinary (fc) net in batches of --batch

Multiply-accumulates per image are counted from the graphs (the dense form's at each rescaled
size), so the time ratio can be read against the work ratio.

    python benchmarks/bench_dense.py                          # CPU: VGG-16 at 1/8 width
    python benchmarks/bench_dense.py --device cuda --width-div 1 --images 32

On the CPU the default is a width-reduced VGG-16 (every conv and hidden fc width divided by
--width-div, 8: 8..64 channels, fc-512) at the full scales Q in {256, 384, 512}: the same layer
structure, kernel sizes and map sizes as VGG-16, about 1/64 of its MACs. On a GPU use the full
net (--width-div 1). Weights are random (speed does not depend on them). The markdown table is
written to ``$OUT/dense.md`` when ``OUT`` is set, and printed.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import archdsl  # noqa: E402
from archdsl import evaluation as ev  # noqa: E402
from archdsl.passes.fc_to_conv import fc_to_conv  # noqa: E402
from archdsl.passes.logits import drop_output_softmax  # noqa: E402
from archdsl.registry import resolve_spec  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py)


def vgg16_text(width_div: int) -> str:
    """The bundled vgg_d spec with every conv and hidden fc width divided by ``width_div``."""
    text = resolve_spec("vgg_d").read_text()
    if width_div == 1:
        return text
    text = re.sub(r"conv3-(\d+)", lambda m: f"conv3-{int(m[1]) // width_div}", text)
    return re.sub(r"fc-(\d+)", lambda m: f"fc-{int(m[1]) // width_div}", text)


def images(n: int, size=(500, 375)):
    Image = ev._pil()
    gen = torch.Generator().manual_seed(0)
    w, h = size
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen).numpy())
            for _ in range(n)]


def dense_macs(graph: archdsl.ArchGraph, size, scales) -> int:
    total = 0
    for q in scales:
        w, h = ev.rescale(ev._pil().new("RGB", size), q).size
        total += 2 * fc_to_conv(graph, f"3x{h}x{w}").macs  # the image and its flip
    return total


def timed(fn, imgs, scales, device) -> float:
    """Median seconds per image (after one warm-up image): robust to a busy shared machine."""
    fn(imgs[0], scales)
    times = []
    for img in imgs[1:]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(img, scales)  # returns a CPU tensor: synchronises with the device
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width-div", type=int, default=None,
                    help="divide VGG-16's widths by this (default 8 on the CPU, 1 on a GPU)")
    ap.add_argument("--scales", default="256,384,512", help="test scales Q (default 256,384,512)")
    ap.add_argument("--images", type=int, default=None, help="images timed (default 3 on the CPU, 32 on a GPU)")
    ap.add_argument("--batch", type=int, default=50, help="crops per forward pass in multi-crop evaluation")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        print("error: --device cuda, but no CUDA device is available", file=sys.stderr)
        return 2
    width_div = args.width_div or (1 if on_gpu else 8)
    n_images = args.images or (32 if on_gpu else 3)
    scales = [int(q) for q in args.scales.split(",")]
    if on_gpu:
        torch.backends.cudnn.benchmark = True

    graph = archdsl.loads(vgg16_text(width_div), file="vgg_d.arch")
    state = archdsl.compile(graph).state_dict()
    evaluator = ev.Evaluator(graph, state, methods=["dense", "multi-crop"], device=device, batch=args.batch)
    imgs = images(n_images + 1)
    crop_macs = drop_output_softmax(graph).macs
    rows = []
    for method, fn, passes, macs in [
        ("dense", evaluator.dense, f"{2 * len(scales)} (whole image + flip per scale)",
         dense_macs(graph, imgs[0].size, scales)),
        ("multi-crop", evaluator.multi_crop, f"{evaluator.crops_per_image(scales)} crops",
         evaluator.crops_per_image(scales) * crop_macs),
    ]:
        seconds = timed(fn, imgs, scales, device)
        rows.append((method, passes, macs, seconds))
        print(f"  {method}: {1 / seconds:.2f} images/s", file=sys.stderr)

    device_name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or platform.machine())
    net = "VGG-16 (vgg_d)" + (f", widths / {width_div}" if width_div > 1 else "")
    (_, _, dense_m, dense_s), (_, _, crop_m, crop_s) = rows
    lines = [
        "### Dense vs multi-crop evaluation",
        "",
        f"- device: {device} ({device_name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, archdsl {archdsl.__version__}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- net: {net}, fp32, random weights; scales Q = {', '.join(map(str, scales))}; "
        f"{n_images} synthetic {imgs[0].size[0]}x{imgs[0].size[1]} images (median time per image); "
        f"multi-crop batch {args.batch}",
        "",
        "| method | forward passes per image | GMACs per image | images/s |",
        "|---|---|---:|---:|",
        *(f"| {m} | {p} | {macs / 1e9:.2f} | {1 / s:.2f} |" for m, p, macs, s in rows),
        "",
        f"Dense is **{crop_s / dense_s:.1f}x** faster than {evaluator.crops_per_image(scales)}-crop evaluation "
        f"({crop_m / dense_m:.1f}x fewer multiply-accumulates).",
    ]
    print(common.write_table("\n".join(lines), "dense.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
