"""The VGG test protocol (Simonyan & Zisserman 2014, section 3.2) over a labelled image folder.

Dense evaluation (:meth:`Evaluator.dense`)
    Rescale the image isotropically so its smallest side is Q; run the fully-convolutional
    net (:mod:`archdsl.passes.fc_to_conv`) over the whole image; average the class score map
    over space; take the softmax of that score vector for the image and for its horizontal
    flip and average the two. Over several scales Q the class posteriors are averaged.

Multi-crop evaluation (:meth:`Evaluator.multi_crop`)
    At each scale, a ``grid`` x ``grid`` regular grid of crops the size of the spec's input
    (224x224 for VGG) and their flips, 2 x 5 x 5 = 50 crops per scale, 150 over three scales,
    each through the ordinary (fc) net; the softmax posteriors of all crops are averaged.

Combined: the average of the dense and the multi-crop posteriors.

Scores are taken before any softmax that ends the net (the softmax is applied here, after the
spatial average), so a spec that ends in ``softmax`` and one that does not give the same result.
Pixels are RGB in 0..255; the input is ``(pixel - mean) / std`` per channel. The default is
VGG's: subtract the ImageNet mean RGB value, no scaling (``std`` 1); weights trained the
torchvision way take ``mean=IMAGENET_MEAN, std=IMAGENET_STD``.

The image folder holds one sub-folder per class; sorted sub-folder names give the class
indices 0, 1, 2, ... (the convention of ImageNet's synset folders); image files are decoded
with Pillow.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from archdsl.ir import ArchGraph
from archdsl.tables import fixed_width

#: ImageNet mean RGB value on the 0..255 scale (VGG's normalisation: subtract it, nothing else).
IMAGENET_MEAN = (123.68, 116.779, 103.939)
#: ImageNet per-channel standard deviation on the 0..255 scale (torchvision's 0.229, 0.224, 0.225).
IMAGENET_STD = (58.395, 57.12, 57.375)
#: File name suffixes read as images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm",
                            ".tif", ".tiff"})
METHODS = ("dense", "multi-crop", "dense + multi-crop")


class EvalError(Exception):
    """Something wrong with the evaluation's inputs: the weights, the image folder, the scales."""


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - a declared dependency
        raise EvalError("image evaluation needs Pillow: pip install pillow") from None
    return Image


# -- data -------------------------------------------------------------------------------------

