"""Training data: image folders, CIFAR-10/100 batches, the bundled digits, generated images.

Every source gives uint8 RGB images and integer labels; batches are augmented and normalised
here, so that a sample's augmentation depends only on (seed, epoch, sample index): a resumed
run sees the same crops as an uninterrupted one, and a distributed run the same as a single
process with the same global batch.

* **Image folder** (as ``archdsl eval`` reads it, :func:`archdsl.evaluation.image_folder`):
  ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/...`` (or ``test``); a folder of class
  folders alone is training data only.
* **CIFAR-10/100**, the published python version (``data_batch_1..5``, ``test_batch``, or
  ``train``, ``test``): the batches are pickles, and a pickle can run code, so they are read
  with an unpickler that builds nothing but NumPy arrays, lists, dicts and scalars.
* ``digits``: the 1,797 8x8 handwritten digits scikit-learn ships (UCI optdigits), upscaled
  to the net's input size and made RGB; 1,437 for training, 360 for testing (a fixed split).
"""

from __future__ import annotations

import functools
import io
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from archdsl.workflow.recipes import Recipe

BUNDLED = ("digits",)

# AlexNet's PCA colour augmentation: the eigenvalues and eigenvectors of the RGB covariance of
# ImageNet pixels (0..1 scale), as fb.resnet.torch and timm use them.
_PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]])


class DataError(Exception):
    """Something wrong with the training data: a missing folder, a bad batch file."""


@dataclass
class Images:
    """A labelled set of images: uint8 tensors in memory, or files decoded on demand."""

    classes: list[str]
    labels: torch.Tensor  # int64, N
    pixels: torch.Tensor | None = None  # uint8, N x 3 x H x W (in memory)
    files: list[Path] = field(default_factory=list)  # image files (a folder), when pixels is None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Images
    test: Images | None
    mean: tuple[float, float, float]  # per channel, 0..255 scale
    std: tuple[float, float, float]

    def describe(self) -> dict:
        return {"name": self.name, "classes": len(self.train.classes), "train": len(self.train),
                "test": len(self.test) if self.test is not None else 0,
                "mean": list(self.mean), "std": list(self.std)}


# -- sources ------------------------------------------------------------------------------------
def open_data(source: str | Path, size: tuple[int, int]) -> Dataset:
    """The training data ``source`` names: ``digits``, a CIFAR folder, or an image folder.

    Args:
        source: a bundled name (:data:`BUNDLED`) or a folder.
        size: the net's input ``(H, W)``; bundled images are resized to it.
    """
    if str(source) in BUNDLED and not Path(source).exists():
        return digits(size)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"no data folder {str(source)!r} (nor a bundled set: {', '.join(BUNDLED)})")
    if (root / "data_batch_1").is_file() or (root / "train").is_file():
        return cifar(root)
    return image_folders(root)


