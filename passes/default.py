"""The untuned default schedule: parallelize an outer loop and vectorize an inner one, where legal
(on a GPU: one thread per output point, default_gpu.py).

It is what a kernel gets before any tuning: never pathological, never clever. Each top-level loop
nest is treated on its own:
- the innermost loop, if it is spatial, walks the last (contiguous) index of every store in it
  and its iterations are independent, is vectorized, split by a vector width that divides it
  when it is long;
- the outermost spatial loop of the nest with at least two iterations is made parallel when the
  nest does enough work and its iterations are independent.
Independence is the dependence test the parallel and vectorize passes use (analysis.py), so a
recurrence or a stencil that reads what a neighbouring iteration writes stays serial.
"""
from __future__ import annotations

from dataclasses import dataclass

from .analysis import independence_problem
from .base import Pass, find_loop, loop_ref, loop_sites, replace_loop
from .default_gpu import bind_nest, gpu_schedule, gpu_threads
from ..ir import (Allocate, Binary, For, If, Kernel, Seq, Stmt, Store, Var, loads, replace_body, substitute,
                  lt, walk, walk_stmts)
from ..ir.machine import GENERIC_CPU, MachineParams

MIN_PARALLEL_WORK = 1 << 14    # innermost iterations below which threads cost more than they save


def default_schedule(kernel: Kernel, machine: MachineParams = GENERIC_CPU) -> Kernel:
    if machine.is_gpu:
        return gpu_schedule(kernel, gpu_threads(machine))
    return replace_body(kernel, _schedule(kernel.body, *_settings(machine)))


def _settings(machine: MachineParams) -> tuple[int, bool]:
    """(lanes, parallel) for `machine`: vectors of a cache line (LLVM splits a 16-lane float32
    vector into the registers of the machine: two with AVX2), threads where there are cores."""
    return machine.line_elements("float32"), machine.cores > 1


def _schedule(stmt: Stmt, lanes: int, parallel: bool) -> Stmt:
    def nest(loop: For) -> Stmt:
        vectorized = _map_loops(_sink_into_reduction(loop, lanes),
                                lambda inner: _vectorize_innermost(inner, lanes))
        return _parallelize(vectorized) if parallel else vectorized
    return _map_loops(stmt, nest)


