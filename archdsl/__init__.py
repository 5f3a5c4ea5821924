"""archdsl: convolutional networks written the way papers print them, compiled to PyTorch.

    >>> import archdsl
    >>> g = archdsl.load("vgg_e")              # a bundled spec, or a path to a .arch file
    >>> g.params, g.macs
    (143667240, 19632062464)
    >>> model = archdsl.compile("resnet50", shortcut="B")
"""

from archdsl.errors import SpecError, Span
from archdsl.ir import ArchGraph, Op, Shape, verify
from archdsl.limits import Limits
from archdsl.pipeline import compile, load, loads
from archdsl.registry import list_specs

__all__ = [
    "ArchGraph", "Limits", "Op", "Shape", "Span", "SpecError",
    "compile", "list_specs", "load", "load_pretrained", "loads", "verify",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_pretrained":  # imports torch: loaded on first use, so `import archdsl` stays light
        from archdsl.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'archdsl' has no attribute {name!r}")