def _stats(pixels: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = pixels.double()
    return (tuple(round(v, 4) for v in x.mean((0, 2, 3)).tolist()),
            tuple(round(max(v, 1e-3), 4) for v in x.std((0, 2, 3)).tolist()))


def in_memory(name: str, classes: list[str], train: tuple[torch.Tensor, torch.Tensor],
              test: tuple[torch.Tensor, torch.Tensor] | None) -> Dataset:
    """A dataset from uint8 ``N x 3 x H x W`` pixels and labels, normalised by the training
    set's per-channel mean and standard deviation."""
    mean, std = _stats(train[0])
    return Dataset(name, Images(classes, train[1].long(), train[0]),
                   Images(classes, test[1].long(), test[0]) if test is not None else None, mean, std)


@functools.lru_cache(maxsize=4)  # a sweep trains several variants on it in one process
def digits(size: tuple[int, int] = (32, 32)) -> Dataset:
    """scikit-learn's bundled 8x8 digits, upscaled to ``size`` (bilinear) and made RGB."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the bundled digits need scikit-learn: pip install 'archdsl[train]'") from None
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255 / 16)
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    pixels = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    return in_memory("digits", [str(i) for i in range(10)], (pixels[train], labels[train]),
                     (pixels[test], labels[test]))


class _ArraysOnly(pickle.Unpickler):
    """Builds NumPy arrays, and the lists, dicts, strings and numbers pickle makes itself;
    any other global a pickle names (os.system, ...) is refused before it is looked up."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"the batch file names {module}.{name}; a CIFAR batch holds only arrays")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One CIFAR python batch, read with :class:`_ArraysOnly` (keys decoded to text)."""
    try:
        data = path.read_bytes()
        batch = _ArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a CIFAR batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def _cifar_split(paths: Sequence[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = [], []
    for path in paths:
        batch = read_batch(path)
        key = "labels" if "labels" in batch else "fine_labels"
        if "data" not in batch or key not in batch:
            raise DataError(f"{path}: a CIFAR batch has 'data' and 'labels' (or 'fine_labels'); "
                            f"found {', '.join(map(str, batch))}")
        data = torch.as_tensor(batch["data"])
        if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072 \
                or len(batch[key]) != data.shape[0]:
            raise DataError(f"{path}: expected uint8 data of N x 3072 and N labels, found "
                            f"{data.dtype} {tuple(data.shape)} and {len(batch[key])} labels")
        pixels.append(data.view(-1, 3, 32, 32))
        labels.append(torch.as_tensor(list(batch[key]), dtype=torch.int64))
    return torch.cat(pixels), torch.cat(labels)


def cifar(root: str | Path) -> Dataset:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``)."""
    root = Path(root)
    if (root / "data_batch_1").is_file():
        train = sorted(root.glob("data_batch_[0-9]*"))
        test, meta, key, name = root / "test_batch", root / "batches.meta", "label_names", "cifar10"
    else:
        train = [root / "train"]
        test, meta, key, name = root / "test", root / "meta", "fine_label_names", "cifar100"
    train_set = _cifar_split(train)
    test_set = _cifar_split([test]) if test.is_file() else None
    n_classes = int(train_set[1].max()) + 1
    classes = [str(i) for i in range(n_classes)]
    if meta.is_file():
        names = read_batch(meta).get(key)
        if isinstance(names, list) and len(names) >= n_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return in_memory(name, classes, train_set, test_set)


def image_folders(root: str | Path) -> Dataset:
    """``root/train`` and ``root/val`` (or ``root/test``) of class folders, or ``root`` alone."""
    from archdsl.evaluation import IMAGENET_MEAN, IMAGENET_STD, EvalError, image_folder

    root = Path(root)
    try:
        if (root / "train").is_dir():
            classes, samples = image_folder(root / "train")
            held_out = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
            test_classes, test_samples = image_folder(held_out) if held_out else (classes, [])
        else:
            classes, samples = image_folder(root)
            test_classes, test_samples = classes, []
    except EvalError as err:
        raise DataError(str(err)) from None
    if test_classes != classes:
        raise DataError(f"{root}: the test folder's classes differ from the training folder's")

    def images(pairs):
        return Images(classes, torch.tensor([c for _, c in pairs], dtype=torch.int64),
                      files=[p for p, _ in pairs])

    return Dataset(root.name, images(samples), images(test_samples) if test_samples else None,
                   IMAGENET_MEAN, IMAGENET_STD)


# -- batches ------------------------------------------------------------------------------------
def epoch_draws(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Uniform numbers per sample for one epoch's augmentation (crop y, crop x, flip, scale,
    three colour factors): a function of (seed, epoch) only, indexed by sample."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.rand(n, 7, generator=g, dtype=torch.float64)


def _pca_shift(draws: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-sample RGB offsets (0..255 scale) of AlexNet's PCA colour augmentation."""
    # Normal factors from the uniform draws (inverse CDF), so they too depend on the index only.
    alpha = torch.special.ndtri(draws.clamp(1e-6, 1 - 1e-6)).float() * strength
    return 255 * (alpha * _PCA_EIGVAL) @ _PCA_EIGVEC.T


def batch(images: Images, indices: torch.Tensor, recipe: Recipe | None, size: tuple[int, int],
          draws: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``indices`` as a uint8 ``B x 3 x H x W`` batch (with the labels), augmented by
    ``recipe`` with the epoch's ``draws`` when training, centre-cropped otherwise."""
    labels = images.labels[indices]
    if images.pixels is None:
        pixels = torch.stack([_file_sample(images.files[i], recipe, size, None if draws is None else draws[i])
                              for i in indices.tolist()])
        return pixels, labels
    pixels = images.pixels[indices]
    if draws is None or recipe is None:
        return _centre(pixels, size), labels
    d = draws[indices]
    pad = recipe.pad
    if pad:
        pixels = F.pad(pixels, (pad, pad, pad, pad))
    h, w = pixels.shape[2:]
    th, tw = size
    if h < th or w < tw:
        raise DataError(f"images of {h - 2 * pad}x{w - 2 * pad} (padded by {pad}) are smaller than the "
                        f"net's input {th}x{tw}")
    if (h, w) != (th, tw):
        ys = (d[:, 0] * (h - th + 1)).long().tolist()
        xs = (d[:, 1] * (w - tw + 1)).long().tolist()
        pixels = torch.stack([p[:, y:y + th, x:x + tw] for p, y, x in zip(pixels, ys, xs)])
    if recipe.flip:
        flip = d[:, 2] < 0.5
        pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(3), pixels)
    if recipe.color_pca:
        shift = _pca_shift(d[:, 4:7], recipe.color_pca).view(-1, 3, 1, 1)
        pixels = (pixels.float() + shift).round().clamp(0, 255).to(torch.uint8)
    return pixels.contiguous(), labels


def _centre(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = pixels.shape[2:]
    th, tw = size
    if h < th or w < tw:
        raise DataError(f"images of {h}x{w} are smaller than the net's input {th}x{tw}")
    y, x = (h - th) // 2, (w - tw) // 2
    return pixels[:, :, y:y + th, x:x + tw]


def _file_sample(path: Path, recipe: Recipe | None, size: tuple[int, int], d: torch.Tensor | None) -> torch.Tensor:
    from archdsl.evaluation import EvalError, load_image, rescale

    th, tw = size
    low = (recipe.scale_min if recipe else 0) or max(th, tw)
    high = max(low, (recipe.scale_max if recipe else 0) or low)
    try:
        img = load_image(path)
    except EvalError as err:
        raise DataError(str(err)) from None
    if d is None:
        scale = (recipe.test_scale if recipe else 0) or low
        img = rescale(img, scale)
    else:
        img = rescale(img, low + int(d[3] * (high - low + 1)) if high > low else low)
    w, h = img.size
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)
    if d is None:
        return _centre(x.unsqueeze(0), size)[0].contiguous()
    y0, x0 = int(d[0] * (h - th + 1)), int(d[1] * (w - tw + 1))
    x = x[:, y0:y0 + th, x0:x0 + tw]
    if recipe.flip and d[2] < 0.5:
        x = x.flip(2)
    if recipe.color_pca:
        x = (x.float() + _pca_shift(d[4:7].unsqueeze(0), recipe.color_pca).view(3, 1, 1)).round().clamp(0, 255)
        x = x.to(torch.uint8)
    return x.contiguous()


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 pixels to float32 ``(pixel - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() - m) / s


def synthetic(n: int, classes: int = 10, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated images a net can learn from quickly: each class a coloured pattern of its own
    frequency and orientation, plus noise. For tests and benchmarks (no files needed)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    angle = labels.float() * math.pi / classes
    freq = 0.2 + 0.05 * (labels % 3).float()
    wave = torch.sin(freq.view(-1, 1, 1) * (xx * torch.cos(angle).view(-1, 1, 1) + yy * torch.sin(angle).view(-1, 1, 1)))
    colour = torch.stack([(labels % 3 == c).float() for c in range(3)], 1).view(-1, 3, 1, 1) * 0.5 + 0.5
    noise = torch.randn(n, 3, size, size, generator=g) * 0.3
    pixels = ((wave.unsqueeze(1) * colour + noise) * 80 + 128).round().clamp(0, 255).to(torch.uint8)
    return pixels, labels
