"""Lowering: graphs to PyTorch modules and source, and the Triton kernels (``archdsl.codegen``).

This folder is the package ``archdsl.codegen`` (pyproject.toml maps it); imported under any
other name its modules would load twice, with two caches and two warn-once flags.
"""

if __name__ != "archdsl.codegen":
    raise ImportError(f"import archdsl.codegen, not {__name__} (install the package: pip install -e .)")
