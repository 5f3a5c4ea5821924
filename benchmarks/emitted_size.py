"""How long the source ``archdsl build`` writes is, per bundled spec: lines, bytes, classes.

Not a speed: the size of what a reader has to read. The emitted file has one class per block
(calls that differ only in widths or counts share one) and a loop per repeat, so its length
follows the spec's, not the net's depth.

    python benchmarks/emitted_size.py            # the table below, also to $OUT/emitted_size.md
"""

from __future__ import annotations

import argparse

import common

from archdsl.codegen.torch_source import emit_source
from archdsl.pipeline import load, lower_graph

NETS = [("cifar_resnet", {"n": 18}), ("cifar_resnet", {"n": 200}), ("resnet50", {}), ("resnet152", {}),
        ("googlenet", {}), ("densenet121", {}), ("vgg_e", {}), ("alexnet", {})]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    rows = ["| net | conv and fc layers | lines | bytes | classes |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, params in NETS:
        graph = load(name, params=params)
        source = emit_source(lower_graph(graph))
        lines = source.splitlines()
        weighted = sum(1 for _, d in graph.ops() if d["op"].name in ("CONV", "LINEAR"))
        label = name + "".join(f" {k}={v}" for k, v in params.items())
        rows.append(f"| {label} | {weighted} | {len(lines)} | {len(source):,} | "
                    f"{sum(1 for line in lines if line.startswith('class '))} |")
        common.write_table("\n".join(rows), "emitted_size.md")
    print(common.write_table("\n".join(rows), "emitted_size.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
