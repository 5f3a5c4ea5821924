"""The rewrite driver: a graph and a table of rules in, the rewritten graph out.

A **rule** is a function ``rule(graph, name) -> Rewrite | None``: it looks at node ``name`` (and
the nodes that read it) and returns None for "no match", or a :class:`Rewrite` saying what the
node becomes and which of its readers it absorbs. :func:`rewrite` runs the rules:

* it copies the graph first (node attrs and meta too); the input graph is never modified;
* it walks the nodes in topological order and, at each, tries the rules in order, again from
  the first after each match, until none matches;
* it applies the **sole-consumer rule** to every match: each absorbed node must be the only
  reader of the node before it in the chain (the rewritten node first), and no node but the
  last may be the graph output, since a value read elsewhere (a raw conv output a shortcut
  also reads) must stay; a match that breaks it is not applied;
* a match never absorbs a node with state (:data:`~archdsl.ops.STATEFUL`) from another
  submodule (another block call, see ``graph.graph["modules"]``): a BN written after a block
  that ends in a conv stays a layer of its own, so every backend's module has the same tree
  and the same state_dict keys (a pool after the block is absorbed: it has no state);
* the rewritten node keeps its name (and span and scope); absorbed nodes disappear and their
  readers, and the graph output, read the rewritten node instead;
* after a walk that changed anything it re-derives shapes and counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from archdsl.ir import ArchGraph, Op
from archdsl.ops import STATEFUL
from archdsl.passes.analysis import analyse
from archdsl.passes.shapes import infer_shapes

__all__ = ["Rewrite", "Rule", "consumer", "rewrite"]


@dataclass(frozen=True)
class Rewrite:
    """What a matched node becomes: its new ``op`` and ``attrs``, its new inputs (``args``,
    None: unchanged) and the chain of readers it absorbs, in order."""

    op: Op
    attrs: dict
    absorbed: tuple[str, ...] = ()
    args: tuple[str, ...] | None = None


Rule = Callable[[ArchGraph, str], Optional[Rewrite]]


def consumer(graph: ArchGraph, name: str, ops) -> str | None:
    """The node that reads ``name`` if it is the only reader, its op is in ``ops`` (an Op or a
    group) and ``name`` is not the graph output; else None."""
    users = graph.users(name)
    if len(users) != 1 or graph.graph.get("output") == name:
        return None
    op = graph.nodes[users[0]]["op"]
    return users[0] if (op is ops if isinstance(ops, Op) else op in ops) else None


def _sole_chain(graph: ArchGraph, name: str, absorbed: tuple[str, ...]) -> bool:
    producer = name
    for node in absorbed:
        if graph.users(producer) != [node] or graph.graph.get("output") == producer:
            return False
        producer = node
    return True


def _state_stays(graph: ArchGraph, name: str, absorbed: tuple[str, ...]) -> bool:
    modules = graph.graph.get("modules", {})
    home = modules.get(name, ((),))[0]
    return all(modules.get(node, ((),))[0] == home for node in absorbed if graph.nodes[node]["op"] in STATEFUL)


def rewrite(graph: ArchGraph, rules: tuple[Rule, ...]) -> tuple[ArchGraph, bool]:
    """Apply ``rules`` to a copy of ``graph`` (see the module docstring).

    Returns:
        (the rewritten copy, whether any rule matched).
    """
    new = graph.copy()
    changed = False
    for name in graph.order():
        if name not in new:  # absorbed into an earlier node
            continue
        matched = True
        while matched:
            matched = False
            for rule in rules:
                result = rule(new, name)
                if result is None or not _sole_chain(new, name, result.absorbed) \
                        or not _state_stays(new, name, result.absorbed):
                    continue
                data = new.nodes[name]
                data["op"], data["attrs"] = result.op, result.attrs
                if result.args is not None:
                    new.set_args(name, result.args)
                for node in result.absorbed:
                    new.replace_uses(node, name)
                    new.remove_node(node)
                matched = changed = True
                break
    if changed:
        analyse(infer_shapes(new))
    return new, changed
