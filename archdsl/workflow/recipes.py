"""The papers' training recipes as named presets; every field can be overridden.

Sources:

* ``resnet-cifar``: He et al. 2016, section 4.2: SGD, batch 128, momentum 0.9, weight decay
  1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k (here: at 50 % and 75 %
  of the run, which is the same thing for 64k iterations and scales with a shorter run);
  4 pixels padded on each side, a random 32x32 crop or its flip.
* ``resnet-imagenet``: He et al. 2016, section 3.4: SGD, batch 256, momentum 0.9, weight decay
  1e-4, lr 0.1 divided by 10 when the error plateaus, up to 60e4 iterations; the shorter side
  resized at random in [256, 480], a random crop or its flip, the standard colour augmentation.
* ``vgg``: Simonyan & Zisserman 2014, section 3.1: SGD, batch 256, momentum 0.9, weight decay
  5e-4, lr 1e-2 divided by 10 when the validation accuracy stops improving, three times, 74
  epochs; scale jittered in [256, 512], a random crop, flip, random RGB colour shift.
* ``alexnet``: Krizhevsky et al. 2012, section 5: SGD, batch 128, momentum 0.9, weight decay
  5e-4, lr 0.01 divided by 10 when the validation error stops improving, three times, about 90
  epochs; random 224 crops of the 256 image and flips; PCA colour augmentation.

Dropout is part of the spec (``dropout`` layers), not of the recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from archdsl.errors import SpecError

SCHEDULES = ("multistep", "plateau", "constant")


@dataclass(frozen=True)
class Recipe:
    """How to train: optimiser, learning-rate schedule, batch, augmentation, length."""

    name: str = "custom"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    batch_size: int = 128  # global: split evenly over the ranks of a distributed run
    schedule: str = "multistep"  # multistep | plateau | constant
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of the run's iterations
    gamma: float = 0.1  # the factor the lr is multiplied by at a milestone or a plateau
    patience: int = 2  # plateau: evaluations without improvement before the lr drops
    max_drops: int = 3  # plateau: the lr drops at most this many times
    epochs: int = 0  # the run's length: epochs, unless iterations is set
    iterations: int = 0  # the run's length in iterations (wins over epochs when both are set)
    pad: int = 0  # in-memory images: zero pixels padded on each side before a random crop
    scale_min: int = 0  # image folders: the shorter side is resized to a random value in
    scale_max: int = 0  # [scale_min, scale_max] before a random crop (0: the net's input size)
    test_scale: int = 0  # image folders: shorter side before the centre crop at test (0: scale_min)
    flip: bool = True  # a horizontal flip with probability 1/2
    color_pca: float = 0.0  # AlexNet's PCA colour augmentation: std of the eigenvalue factors
    warmup_iterations: int = 0  # lr warmup_lr for this many iterations first (ResNet-110 used 400)
    warmup_lr: float = 0.01

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with fields changed (values may be the text ``--lr 0.05`` gives); checked."""
        known = {f.name: f for f in dataclasses.fields(self)}
        typed = {}
        for key, value in changes.items():
            key = key.replace("-", "_")
            if key not in known:
                raise SpecError(f"recipe: no field {key!r} (fields: {', '.join(known)})")
            typed[key] = _typed(known[key], value) if isinstance(value, str) else value
        # The run's length is one thing: a preset counted in iterations (resnet-cifar's 64k)
        # given ``epochs=5`` trains 5 epochs, not the preset's iterations, and the other way round.
        if "epochs" in typed and "iterations" not in typed:
            typed["iterations"] = 0
        elif "iterations" in typed and "epochs" not in typed:
            typed["epochs"] = 0
        recipe = dataclasses.replace(self, **typed)
        recipe.check()
        return recipe

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise SpecError(f"recipe: schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.batch_size < 1 or self.lr <= 0 or self.epochs < 0 or self.iterations < 0:
            raise SpecError("recipe: batch_size and lr must be positive, epochs and iterations not negative")
        if not self.epochs and not self.iterations:
            raise SpecError("recipe: set the run's length, epochs or iterations")
        if any(not 0 < m < 1 for m in self.milestones):
            raise SpecError(f"recipe: milestones are fractions of the run in (0, 1), found {self.milestones}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _typed(f: dataclasses.Field, text: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            low = text.strip().lower()
            if low not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(text)
            return low in ("true", "yes", "1")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple"):
            return tuple(float(v) for v in text.split(",") if v.strip())
        return text
    except ValueError:
        raise SpecError(f"recipe: {f.name} expects {kind}, found {text!r}") from None


PRESETS: dict[str, Recipe] = {
    "resnet-cifar": Recipe(name="resnet-cifar", lr=0.1, weight_decay=1e-4, batch_size=128,
                           schedule="multistep", milestones=(0.5, 0.75), iterations=64000, pad=4),
    "resnet-imagenet": Recipe(name="resnet-imagenet", lr=0.1, weight_decay=1e-4, batch_size=256,
                              schedule="plateau", max_drops=3, iterations=600000, scale_min=256,
                              scale_max=480, test_scale=256, color_pca=0.1),
    "vgg": Recipe(name="vgg", lr=0.01, weight_decay=5e-4, batch_size=256, schedule="plateau",
                  max_drops=3, epochs=74, scale_min=256, scale_max=512, test_scale=384, color_pca=0.1),
    "alexnet": Recipe(name="alexnet", lr=0.01, weight_decay=5e-4, batch_size=128, schedule="plateau",
                      max_drops=3, epochs=90, scale_min=256, scale_max=256, test_scale=256, color_pca=0.1),
}


def recipe(name: str, **overrides: Any) -> Recipe:
    """A named preset with fields overridden.

    Args:
        name: one of :data:`PRESETS` (``resnet-cifar``, ``resnet-imagenet``, ``vgg``, ``alexnet``).
        overrides: field values, e.g. ``iterations=500, lr=0.05``.
    """
    if name not in PRESETS:
        raise SpecError(f"no recipe {name!r} (recipes: {', '.join(PRESETS)})")
    return PRESETS[name].replace(**overrides)