def _vectorize_innermost(loop: For, lanes: int, outer: tuple[For, ...] = ()) -> Stmt:
    body = loop.body
    if _has_loop(body):
        new_body = _map_loops(body, lambda inner: _vectorize_innermost(inner, lanes, outer + (loop,)))
        return loop if new_body is body else For(loop.var, loop.extent, new_body, loop.kind, loop.axis)
    if (loop.axis != "spatial" or loop.kind != "serial" or not _contiguous_in(loop)
            or independence_problem(loop, outer)):
        return loop
    width = _vector_width(loop.extent, lanes)
    if width is None:
        if loop.extent < 4:
            return loop
        width = lanes  # nothing divides (197, 251): the last vector guarded, peeled off by codegen
    if width == loop.extent:
        return For(loop.var, loop.extent, body, "vectorized", loop.axis)
    outer, inner = f"{loop.var}_o", f"{loop.var}_v"
    index = Var(outer) * width + Var(inner)
    split = substitute(body, {loop.var: index})
    if loop.extent % width:
        split = If(lt(index, loop.extent), split)
    return For(outer, -(-loop.extent // width), For(inner, width, split, "vectorized"), axis=loop.axis)


def _sink_into_reduction(loop: For, lanes: int) -> Stmt:
    """Find the innermost spatial loop `v` whose body is a reduction (init; reduce loops; epilogue)
    and move a vector-wide slice of it below the reduction loops:

        for v: { Y[.., v] = init; for r: Y[.., v] += f(v, r); Y[.., v] = g(Y[.., v]) }
     →  for v_o: { for v_v: init; for r: for v_v: Y[.., v] += ...; for v_v: epilogue }

    Legal because every statement of iteration v touches only Y[.., v] (checked), so the
    iterations are independent and may be distributed; the accumulators of one vector of
    outputs then stay in registers across the whole reduction.
    """
    if isinstance(loop.body, For):
        inner = _sink_into_reduction(loop.body, lanes)
        return loop if inner is loop.body else For(loop.var, loop.extent, inner, loop.kind, loop.axis)
    if loop.axis != "spatial" or loop.kind != "serial" or not isinstance(loop.body, Seq):
        return loop
    parts = loop.body.stmts
    if not any(isinstance(p, For) and p.axis == "reduce" for p in parts) or not _owned_by(loop):
        return loop
    width = _vector_width(loop.extent, lanes)
    if width is None:
        return loop
    outer, lane = f"{loop.var}_o", f"{loop.var}_v"
    index = Var(outer) * width + Var(lane) if loop.extent > width else Var(lane)
    new_parts = []
    for part in substitute(loop.body, {loop.var: index}).stmts:
        if isinstance(part, For):
            new_parts.append(_innermost(part, lambda leaf: For(lane, width, leaf)))
        else:
            new_parts.append(For(lane, width, part))
    body = Seq(tuple(new_parts))
    return For(outer, loop.extent // width, body) if loop.extent > width else body


def _owned_by(loop: For) -> bool:
    """Every store under the loop writes an element whose last index is the loop variable, every
    load of a written buffer reads exactly a stored element, and every other load reads along
    its last index only (so sinking the loop keeps accesses contiguous, never gathers)."""
    var = Var(loop.var)
    stores = [s for s in walk_stmts(loop.body) if isinstance(s, Store)]
    written = {s.buffer.name for s in stores}
    if any(not s.indices or s.indices[-1] != var for s in stores):
        return False
    store_idx = {(s.buffer.name, s.indices) for s in stores}
    for load in loads(loop.body):
        if load.buffer.name in written:
            if (load.buffer.name, load.indices) not in store_idx:
                return False
        elif any(var == e for idx in load.indices[:-1] for e in walk(idx)):
            return False
    return True


def _innermost(loop: For, wrap) -> For:
    """The perfect nest `loop` with its innermost body replaced by wrap(body)."""
    if isinstance(loop.body, For):
        return For(loop.var, loop.extent, _innermost(loop.body, wrap), loop.kind, loop.axis)
    return For(loop.var, loop.extent, wrap(loop.body), loop.kind, loop.axis)


def _vector_width(extent: int, lanes: int) -> int | None:
    """A lane count dividing `extent`: `lanes`, or a half or quarter of it, if one divides, else
    the largest divisor in 4..lanes (7 or 14 columns of a ResNet feature map are better in one
    short vector than none); None where none divides."""
    for w in (lanes, lanes // 2, lanes // 4):
        if w >= 4 and extent % w == 0:
            return w
    return next((d for d in range(min(extent, lanes), 3, -1) if extent % d == 0), None)


def _contiguous_in(loop: For) -> bool:
    """Every store in the loop writes an element whose last index is the loop variable itself."""
    stores = [s for s in walk_stmts(loop.body) if isinstance(s, Store)]
    return bool(stores) and all(s.indices and _unit_stride(s.indices[-1], Var(loop.var))
                                for s in stores)


def _unit_stride(index, var: Var) -> bool:
    """`index` is `var` plus terms free of it (so consecutive iterations are adjacent)."""
    if index == var:
        return True
    if isinstance(index, Binary) and index.op == "add":
        a_has, b_has = (any(var == e for e in walk(x)) for x in (index.a, index.b))
        return (a_has != b_has) and _unit_stride(index.a if a_has else index.b, var)
    return False


def _parallelize(nest: Stmt) -> Stmt:
    loop = nest
    chain = []
    while isinstance(loop, For):
        chain.append(loop)
        loop = loop.body
    if _work(nest) < MIN_PARALLEL_WORK:
        return nest
    for depth, cand in enumerate(chain):
        if cand.axis != "spatial" or cand.kind != "serial":
            break
        if cand.extent >= 2:
            if independence_problem(cand, chain[:depth]) is None:
                return _replace_at(nest, depth, For(cand.var, cand.extent, cand.body, "parallel", cand.axis))
            break
    return nest


def _replace_at(nest: For, depth: int, new: For) -> For:
    if depth == 0:
        return new
    return For(nest.var, nest.extent, _replace_at(nest.body, depth - 1, new), nest.kind, nest.axis)


def _work(stmt: Stmt) -> int:
    """Executions of innermost statements: a rough measure of what a thread would save."""
    if isinstance(stmt, For):
        return stmt.extent * _work(stmt.body)
    if isinstance(stmt, Seq):
        return sum(_work(s) for s in stmt.stmts)
    if isinstance(stmt, Allocate):
        return _work(stmt.body)
    return 1


def _map_loops(stmt: Stmt, fn) -> Stmt:
    """Apply `fn` to the outermost loops of a statement (through Seq and Allocate)."""
    if isinstance(stmt, For):
        return fn(stmt)
    if isinstance(stmt, Seq):
        return Seq(tuple(_map_loops(s, fn) for s in stmt.stmts))
    if isinstance(stmt, Allocate):
        return Allocate(stmt.buffer, _map_loops(stmt.body, fn))
    return stmt


def _has_loop(stmt: Stmt) -> bool:
    return any(isinstance(s, For) for s in walk_stmts(stmt))


@dataclass(frozen=True)
class DefaultNest(Pass):
    """The default schedule (vectorized inner loop, parallel outer loop, where legal) applied to
    the top-level nest at `loop` alone: what a tuned schedule does with the stages it does not
    tile, such as a convolution's padding. `lanes`: the vector loop is split to this width (or a
    half or quarter of it) where it divides; `parallel`: whether an outer loop may take threads.
    `threads` > 0 is the GPU form (lanes and parallel unread): the nest's band on blocks of that
    many threads (see the module doc). All are parameters, not read from the host, so a recorded
    step replays the same anywhere."""
    name = "default"
    loop: str
    lanes: int = 16
    parallel: bool = True
    threads: int = 0

    @classmethod
    def for_machine(cls, loop: str, machine: MachineParams) -> DefaultNest:
        """The step for `machine` (its lanes and threads: _settings; on a GPU, gpu_threads)."""
        if machine.is_gpu:
            return cls(loop, threads=gpu_threads(machine))
        return cls(loop, *_settings(machine))

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        if site.outer:
            raise self.fail(self.loop, "is not the outermost loop of a top-level nest")
        annotated = [s.var for s in walk_stmts(site.loop) if isinstance(s, For) and s.kind != "serial"]
        if annotated:
            raise self.fail(self.loop, f"its nest is already scheduled (loop {annotated[0]})")
        if self.threads < 0:
            raise self.fail(self.loop, f"threads must be positive (GPU) or 0 (CPU), not {self.threads}")
        if self.threads:
            return bind_nest(kernel, site.index, self.threads)
        if self.lanes < 4:
            raise self.fail(self.loop, f"lanes must be 4 or more, not {self.lanes}")
        return replace_loop(kernel, site, _schedule(site.loop, self.lanes, self.parallel))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(s, sites)) for s in sites if not s.outer])
