"""The module tree of a lowered graph: one submodule per block call, as the spec nests them.

The front end records where each node was written (``meta["module"]``: the path of block
calls it sits in, and its attribute name there). This module turns that into a tree of
:class:`Level` objects, one per block call plus the net itself, that both lowerings walk: the
in-process module (:mod:`archdsl.codegen.torch_module`) makes each level an ``nn.Module`` and the
source writer (:mod:`archdsl.codegen.torch_source`) a class. A repeated call (``basic(64) x5``) is a
:class:`Repeat`: an ``nn.Sequential`` when its copies form a chain, as they do unless a pass
has rewired them. So a state_dict key says where its tensor sits in the spec
(``basic_stage2.basic2.0.conv1.weight``), and inserting a layer renames nothing around it.

Each level runs its steps (its own nodes and its children) in a topological order of the
graph with every child contracted to one step; a child reads its inputs and returns its
outputs (one value, the block's output, unless a pass rewired it). If contracting a call would
make a cycle (a pass moved a node across a block boundary so that data leaves a block and comes
back), the graph is lowered flat instead: one level, every node at the top, keys as the node
names. That never happens for graphs the front end builds; it is the safe answer when it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from archdsl.ir import ArchGraph


@dataclass
class Step:
    """One line of a level's forward: a node of this level or a call of a child."""

    attr: str  # the attribute it uses (the node's layer or the child), or the node's local name
    node: str | None  # the graph node, for a node step
    child: "Level | Repeat | None"  # the child, for a call step
    args: tuple[str, ...]  # the graph values it reads
    outputs: tuple[str, ...]  # the graph values it produces


@dataclass
class Level:
    """A block call (or the net, the root): its own nodes and its children, in spec order."""

    path: tuple[str, ...]  # attribute names from the root
    block: str | None  # the block's name (None for the root)
    nodes: dict[str, str] = field(default_factory=dict)  # attribute -> graph node
    children: dict[str, "Level | Repeat"] = field(default_factory=dict)
    members: list[tuple[str, str]] = field(default_factory=list)  # ("node"|"child", attr), spec order
    contains: set[str] = field(default_factory=set)  # every graph node inside, children's too
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    steps: list[Step] = field(default_factory=list)
    flat: bool = False  # the one level of a graph lowered flat: every attribute is a node name


@dataclass
class Repeat:
    """A repeated block call: copies ``0``, ``1``, ..., a chain (``nn.Sequential``) or not."""

    path: tuple[str, ...]
    copies: list[Level] = field(default_factory=list)
    chain: bool = True
    contains: set[str] = field(default_factory=set)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


class Flat(Exception):
    """Contracting the block calls would make a cycle: lower the graph flat."""


def _where(graph: ArchGraph, node: str) -> tuple[tuple[str, ...], str]:
    module = graph.graph.get("modules", {}).get(node)
    return (tuple(module[0]), module[1]) if module else ((), node)


def tree(graph: ArchGraph) -> Level:
    """The module tree of ``graph`` (prepared for its backend); one flat level where its calls
    cannot be contracted."""
    try:
        return _tree(graph, hierarchical=True)
    except Flat:
        return _tree(graph, hierarchical=False)


def _tree(graph: ArchGraph, hierarchical: bool) -> Level:
    order = graph.order()
    position = {n: i for i, n in enumerate(order)}
    source = graph.graph["input"]
    root = Level((), None, flat=not hierarchical)
    by_path: dict[tuple[str, ...], Level | Repeat] = {(): root}
    blocks = _block_names(graph)

    def level(path: tuple[str, ...]) -> Level:
        found = by_path.get(path)
        if found is not None:
            return found
        parent_path, name = path[:-1], path[-1]
        if name.isdigit():  # copy of a repeated call
            repeat = by_path.get(parent_path)
            if repeat is None:
                grand = level(parent_path[:-1])
                repeat = by_path[parent_path] = Repeat(parent_path)
                grand.children[parent_path[-1]] = repeat
                grand.members.append(("child", parent_path[-1]))
            if int(name) != len(repeat.copies):  # a copy with no layer of its own before it
                raise Flat  # (a block whose body is empty for some repeat index)
            new = Level(path, blocks.get(path))
            repeat.copies.append(new)
        else:
            parent = level(parent_path)
            new = Level(path, blocks.get(path))
            parent.children[name] = new
            parent.members.append(("child", name))
        by_path[path] = new
        return new

    # Nodes in the order the spec wrote them (graph insertion order): the state_dict's order.
    for node in graph.nodes:
        if node == source:
            continue
        path, local = _where(graph, node) if hierarchical else ((), node)
        home = level(path)
        while local in home.nodes:  # a label that an op's own name also takes: the later one
            local = node if local != node else local + "_"  # keeps its (unique) node name
        home.nodes[local] = node
        home.members.append(("node", local))
    _contain(root)
    _resolve_names(root)
    _interface(graph, root, position)
    # The net takes its input and returns its output, even where the output is the input (a
    # net whose one layer, a final softmax, was dropped for logits).
    root.inputs, root.outputs = (source,), (graph.graph["output"],)
    _schedule(graph, root, position)
    return root


def _block_names(graph: ArchGraph) -> dict[tuple[str, ...], str]:
    """Module path of each block call -> the block it calls (recorded by the front end)."""
    names: dict[tuple[str, ...], str] = {}
    for node, module in graph.graph.get("modules", {}).items():
        if node in graph:
            names.update((tuple(path), block) for path, block in module[2])
    return names


