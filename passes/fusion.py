"""Kernel fusion on a model graph: elementwise consumers move into the kernel that produces their
input, so intermediate tensors are never written out and read back.

A producer is a kernel with one output T whose every element is finished by one iteration of a
nest of spatial loops (conv, matmul, gemm, pooling, normalizations, softmax, any elementwise or
copy kernel), the "init; reduce; epilogue" form the lowerings write:

    for i..: { T[I] = init; for r..: T[I] += f(i, r); [T[I] = g(T[I])] }

A consumer is an elementwise kernel: one perfect nest over its output with one plain store
`Y[v] = f(loads)`. A group is a producer and the consumers (in graph order) that read the group's
tensors exactly at `v` (other inputs, such as a bias or a residual, may broadcast), taken while
exactly one of the group's tensors is read outside it. The group becomes one kernel: each
consumer's value is inlined at the producer's store index I, and the result is stored at the end
of the producer's iteration, which reuses T's buffer as its output:

    Out[I] = 0; for r: Out[I] += ...; Out[I] = relu(Out[I] + b[i1])

(a trailing plain store `T[I] = g` is merged: `Out[I] = relu(g + b[i1])`; chains of elementwise
kernels thus become one store). The fused kernel's inputs are the producer's, then the consumers'
other inputs in order of first use; the fused node takes the last consumer's place in the graph.
Construction is deterministic, so equal groups give structurally equal kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .analysis import determined_vars
from ..ir.visit import variables
from .base import buffer_names, fresh_name
from ..ir import (Allocate, Buffer, Const, Expr, For, Graph, Kernel, Load, Node, Seq, Stmt, Store,
                  Var, loads, rewrite, seq, walk, walk_stmts)

MAX_EXPRESSION = 512  # inlined expression nodes per element: beyond, recomputation costs too much


@dataclass(frozen=True)
class OutputSite:
    """Where a producer finishes each element of its output `buffer`: at `index`, at the end of
    the body of its spatial nest."""
    buffer: Buffer
    index: tuple[Expr, ...]
    final: Store | None   # the plain store ending the body (merged with the epilogue), else None
    accumulates: bool     # the buffer is written or read besides `final`: it must stay the output


def fuse_elementwise(graph: Graph) -> Graph:
    """The graph with every fusable group (see the module doc) made one kernel."""
    nodes = graph.nodes
    readers = _reader_positions(graph)
    taken: set[int] = set()
    fused: dict[int, Node] = {}
    for start, node in enumerate(nodes):
        if start in taken or node.kernel is None:
            continue
        site = output_site(node.kernel)
        if site is None:
            continue
        members = _grow(graph, start, site, readers, taken)
        if members:
            taken.update([start, *members])
            fused[members[-1]] = fuse_group(node, [nodes[j] for j in members], site, graph)
    new_nodes = [fused.get(j, n) for j, n in enumerate(nodes) if j in fused or j not in taken]
    return Graph(graph.name, graph.inputs, graph.outputs, new_nodes, graph.types, graph.constants)


# -- kernel forms -----------------------------------------------------------------------------

def output_site(kernel: Kernel) -> OutputSite | None:
    """The producer form of `kernel`, or None."""
    if len(kernel.outputs) != 1:
        return None
    out = kernel.outputs[0]
    found: list = []
    if _map_final_body(kernel.body, out, lambda loops, body: found.append((loops, body)) or body) is None:
        return None
    loops, body = found[0]
    stores = [s for s in walk_stmts(body) if isinstance(s, Store) and s.buffer == out]
    if not stores:
        return None
    index = stores[0].indices
    extents = {loop.var: loop.extent for loop in loops}
    reads = [l for l in loads(kernel.body) if l.buffer == out]
    if (any(s.indices != index for s in stores) or any(l.indices != index for l in reads)
            or len(reads) != sum(1 for l in loads(body) if l.buffer == out)
            or math.prod(extents.values()) != out.size
            or not variables(index) <= set(extents)
            or determined_vars(index, extents) != set(extents)):
        return None  # not one element per iteration, each written and read in its own iteration
    last = body.stmts[-1] if isinstance(body, Seq) else body
    final = last if isinstance(last, Store) and last.buffer == out and last.reduce is None else None
    accumulates = final is None or len(stores) > 1 or bool(reads)
    return OutputSite(out, index, final, accumulates)


def elementwise_form(kernel: Kernel) -> tuple[list[str], Store] | None:
    """(loop variables, the store) of a perfect spatial nest over the single output storing
    `Y[v] = f(loads)` at exactly its loop variables; None for any other kernel."""
    if len(kernel.outputs) != 1:
        return None
    out, loops, s = kernel.outputs[0], [], kernel.body
    while isinstance(s, For) and s.axis == "spatial":
        loops.append(s)
        s = s.body
    names = [loop.var for loop in loops]
    if (not isinstance(s, Store) or s.buffer != out or s.reduce is not None
            or tuple(loop.extent for loop in loops) != out.shape
            or not _aligned(s.indices, names, out.shape)
            or any(l.buffer == out for l in loads(s.value))):
        return None
    return names, s


def _map_final_body(stmt: Stmt, out: Buffer, fn) -> Stmt | None:
    """`stmt` with fn(spatial loops, body) replacing the body of the spatial nest that writes
    `out`: the last statement at the top level (through allocations), none before it touching
    `out`. None when there is no such nest."""
    if isinstance(stmt, Allocate):
        inner = _map_final_body(stmt.body, out, fn)
        return None if inner is None else Allocate(stmt.buffer, inner)
    if isinstance(stmt, Seq):
        if not stmt.stmts:  # a kernel of empty tensors
            return None
        *before, last = stmt.stmts
        if any(_touches(s, out) for s in before):
            return None
        inner = _map_final_body(last, out, fn)
        return None if inner is None else Seq((*before, inner))
    loops, body = [], stmt
    while isinstance(body, For) and body.axis == "spatial":
        loops.append(body)
        body = body.body
    body = fn(loops, body)
    for loop in reversed(loops):
        body = For(loop.var, loop.extent, body, loop.kind, loop.axis)
    return body


def _touches(stmt: Stmt, buf: Buffer) -> bool:
    return (any(isinstance(s, Store) and s.buffer == buf for s in walk_stmts(stmt))
            or any(l.buffer == buf for l in loads(stmt)))


def _aligned(indices, names, shape) -> bool:
    """`indices` walk a tensor of `shape` elementwise with loops `names` (a size-1 dimension may
    read index 0, as broadcasting lowerings write it)."""
    return len(indices) == len(names) == len(shape) and all(
        i == Var(v) or (n == 1 and isinstance(i, Const) and i.value == 0)
        for i, v, n in zip(indices, names, shape))


# -- groups -----------------------------------------------------------------------------------

def _reader_positions(graph: Graph) -> dict[str, list[int]]:
    readers: dict[str, list[int]] = {t: [len(graph.nodes)] for t in graph.outputs}  # the caller
    for pos, node in enumerate(graph.nodes):
        for t in node.inputs:
            readers.setdefault(t, []).append(pos)
    return readers


def _grow(graph: Graph, start: int, site: OutputSite, readers, taken) -> list[int]:
    """Positions of the consumers fused with the producer at `start`: the longest run, in graph
    order, after which exactly one group tensor is read outside the group."""
    nodes = graph.nodes
    out = nodes[start].outputs[0]
    group = {out}
    cost = {out: 1}              # expression nodes per element of each group tensor, inlined
    members: list[int] = []
    best: list[int] = []
    tainted: set[str] = set()    # computed from group tensors outside the group: never an input
    horizon = max(readers.get(out, [start]))
    pos = start
    while pos < min(horizon, len(nodes) - 1):
        pos += 1
        node = nodes[pos]
        if not any(t in group or t in tainted for t in node.inputs):
            continue
        size = None
        if pos not in taken and not any(t in tainted for t in node.inputs):
            size = _consumer_cost(node, group, cost, site.buffer.shape)
        if size is None or size > MAX_EXPRESSION:
            tainted.update(node.outputs)
            continue
        members.append(pos)
        result = node.outputs[0]
        group.add(result)
        cost[result] = size
        horizon = max(horizon, *readers.get(result, [pos]))
        inside = {start, *members}
        live = [t for t in group if any(r not in inside for r in readers.get(t, []))]
        dtype_ok = not site.accumulates or graph.types[result].dtype == site.buffer.dtype
        if live == [result] and dtype_ok:
            best = list(members)
    return best


def _consumer_cost(node: Node, group: set[str], cost: dict[str, int], shape) -> int | None:
    """The inlined expression size of `node` as a consumer of the group, or None if it is not one."""
    form = None if node.kernel is None else elementwise_form(node.kernel)
    if form is None or node.kernel.outputs[0].shape != shape:
        return None
    names, store = form
    tensor_of = {b.name: t for b, t in zip(node.kernel.inputs, node.inputs)}
    size = 0
    for e in walk(store.value):
        if isinstance(e, Load) and tensor_of[e.buffer.name] in group:
            if not _aligned(e.indices, names, e.buffer.shape):
                return None
            size += cost[tensor_of[e.buffer.name]] - 1 - len(e.indices)
        size += 1
    return max(size, 1)


def fuse_group(producer: Node, consumers: list[Node], site: OutputSite, graph: Graph) -> Node:
    """One node computing the producer and its consumers (checked by `_grow`)."""
    kernel = producer.kernel
    args, inputs = list(producer.inputs), list(kernel.inputs)
    buffer_of = {t: b for t, b in zip(reversed(args), reversed(inputs))}  # the first binding wins
    taken = buffer_names(kernel)
    value_of: dict[str, Expr] = {producer.outputs[0]: Load(site.buffer, site.index)}
    for node in consumers:
        names, store = elementwise_form(node.kernel)
        at = dict(zip(names, site.index))
        tensor_of = {b.name: t for b, t in zip(node.kernel.inputs, node.inputs)}

        def inline(e: Expr) -> Expr | None:
            if isinstance(e, Var):
                return at.get(e.name)
            if not isinstance(e, Load):
                return None
            tensor = tensor_of[e.buffer.name]
            if tensor in value_of:
                return value_of[tensor]
            if tensor not in buffer_of:
                b = e.buffer
                buffer_of[tensor] = Buffer(fresh_name(f"E{len(inputs) - len(kernel.inputs)}", taken),
                                           b.shape, b.dtype, b.scope)
                args.append(tensor)
                inputs.append(buffer_of[tensor])
            return Load(buffer_of[tensor], e.indices)
        value_of[node.outputs[0]] = rewrite(store.value, inline)

    result = consumers[-1].outputs[0]
    value = value_of[result]
    out = Buffer(site.buffer.name, site.buffer.shape, graph.types[result].dtype, site.buffer.scope)

    def epilogue(loops, body: Stmt) -> Stmt:
        if site.final is None:
            return seq(body, Store(out, site.index, value))
        acc = Load(site.buffer, site.index)
        merged = rewrite(value, lambda e: site.final.value if e == acc else None)
        last = Store(out, site.index, merged)
        return Seq(body.stmts[:-1] + (last,)) if isinstance(body, Seq) else last

    body = _map_final_body(kernel.body, site.buffer, epilogue)
    name = "_".join([kernel.name] + [n.kernel.name for n in consumers])
    fused = Kernel(name, tuple(inputs), (out,), body)
    op_type = "+".join([producer.op_type] + [n.op_type for n in consumers])
    return Node(producer.name, op_type, args, [result], fused)