def image_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes (sorted sub-folder names) and the ``(image path, class index)`` samples."""
    root = Path(root)
    if not root.is_dir():
        raise EvalError(f"no image folder {str(root)!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EvalError(f"{root} has no class sub-folders (expected one folder of images per class)")
    samples = []
    for index, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append((path, index))
    if not samples:
        raise EvalError(f"no image files under {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes, samples


def load_image(path: str | Path):
    """An RGB ``PIL.Image`` (grey, palette and alpha images are converted)."""
    Image = _pil()
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise EvalError(f"cannot read image {path}: {err}") from None


def rescale(img, q: int):
    """Isotropic rescaling: the smallest side becomes ``q`` (bilinear)."""
    w, h = img.size
    if w <= h:
        size = (q, max(1, round(h * q / w)))
    else:
        size = (max(1, round(w * q / h)), q)
    return img if size == (w, h) else img.resize(size, _pil().Resampling.BILINEAR)


def to_tensor(img, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """A 3 x H x W float32 tensor of ``(pixel - mean) / std``, pixels RGB in 0..255."""
    w, h = img.size
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)
    x = x.permute(2, 0, 1).float()
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``torch.save`` (read with ``weights_only=True``) or a ``.safetensors`` file.

    A checkpoint that wraps the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"no weights file {str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise EvalError(f"{path} is a safetensors file; reading it needs the safetensors "
                            "package: pip install safetensors") from None
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise EvalError(f"cannot read weights {path}: {err}") from None
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):  # a training checkpoint: weights plus epoch, optimiser...
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvalError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


# -- the protocol -----------------------------------------------------------------------------

def crop_offsets(size: int, crop: int, grid: int) -> list[int]:
    """``grid`` evenly spaced offsets of a ``crop``-long window in ``size`` (first at 0, last at the end)."""
    if grid == 1:
        return [(size - crop) // 2]
    return [round(i * (size - crop) / (grid - 1)) for i in range(grid)]


class Evaluator:
    """The ordinary and the dense form of one net with its weights, ready to score images.

    Args:
        graph: the net as built at its own input size (from :func:`archdsl.load`); its input
            size is the crop size of multi-crop evaluation.
        state_dict: weights of the ordinary (fc) module; the dense module loads them as they are.
        methods: which forms to build: ``"dense"``, ``"multi-crop"`` or both.
        mean, std: the input normalisation, per RGB channel on the 0..255 scale.
        device: where to run.
        batch: crops per forward pass in multi-crop evaluation (dense evaluation runs an image
            and its flip together, one scale at a time: image sizes differ).
        grid: multi-crop grid size (5: 5 x 5 crops and their flips per scale).
    """

    def __init__(self, graph: ArchGraph, state_dict: Mapping[str, torch.Tensor], *,
                 methods: Iterable[str] = ("dense",), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = (1.0, 1.0, 1.0), device: str | torch.device = "cpu",
                 batch: int = 50, grid: int = 5):
        from archdsl.pipeline import compile
        from archdsl.passes.logits import drop_output_softmax

        methods = set(methods)
        unknown = methods - {"dense", "multi-crop"}
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}; expected dense, multi-crop")
        if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
            raise EvalError("mean and std take three values (R, G, B), std above 0")
        if batch < 1 or grid < 1:
            raise EvalError("batch and grid must be at least 1")
        self.graph = graph
        self.crop = (graph.input_shape.h, graph.input_shape.w)
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.batch, self.grid = batch, grid
        scores = drop_output_softmax(graph)
        self.classes = scores.output_shape.c
        self.fc = self.dense_net = None
        if "multi-crop" in methods:
            self.fc = self._ready(compile(scores), state_dict)
        if "dense" in methods:
            self.dense_net = self._ready(compile(scores, dense=True), state_dict)

    def _ready(self, module: torch.nn.Module, state_dict) -> torch.nn.Module:
        try:
            module.load_state_dict(state_dict, strict=True)
        except RuntimeError as err:
            raise EvalError(f"the weights do not fit net {self.graph.name!r}: {err}") from None
        return module.to(self.device).eval()

    def check_scales(self, scales: Sequence[int]) -> None:
        smallest = max(self.crop)
        if not scales or any(q < smallest for q in scales):
            raise EvalError(f"each scale (the rescaled image's smallest side) must be at least the "
                            f"net's input size {smallest}, found {', '.join(map(str, scales)) or 'none'}")

    def _input(self, img, q: int) -> torch.Tensor:
        return to_tensor(rescale(img, q), self.mean, self.std)

    @torch.inference_mode()
    def dense(self, img, scales: Sequence[int]) -> torch.Tensor:
        """Class posteriors (``classes``,) of one PIL image by dense evaluation over ``scales``."""
        total = torch.zeros(self.classes, dtype=torch.float64)
        for q in scales:
            x = self._input(img, q).to(self.device)
            score_map = self.dense_net(torch.stack([x, x.flip(-1)]))  # 2 x classes x h x w
            scores = score_map.float().mean(dim=(2, 3))
            total += torch.softmax(scores, dim=1).mean(0).double().cpu()
        return total / len(scales)

    @torch.inference_mode()
    def multi_crop(self, img, scales: Sequence[int]) -> torch.Tensor:
        """Class posteriors of one PIL image by multi-crop evaluation: per scale a grid x grid
        grid of crops of the net's input size and their flips, through the ordinary net."""
        ch, cw = self.crop
        total = torch.zeros(self.classes, dtype=torch.float64)
        for q in scales:
            x = self._input(img, q).to(self.device)
            _, h, w = x.shape
            crops = [x[:, i:i + ch, j:j + cw] for i in crop_offsets(h, ch, self.grid)
                     for j in crop_offsets(w, cw, self.grid)]
            crops += [c.flip(-1) for c in crops]
            probs = []
            for start in range(0, len(crops), self.batch):
                scores = self.fc(torch.stack(crops[start:start + self.batch])).float()
                probs.append(torch.softmax(scores.flatten(1), dim=1))
            total += torch.cat(probs).mean(0).double().cpu()
        return total / len(scales)

    def crops_per_image(self, scales: Sequence[int]) -> int:
        return 2 * self.grid * self.grid * len(scales)


