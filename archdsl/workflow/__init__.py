"""Ablations end to end: a sweep's cost table, training with the papers' recipes, reports.

    sweep.py     the cartesian product of --set values; the variants' job list
    counts.py    a variant's costs (depth, parameters, MACs, memory, receptive field); subtotals
    tables.py    rows as text, CSV, Markdown, JSON or LaTeX
    recipes.py   the papers' training recipes as presets
    data.py      image folders, CIFAR batches, the bundled digits; augmentation
    train.py     the training loop (DistributedDataParallel under torchrun: dist.py)
    runs.py      the run folder: canonical spec, hash, recipe, metrics, atomic checkpoints
    report.py    the results table and plots of several runs
    commands.py  archdsl sweep | train | report, and summary --format

Nothing here is imported by ``import archdsl``; torch and matplotlib load when a command needs them.
"""
