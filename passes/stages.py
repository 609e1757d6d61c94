"""Producer–consumer passes between the stages of a kernel: compute_at and inline.

A stage is a statement of a sequence at the top of the kernel that writes an intermediate buffer
(one the kernel allocates): the padding of a convolution, the row maxima of a softmax. Its
producer is a perfect nest of spatial loops, one per dimension of the buffer, around statements
that store the buffer at exactly those loop variables (`T[p0, p1] = ...`, or an initial value and
a reduction).

compute_at(T, L): compute, inside each iteration of the consumer loop L, only the region of T
that the iteration reads (inferred from the affine loads, as cache_read does), into a local
buffer; the producer nest and T's allocation disappear. Overlapping regions of neighbouring
iterations are computed again: locality for redundant work, the usual trade.

inline(T): substitute an elementwise producer's expression into every load of T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Allocate, Buffer, Call, Const, For, If, Kernel, Load, Seq, Stmt, Store, Var, loads, seq, substitute, walk_stmts
from ..ir.visit import rewrite_stmt, stmt_exprs, walk
from .base import (Pass, ScheduleError, buffer_names, find_loop, fresh_name, loop_names, loop_ref, loop_sites,
                   replace_loop)
from .region import inner_extents, local_index, region_of


@dataclass(frozen=True)
class Producer:
    alloc: Allocate          # the allocation of the buffer; its body is the stage sequence
    position: int            # of the producer in that sequence
    loops: tuple[For, ...]   # the producer's nest, outermost first
    dims: tuple[str, ...]    # loop variable of each dimension of the buffer
    body: Stmt               # inside the nest


def find_producer(step: Pass, kernel: Kernel, name: str) -> Producer:
    alloc = next((s for s in walk_stmts(kernel.body) if isinstance(s, Allocate) and s.buffer.name == name), None)
    if alloc is None:
        where = "an input or output" if name in {b.name for b in kernel.params} else "not a buffer"
        raise step.fail(None, f"{name} is {where} of the kernel; only a buffer the kernel allocates "
                              f"is a stage that can move")
    stmts = _stage_sequence(alloc.body)
    writers = [n for n, s in enumerate(stmts) if any(isinstance(x, Store) and x.buffer.name == name
                                                      for x in walk_stmts(s))]
    if len(writers) != 1:
        raise step.fail(None, f"{name} is written by {len(writers)} statements of its stage "
                              f"sequence; one producer is needed")
    position = writers[0]
    loops, body = [], stmts[position]
    while isinstance(body, For):
        loops.append(body)
        body = body.body
    stores = [s for s in walk_stmts(body) if isinstance(s, Store) and s.buffer.name == name]
    index = {s.indices for s in stores}
    shape = alloc.buffer.shape
    dims = None
    if len(index) == 1:  # a loop variable per dimension; 0 for a dimension of extent 1
        (idx,) = index
        if all(isinstance(e, Var) or (e == Const(0) and n == 1) for e, n in zip(idx, shape)):
            dims = tuple(e.name if isinstance(e, Var) else None for e in idx)
    by_var = {l.var: l for l in loops}
    named = [v for v in dims or () if v is not None]
    if (dims is None or len(named) != len(set(named)) or set(named) != set(by_var)
            or any(l.axis != "spatial" or l.kind != "serial" for l in loops)
            or any(v is not None and by_var[v].extent != n for v, n in zip(dims, shape))):
        raise step.fail(None, f"the producer of {name} is not a nest of serial spatial loops, one per "
                              f"dimension, storing {name} at exactly its loop variables")
    return Producer(alloc, position, tuple(loops), dims, body)


def _check_inputs_stable(step: Pass, kernel: Kernel, producer: Producer, name: str) -> None:
    """What the producer reads must not change after it ran: no later statement of its stage
    sequence writes those buffers (earlier ones, such as the stage that computes a softmax's
    maxima before its sums, stay earlier)."""
    read = {l.buffer.name for l in loads(producer.body)} - {name}
    for later in _stage_sequence(producer.alloc.body)[producer.position + 1:]:
        for s in walk_stmts(later):
            if isinstance(s, Store) and s.buffer.name in read:
                raise step.fail(None, f"{s.buffer.name}, which the producer of {name} reads, is "
                                      f"written after it; moving the producer would read other values")


def _without_stage(body: Stmt, producer: Producer) -> Stmt:
    """`body` with the producer and the allocation of its buffer removed."""
    def drop(s: Stmt) -> Stmt:
        if isinstance(s, Allocate):
            return Allocate(s.buffer, drop(s.body))
        stmts = s.stmts if isinstance(s, Seq) else (s,)
        return seq(*(x for n, x in enumerate(stmts) if n != producer.position))

    def stmt_fn(s):
        if isinstance(s, Allocate) and s.buffer == producer.alloc.buffer:
            return drop(s.body)
        return None
    return rewrite_stmt(body, stmt_fn=stmt_fn)


def _stage_sequence(body: Stmt) -> tuple[Stmt, ...]:
    """The statements of the stage sequence under an allocation (through nested allocations)."""
    while isinstance(body, Allocate):
        body = body.body
    return body.stmts if isinstance(body, Seq) else (body,)


def _check_defined_at(step: Pass, producer: Producer, site) -> None:
    """The loops the producer's body uses besides its own (the tile loop of a cache_write's local
    copy, say) must enclose the loop it moves into, or the moved producer reads them undefined."""
    own = {l.var for l in producer.loops} | {s.var for s in walk_stmts(producer.body) if isinstance(s, For)}
    used = {e.name for s in walk_stmts(producer.body) for x in stmt_exprs(s) for e in walk(x)
            if isinstance(e, Var)} - own
    missing = sorted(used - {l.var for l in site.outer + (site.loop,)})
    if missing:
        raise step.fail(site.loop.var, f"the producer of {producer.alloc.buffer.name} uses loop "
                                       f"{', '.join(missing)}, which is not around this one")


@dataclass(frozen=True)
class ComputeAt(Pass):
    """Compute the region of the intermediate `buffer` that one iteration of `loop` reads, inside
    that iteration (into `<buffer>_local`), instead of all of it beforehand."""
    name = "compute_at"
    buffer: str
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        producer = find_producer(self, kernel, self.buffer)
        _check_inputs_stable(self, kernel, producer, self.buffer)
        site = find_loop(kernel, self.loop, self)
        if site.loop.var in {l.var for l in producer.loops}:
            raise self.fail(self.loop, f"is a loop of the producer of {self.buffer}")
        if site.loop.kind == "vectorized":
            raise self.fail(self.loop, "is vectorized; a vector loop holds no statements but its body")
        _check_defined_at(self, producer, site)
        buffer = producer.alloc.buffer
        inside = [l for l in loads(site.loop.body) if l.buffer.name == buffer.name]
        everywhere = [l for l in loads(kernel.body) if l.buffer.name == buffer.name]
        if not inside or len(inside) != len(everywhere):
            raise self.fail(self.loop, f"not every read of {buffer.name} is inside it")
        inner = inner_extents(site.loop.body)
        region = region_of(buffer, [l.indices for l in inside], inner)
        if isinstance(region, str):
            raise self.fail(self.loop, region)
        local = Buffer(fresh_name(f"{buffer.name}_local", buffer_names(kernel)), region.extents,
                       buffer.dtype, "local")

        # the producer, renamed onto the region: dimension d runs over region.start(d, c_d)
        producer_names = {l.var for l in producer.loops}
        taken = loop_names(kernel) - producer_names
        names = {v: fresh_name(v, taken) for v in producer.dims if v is not None}
        offsets = [Const(0) if v is None else Var(names[v]) for v in producer.dims]
        start = {v: region.start(d, Var(names[v])) for d, v in enumerate(producer.dims) if v is not None}
        body = substitute(producer.body, start)
        body = rewrite_stmt(body, None, lambda s: Store(local, tuple(offsets), s.value, s.reduce)
                            if isinstance(s, Store) and s.buffer.name == buffer.name else None)
        outer = {l.var: l.extent for l in site.outer + (site.loop,)}
        guard = region.bounds_guard(offsets, outer)
        if guard is not None:
            body = If(guard, body)
        extents = dict(zip(producer.dims, region.extents))
        for loop in reversed(producer.loops):
            body = For(names[loop.var], extents[loop.var], body)

        def redirect(e):
            if isinstance(e, Load) and e.buffer.name == buffer.name:
                return Load(local, local_index(region, e.indices, inner))
            return None
        consumer = rewrite_stmt(site.loop.body, redirect)
        loop = site.loop
        new_loop = For(loop.var, loop.extent, Allocate(local, seq(body, consumer)), loop.kind, loop.axis)
        moved = replace_loop(kernel, site, new_loop)
        return Kernel(moved.name, moved.inputs, moved.outputs,
                      _without_stage(moved.body, find_producer(self, moved, self.buffer)))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        allocated = [s.buffer.name for s in walk_stmts(kernel.body) if isinstance(s, Allocate)
                     and s.buffer.scope == "global"]
        return cls.legal(kernel, [cls(b, loop_ref(s, sites)) for b in allocated for s in sites])


@dataclass(frozen=True)
class Inline(Pass):
    """Replace every read of an elementwise intermediate `buffer` by the expression that produces
    it, and drop the buffer (trades memory traffic for recomputation)."""
    name = "inline"
    buffer: str

    def apply(self, kernel: Kernel) -> Kernel:
        producer = find_producer(self, kernel, self.buffer)
        body = producer.body
        if not (isinstance(body, Store) and body.reduce is None
                and all(l.buffer.name != self.buffer for l in loads(body.value))):
            raise self.fail(None, f"the producer of {self.buffer} is not one elementwise store")
        _check_inputs_stable(self, kernel, producer, self.buffer)
        value, dims = body.value, producer.dims

        def expr_fn(e):
            if isinstance(e, Load) and e.buffer.name == self.buffer:
                return substitute(value, dict(zip(dims, e.indices)))
            return None
        rest = _without_stage(kernel.body, producer)
        return Kernel(kernel.name, kernel.inputs, kernel.outputs, rewrite_stmt(rest, expr_fn))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        return cls.legal(kernel, [cls(s.buffer.name) for s in walk_stmts(kernel.body)
                                  if isinstance(s, Allocate)])


def inline_copies(kernel: Kernel) -> Kernel:
    """`kernel` with every intermediate inlined whose producer is one elementwise store and whose
    elements are each read once in all, or twice where the store computes no function call:
    the copies, broadcasts and stacks a TVM-fused PrimFunc materializes between its real work
    (ResNet-50's residual Sum as broadcast_to, stack and a sum over the stack: three passes over
    memory where one is needed). A stage read many times over (a convolution's padding) or an
    exp read twice (a softmax's) stays a stage."""
    while True:
        for alloc in [s for s in walk_stmts(kernel.body) if isinstance(s, Allocate) and s.buffer.scope == "global"]:
            name, size = alloc.buffer.name, math.prod(alloc.buffer.shape)
            stores = [s for s in walk_stmts(alloc.body) if isinstance(s, Store) and s.buffer.name == name]
            calls = any(isinstance(e, Call) for st in stores for e in walk(st.value))
            if _reads(alloc.body, name) > (1 if calls else 2) * size:
                continue
            try:
                kernel = Inline(name).apply(kernel)
                break
            except ScheduleError:
                continue
        else:
            return kernel


def _reads(stmt: Stmt, name: str, trips: int = 1) -> int:
    """Loads of buffer `name` that `stmt` executes."""
    if isinstance(stmt, For):
        return _reads(stmt.body, name, trips * stmt.extent)
    if isinstance(stmt, Seq):
        return sum(_reads(s, name, trips) for s in stmt.stmts)
    if isinstance(stmt, Allocate):
        return _reads(stmt.body, name, trips)
    if isinstance(stmt, If):
        here = sum(1 for l in loads(stmt.cond) if l.buffer.name == name)
        return trips * here + sum(_reads(s, name, trips) for s in (stmt.then, stmt.otherwise) if s is not None)
    return trips * sum(1 for l in loads(stmt) if l.buffer.name == name)
