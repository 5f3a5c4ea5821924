"""The shape of one sample as the compiler sees it: a frozen ``(C, H, W)`` or ``(F,)``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """The shape of one sample: ``(C, H, W)`` for feature maps, ``(F,)`` for vectors."""

    dims: tuple[int, ...]

    @classmethod
    def of(cls, *dims: int) -> "Shape":
        return cls(tuple(int(d) for d in dims))

    @classmethod
    def parse(cls, text: str) -> "Shape":
        """``"3x224x224"`` -> Shape((3, 224, 224)); raises ValueError on anything else."""
        parts = text.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"expected an input shape like 3x224x224, found {text!r}")
        dims = tuple(int(p) for p in parts)
        if min(dims) < 1:
            raise ValueError(f"input shape {text!r} has a zero dimension")
        return cls(dims)

    @property
    def is_map(self) -> bool:
        return len(self.dims) == 3

    @property
    def c(self) -> int:
        return self.dims[0]

    @property
    def h(self) -> int:
        return self.dims[1] if self.is_map else 1

    @property
    def w(self) -> int:
        return self.dims[2] if self.is_map else 1

    @property
    def numel(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def __str__(self) -> str:
        return "x".join(str(d) for d in self.dims)