def _contain(level: Level | Repeat) -> set[str]:
    if isinstance(level, Repeat):
        level.contains = set().union(*(_contain(c) for c in level.copies))
        return level.contains
    level.contains = set(level.nodes.values())
    for child in level.children.values():
        level.contains |= _contain(child)
    return level.contains


def _resolve_names(level: Level) -> None:
    """A child whose name a node of the level already has (a block named like an op, a label)
    gets a trailing underscore."""
    for kind, attr in list(level.members):
        if kind == "child" and attr in level.nodes:
            new = attr + "_"
            while new in level.nodes or new in level.children:
                new += "_"
            level.children[new] = level.children.pop(attr)
            level.members[level.members.index(("child", attr))] = ("child", new)
            _rename(level.children[new], len(level.path), new)
    for child in level.children.values():
        for copy in (child.copies if isinstance(child, Repeat) else [child]):
            _resolve_names(copy)


def _rename(child: Level | Repeat, depth: int, name: str) -> None:
    levels = child.copies if isinstance(child, Repeat) else [child]
    if isinstance(child, Repeat):
        child.path = child.path[:depth] + (name,) + child.path[depth + 1:]
    for lv in levels:
        lv.path = lv.path[:depth] + (name,) + lv.path[depth + 1:]
        for grand in lv.children.values():
            _rename(grand, depth, name)


def _interface(graph: ArchGraph, level: Level | Repeat, position: dict[str, int]) -> None:
    """Each child's inputs (values it reads from outside) and outputs (values read outside it)."""
    inside = level.contains
    reads: list[str] = []
    outs: list[str] = []
    for node in sorted(inside, key=position.__getitem__):
        for arg in graph.nodes[node]["args"]:
            if arg not in inside and arg not in reads:
                reads.append(arg)
        if node == graph.graph["output"] or any(u not in inside for u in graph.successors(node)):
            outs.append(node)
    level.inputs = tuple(sorted(reads, key=position.__getitem__))
    level.outputs = tuple(outs)
    if isinstance(level, Repeat):
        for copy in level.copies:
            _interface(graph, copy, position)
        level.chain = all(len(c.inputs) == 1 and len(c.outputs) == 1 for c in level.copies) and all(
            b.inputs == a.outputs and set(graph.successors(a.outputs[0])) <= b.contains
            for a, b in zip(level.copies, level.copies[1:]))
        return
    for child in level.children.values():
        _interface(graph, child, position)


def _schedule(graph: ArchGraph, level: Level, position: dict[str, int]) -> None:
    """The level's steps: its nodes and children in a topological order of the graph with each
    child contracted (a non-chain repeat's copies are separate steps)."""
    units: dict[str, Step] = {}  # unit key -> step
    owner: dict[str, str] = {}  # graph node -> unit key
    for local, node in level.nodes.items():
        units[node] = Step(local, node, None, tuple(graph.nodes[node]["args"]), (node,))
        owner[node] = node
    for name, child in level.children.items():
        parts = [(name, child)] if isinstance(child, Level) or child.chain else \
            [(f"{name}.{i}", c) for i, c in enumerate(child.copies)]
        for key, unit in parts:
            units["/" + key] = Step(key, None, unit, unit.inputs, unit.outputs)
            for node in unit.contains:
                owner[node] = "/" + key
    deps = nx.DiGraph()
    first = {}
    for key, step in units.items():
        deps.add_node(key)
        nodes = [step.node] if step.node else list(step.child.contains)
        first[key] = min(position[n] for n in nodes)
        for arg in step.args:
            if arg in owner and owner[arg] != key:
                deps.add_edge(owner[arg], key)
    try:
        ordered = list(nx.lexicographical_topological_sort(deps, key=first.__getitem__))
    except nx.NetworkXUnfeasible:
        raise Flat from None
    level.steps = [units[k] for k in ordered]
    for child in level.children.values():
        for copy in (child.copies if isinstance(child, Repeat) else [child]):
            _schedule(graph, copy, position)


def frees(level: Level) -> list[tuple[str, ...]]:
    """For each step of a level, the values it reads for the last time (dead after it; the
    level's outputs never are). The in-process module deletes them, the source reuses their
    variables."""
    last: dict[str, int] = {}
    for i, step in enumerate(level.steps):
        for arg in step.args:
            last[arg] = i
    dead: list[list[str]] = [[] for _ in level.steps]
    for value, i in last.items():
        if value not in level.outputs:
            dead[i].append(value)
    return [tuple(d) for d in dead]


def levels(root: Level):
    """Every level, children before parents (the order a source file defines their classes)."""
    for child in root.children.values():
        for copy in (child.copies if isinstance(child, Repeat) else [child]):
            yield from levels(copy)
    yield root


def paths(root: Level) -> dict[str, str]:
    """Graph node -> its dotted module path (``basic_stage2.basic2.0.conv1``)."""
    out = {}
    for lv in levels(root):
        for local, node in lv.nodes.items():
            out[node] = ".".join(lv.path + (local,))
    return out


def extra_attr(level: Level, attribute: str, graph: ArchGraph) -> str:
    """The attribute, in ``level``, of a layer a node owns beside its own (a fused
    conv's batch norm, named in the graph after the absorbed BN node): the BN node's name in
    its submodule, which is this one (a rewrite never absorbs across submodules), unless a
    node or child of the level has it (then the BN's unique node name). Lowered flat, it is the
    BN node's name, as every other attribute there is."""
    if level.flat:
        return attribute
    local = _where(graph, attribute)[1] if attribute in graph.graph.get("modules", {}) else attribute
    if local in level.children or (local in level.nodes and level.nodes[local] != attribute):
        local = attribute
    return local
