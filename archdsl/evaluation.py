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
indices 0, 1, 2, ... (the convention of ImageNet's synset folders), so the number of class
folders must be the number of classes the net scores: with any other number the labels would
not line up with the net's outputs, and the error rates would be wrong without a sign of it
(an empty folder stands for a class without images). Image files are decoded with Pillow,
with its decompression-bomb guard as an error; every decoding failure is an :class:`EvalError`.

Weights are read with ``torch.load(..., weights_only=True)``, which runs no code from the
file, or from ``.safetensors``; a file that is neither says what it looks like.
"""

from __future__ import annotations

import math
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from archdsl.errors import UsageError, printable
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
#: Most test scales one run takes, and the largest grid: each costs a forward pass per image.
MAX_SCALES, MAX_GRID = 16, 32
#: The largest test scale: 1024, or four times the net's input size for a net larger than 256.
MAX_SCALE = 1024
#: Pixels an image may have (Pillow's decompression-bomb limit, enforced as an error here).
MAX_PIXELS = 89_478_485


class EvalError(UsageError):
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
    """An RGB ``PIL.Image`` (grey, palette and alpha images are converted).

    Raises:
        EvalError: the file is not an image Pillow can decode, or it is larger than
            :data:`MAX_PIXELS` (a decompression bomb: a small file that decodes to gigabytes).
    """
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size  # from the header, before anything is decoded
                if w * h > MAX_PIXELS:
                    raise EvalError(f"cannot read image {path}: it is {w}x{h} pixels, over the limit of "
                                    f"{MAX_PIXELS:,} (a decompression bomb?)")
                return img.convert("RGB")
    except EvalError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise EvalError(f"cannot read image {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - decoders raise many types on a corrupt file
        raise EvalError(f"cannot read image {path}: {type(err).__name__}: {str(err)[:200]}") from None


def rescaled_size(w: int, h: int, q: int) -> tuple[int, int]:
    """(width, height) of a ``w`` x ``h`` image rescaled so that its smallest side is ``q``."""
    return (q, max(1, round(h * q / w))) if w <= h else (max(1, round(w * q / h)), q)


def check_rescaled(img, q: int, path: str | Path | None = None) -> None:
    """Refuse an image that rescaling to ``q`` would make larger than :data:`MAX_PIXELS`: a
    strip of 1 x 100,000 pixels (a few hundred bytes of PNG, under the decompression-bomb
    limit) becomes 256 x 25,600,000 at ``q=256``, 20 GB of floats."""
    w, h = rescaled_size(*img.size, q)
    if w * h > MAX_PIXELS:
        name = f"image {path}" if path is not None else "an image"
        raise EvalError(f"cannot rescale {name}: {img.size[0]}x{img.size[1]} pixels with its smallest side at {q} "
                        f"would be {w}x{h}, over the limit of {MAX_PIXELS:,} pixels")


def rescale(img, q: int):
    """Isotropic rescaling: the smallest side becomes ``q`` (bilinear)."""
    check_rescaled(img, q)
    size = rescaled_size(*img.size, q)
    return img if size == img.size else img.resize(size, _pil().Resampling.BILINEAR)


def to_tensor(img, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """A 3 x H x W float32 tensor of ``(pixel - mean) / std``, pixels RGB in 0..255."""
    w, h = img.size
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)
    x = x.permute(2, 0, 1).float()
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``torch.save`` (read with ``weights_only=True``) or a ``.safetensors`` file.

    A checkpoint that wraps the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.

    Raises:
        EvalError: the file is missing, is neither kind of checkpoint (the message says what it
            looks like), or holds something other than a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"no weights file {str(path)!r}")
    kind = file_kind(path)
    if path.suffix == ".safetensors" or kind == "a safetensors file":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise EvalError(f"{path} is a safetensors file; reading it needs the safetensors "
                            "package: pip install safetensors") from None
        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise EvalError(f"cannot read weights {path}: not a valid .safetensors file ({kind}): "
                            f"{str(err)[:200]}") from None
    elif kind not in ("a torch.save file", "a pickle (torch.save's legacy format)"):
        raise EvalError(f"cannot read weights {path}: it is not a torch.save checkpoint or a .safetensors "
                        f"file; it looks like {kind}")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise EvalError(f"cannot read weights {path} ({kind}) with torch.load(weights_only=True), "
                            f"which reads tensors and plain containers only: {first}") from None
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):  # a training checkpoint: weights plus epoch, optimiser...
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvalError(f"{path} does not hold a state dict (a mapping of names to tensors); "
                        f"it holds {type(state).__name__}")
    return dict(state)


# Leading bytes of the formats a weights file is most often mistaken for.
_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x7fELF", "an executable (ELF)"),
    (b"\x89HDF", "an HDF5 file (Keras weights?)"), (b"\x93NUMPY", "a NumPy .npy array"),
    (b"BZh", "a bzip2 archive"), (b"\xfd7zXZ", "an xz archive"), (b"7z\xbc\xaf", "a 7-zip archive"),
)


def file_kind(path: Path) -> str:
    """What a file looks like from its first bytes: ``"a torch.save file"``, ``"a safetensors
    file"``, ``"a PNG image"``, ``"text beginning '...'"``, ``"empty"``..."""
    with path.open("rb") as f:
        head = f.read(256)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                torch_zip = any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return "a damaged ZIP archive"
        return "a torch.save file" if torch_zip else "a ZIP archive that is not a torch.save file"
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:
        return "a pickle (torch.save's legacy format)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 9 and head[8:9] == b"{":  # 8-byte little-endian header size, then JSON
        size = int.from_bytes(head[:8], "little")
        if size < 100 * 2**20:
            return "a safetensors file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary data"
    first = (text.strip().splitlines() or [""])[0]
    return f"text beginning {printable(first[:40])!r}"


# -- the protocol -----------------------------------------------------------------------------

def check_scales(graph: ArchGraph, scales: Sequence[int]) -> None:
    """Test scales from the net's input size to :data:`MAX_SCALE` (or four times the input
    size, for a net larger than 256), at most :data:`MAX_SCALES` of them."""
    smallest = max(graph.input_shape.h, graph.input_shape.w)
    largest = max(MAX_SCALE, 4 * smallest)
    if not scales or any(q < smallest for q in scales):
        raise EvalError(f"each scale (the rescaled image's smallest side) must be at least the "
                        f"net's input size {smallest}, found {', '.join(map(str, scales)) or 'none'}")
    if len(scales) > MAX_SCALES or max(scales) > largest:
        raise EvalError(f"expected at most {MAX_SCALES} scales of at most {largest} pixels, found "
                        f"{len(scales)} up to {max(scales)}")


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
        if batch < 1 or not 1 <= grid <= MAX_GRID:
            raise EvalError(f"batch must be at least 1 and grid from 1 to {MAX_GRID}, found {batch} and {grid}")
        self.graph = graph
        self.crop = (graph.input_shape.h, graph.input_shape.w)
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.batch, self.grid = batch, grid
        # The softmax is applied here, after the averaging the protocol asks for: the modules
        # give scores whether or not the spec (or compile) ends in a softmax.
        scores = drop_output_softmax(graph)
        self.classes = scores.output_shape.c
        self._check_fits(scores, state_dict)
        self.fc = self.dense_net = None
        if "multi-crop" in methods:
            self.fc = self._ready(compile(scores), state_dict)
        if "dense" in methods:
            self.dense_net = self._ready(compile(scores, dense=True), state_dict)

    def _check_fits(self, scores: ArchGraph, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Compare the file's names and shapes with the ordinary module's (built on the meta
        device: no memory), so that a mismatch quotes the file's shapes, not the dense form's."""
        from archdsl.pipeline import compile

        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in compile(scores).state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state_dict.items()}
        problems = [f"{k}: the file has {_dims(found[k])}, the net needs {_dims(expected[k])}"
                    for k in expected if k in found and found[k] != expected[k]]
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        if missing:
            problems.append(f"missing from the file: {_names(missing)}")
        if unexpected:
            problems.append(f"in the file but not in the net: {_names(unexpected)}")
        if problems:
            shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
            raise EvalError(f"the weights do not fit net {self.graph.name!r}:\n  " + "\n  ".join(shown))

    def _ready(self, module: torch.nn.Module, state_dict) -> torch.nn.Module:
        try:
            module.load_state_dict(state_dict, strict=True)
        except RuntimeError as err:
            raise EvalError(f"the weights do not fit net {self.graph.name!r}: {err}") from None
        return module.to(self.device).eval()

    def check_scales(self, scales: Sequence[int]) -> None:
        check_scales(self.graph, scales)

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


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


@dataclass
class Result:
    """Top-1 and top-5 error (percent) of one method over ``images`` images of a task with
    ``classes`` classes (top-5 error is undefined, NaN, with fewer than 5 classes)."""

    method: str
    images: int
    top1_errors: int
    top5_errors: int
    classes: int = 1000

    @property
    def top1(self) -> float:
        return 100.0 * self.top1_errors / self.images if self.images else math.nan

    @property
    def top5(self) -> float:
        if not self.images or self.classes <= 5:  # every class is in the top 5: always right
            return math.nan
        return 100.0 * self.top5_errors / self.images


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
    check_scales(graph, scales)  # the inputs first: building the modules costs seconds
    classes, samples = image_folder(data)
    if len(classes) != graph.output_shape.c:
        raise EvalError(f"{printable(str(data))} has {len(classes)} class folders, but net {graph.name!r} scores "
                        f"{graph.output_shape.c} classes: the labels are the sorted folder indices, so the two "
                        "must match (an empty folder stands for a class without images)")
    evaluator = Evaluator(graph, state_dict, methods=methods, mean=mean, std=std, device=device,
                          batch=batch, grid=grid)
    names = methods + (["dense + multi-crop"] if combine else [])
    results = {name: Result(name, 0, 0, 0, evaluator.classes) for name in names}
    for path, label in _progress(samples, progress):
        img = load_image(path)
        check_rescaled(img, max(scales), path)  # before any scale is computed
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
        top5 = f"{r.top5:.2f} %" if not math.isnan(r.top5) else (
            f"n/a ({r.classes} classes)" if r.classes <= 5 else "n/a")
        rows.append((label, str(r.images), f"{r.top1:.2f} %", top5))
    return "\n".join(fixed_width(header, rows, right=range(1, len(header))))