@dataclass
class Result:
    """Top-1 and top-5 error (percent) of one method over ``images`` images."""

    method: str
    images: int
    top1_errors: int
    top5_errors: int

    @property
    def top1(self) -> float:
        return 100.0 * self.top1_errors / self.images if self.images else math.nan

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_errors / self.images if self.images else math.nan


def _tally(result: Result, posteriors: torch.Tensor, label: int) -> None:
    top = torch.topk(posteriors, min(5, posteriors.numel())).indices.tolist()
    result.images += 1
    result.top1_errors += top[0] != label
    result.top5_errors += label not in top


def evaluate(graph: ArchGraph, state_dict: Mapping[str, torch.Tensor], data: str | Path, *,
             scales: Sequence[int] = (256, 384, 512), dense: bool = True, multi_crop: bool = False,
             combine: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
             std: Sequence[float] = (1.0, 1.0, 1.0), device: str | torch.device = "cpu",
             batch: int = 50, grid: int = 5, progress: bool | None = None) -> list[Result]:
    """Top-1/top-5 error of ``graph`` with ``state_dict`` on the image folder ``data``.

    ``dense``, ``multi_crop``: which protocols to run; ``combine`` runs both and adds their
    combination (the average of the two posteriors). ``progress``: a progress bar on stderr
    (None: only when stderr is a terminal). Returns one :class:`Result` per method, in the
    order dense, multi-crop, dense + multi-crop.
    """
    if combine:
        dense = multi_crop = True
    if not (dense or multi_crop):
        raise EvalError("nothing to evaluate: choose dense and/or multi-crop")
    methods = [m for m, on in (("dense", dense), ("multi-crop", multi_crop)) if on]
    evaluator = Evaluator(graph, state_dict, methods=methods, mean=mean, std=std, device=device,
                          batch=batch, grid=grid)
    evaluator.check_scales(scales)
    classes, samples = image_folder(data)
    if len(classes) > evaluator.classes:
        raise EvalError(f"{data} has {len(classes)} class folders, but net {graph.name!r} scores "
                        f"{evaluator.classes} classes")
    names = methods + (["dense + multi-crop"] if combine else [])
    results = {name: Result(name, 0, 0, 0) for name in names}
    for path, label in _progress(samples, progress):
        img = load_image(path)
        posteriors = {}
        if dense:
            posteriors["dense"] = evaluator.dense(img, scales)
        if multi_crop:
            posteriors["multi-crop"] = evaluator.multi_crop(img, scales)
        if combine:
            posteriors["dense + multi-crop"] = (posteriors["dense"] + posteriors["multi-crop"]) / 2
        for name, p in posteriors.items():
            _tally(results[name], p, label)
    return list(results.values())


def _progress(samples, enabled: bool | None):
    if enabled is False:
        return samples
    try:
        from tqdm import tqdm
    except ImportError:  # no progress bar without tqdm
        return samples
    return tqdm(samples, desc="images", unit="img", file=sys.stderr,
                disable=None if enabled is None else not enabled)


def table(results: Sequence[Result], crops: dict[str, int] | None = None) -> str:
    """The results as a fixed-width table: method, images, top-1 and top-5 error (percent)."""
    header = ("method", "images", "top-1 error", "top-5 error")
    rows = []
    for r in results:
        label = r.method + (f" ({crops[r.method]} crops)" if crops and r.method in crops else "")
        rows.append((label, str(r.images), f"{r.top1:.2f} %", f"{r.top5:.2f} %"))
    return "\n".join(fixed_width(header, rows, right=range(1, len(header))))
