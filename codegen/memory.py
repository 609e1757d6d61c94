"""Static memory planning: every intermediate tensor of a graph gets an offset in one arena.

Tensors whose lifetimes (first write .. last read, in node order) overlap never share bytes; the
others may. Offsets are assigned greedily, largest tensor first, at the lowest offset that fits
beside the already placed tensors it is live with (the "greedy by size" planner of TFLite).
Alias nodes (reshape-like) share their source's storage, so they extend its lifetime.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, itemsize

ALIGN = 64  # bytes; the kernels' vector loads like cache-line-aligned data


@dataclass(frozen=True)
class Placement:
    """Where a tensor lives: 'input' i, 'constant' name, or the arena at `offset`."""
    kind: str            # 'input' | 'constant' | 'arena'
    key: str | int       # input index, constant name, or arena byte offset


@dataclass
class MemoryPlan:
    placements: dict[str, Placement]
    arena_bytes: int
    naive_bytes: int     # what one allocation per tensor would take


def plan_memory(graph: Graph) -> MemoryPlan:
    root = {}  # alias output → the tensor that owns its storage
    for node in graph.nodes:
        if node.is_alias:
            src = node.inputs[0]
            root[node.outputs[0]] = root.get(src, src)

    placements: dict[str, Placement] = {}
    for i, name in enumerate(graph.inputs):
        placements[name] = Placement("input", i)
    for name in graph.constants:
        placements[name] = Placement("constant", name)

    # Lifetimes of the storage owners, in node positions; graph outputs stay live to the end.
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    end = len(graph.nodes)
    for pos, node in enumerate(graph.nodes):
        for t in node.inputs:
            last[root.get(t, t)] = pos
        for t in node.outputs:
            owner = root.get(t, t)
            first.setdefault(owner, pos)
            last[owner] = max(last.get(owner, pos), pos)
    for t in graph.outputs:
        last[root.get(t, t)] = end

    owners = [t for t in first if t not in placements]
    sizes = {t: _aligned(graph.types[t].size * itemsize(graph.types[t].dtype)) for t in owners}
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    arena = 0
    for t in sorted(owners, key=lambda t: (-sizes[t], first[t])):
        offset = _lowest_fit(sizes[t], first[t], last[t], placed)
        placed.append((offset, sizes[t], first[t], last[t]))
        placements[t] = Placement("arena", offset)
        arena = max(arena, offset + sizes[t])
    for alias, owner in root.items():
        placements[alias] = placements[owner]
    return MemoryPlan(placements, arena, sum(sizes.values()))


def _lowest_fit(size: int, start: int, stop: int, placed) -> int:
    busy = sorted((off, off + sz) for off, sz, f, l in placed if f <= stop and start <= l)
    offset = 0
    for lo, hi in busy:
        if offset + size <= lo:
            break
        offset = max(offset, hi)
    return offset


def _aligned(n: int) -> int:
    return max(ALIGN, (n + ALIGN - 1) // ALIGN * ALIGN)
