"""Static memory planning: every intermediate tensor of a graph gets an offset in one arena.

Tensors whose lifetimes (first write .. last read, in node order) overlap never share bytes; the
others may. Offsets are assigned greedily, largest tensor first, at the lowest offset that fits
beside the already placed tensors it is live with (the "greedy by size" planner of TFLite).
Alias nodes (reshape-like) share their source's storage, so they extend its lifetime. A Concat
whose inputs are each one contiguous slab of its output (along the channels at batch 1) is done
in place: each producer writes straight into its slab and the Concat runs nothing (`elided`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    inside: dict[str, tuple[str, int]] = field(default_factory=dict)  # tensor -> (owner, byte offset)
    elided: frozenset[str] = frozenset()  # Concat nodes done in place: nothing to run


def concats_in_place(graph: Graph) -> tuple[dict[str, tuple[str, int]], frozenset[str]]:
    """The Concat nodes whose inputs can be written straight into their output, and where:
    (input -> (the Concat's output, byte offset), the Concat nodes' names). Each input must be
    one contiguous slab of the output (only 1s before the axis: channels at batch 1, plain or
    blocked) at an ALIGN-ed offset, and a kernel's own output that is no graph input, constant
    or output and goes into no other in-place Concat (nor twice into this one). DenseNet's
    concatenations copied 1.9 ms of its 42; its chains nest (each output is the next one's
    first input), and so do the slabs."""
    producers = {t: n for n in graph.nodes for t in n.outputs}
    external = set(graph.inputs) | set(graph.outputs) | set(graph.constants)
    inside: dict[str, tuple[str, int]] = {}
    elided = set()
    for node in graph.nodes:
        if node.op_type != "Concat" or node.kernel is None or len(node.inputs) < 2:
            continue
        out = graph.types[node.outputs[0]]
        types = [graph.types[t] for t in node.inputs]
        axis = next((d for d, n in enumerate(out.shape) if n != types[0].shape[d]), None)
        if (axis is None or any(n != 1 for n in out.shape[:axis]) or len(set(node.inputs)) < len(node.inputs)
                or any(t.dtype != out.dtype or len(t.shape) != len(out.shape) for t in types)):
            continue
        offsets, offset = [], 0
        for t in types:
            offsets.append(offset)
            offset += t.size * itemsize(t.dtype)
        if offset != out.size * itemsize(out.dtype) or any(o % ALIGN for o in offsets):
            continue
        if any(t in external or t in inside or t not in producers or producers[t].is_alias
               for t in node.inputs):
            continue
        for t, o in zip(node.inputs, offsets):
            inside[t] = (node.outputs[0], o)
        elided.add(node.name)
    return inside, frozenset(elided)


def plan_memory(graph: Graph) -> MemoryPlan:
    # a tensor stored inside another: an alias output in its source, a Concat input in its output
    within = {node.outputs[0]: (node.inputs[0], 0) for node in graph.nodes if node.is_alias}
    inside, elided = concats_in_place(graph)
    within.update(inside)

    def owner(t: str) -> tuple[str, int]:
        offset = 0
        while t in within:
            t, o = within[t]
            offset += o
        return t, offset
    resolved = {t: owner(t) for t in within}
    root = {t: o for t, (o, _) in resolved.items()}

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
    for t, (o, offset) in resolved.items():
        p = placements[o]
        placements[t] = Placement("arena", p.key + offset) if p.kind == "arena" else p
    return MemoryPlan(placements, arena, sum(sizes.values()), resolved, elided)


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
