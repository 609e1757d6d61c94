"""The untuned default schedule: parallelize an outer loop and vectorize an inner one, where legal.

It is what a kernel gets before any tuning: never pathological, never clever. Each top-level loop
nest is treated on its own:
- the innermost loop, if it is spatial and walks the last (contiguous) index of every store in it,
  is vectorized, split by a vector width that divides it when it is long;
- the outermost spatial loop of the nest with at least two iterations is made parallel when the
  nest does enough work and every store under it is indexed by that loop (so iterations write
  disjoint elements) or goes to a buffer allocated inside it.
"""
from __future__ import annotations

import os

from ..ir import Allocate, For, Kernel, Seq, Stmt, Store, Var, replace_body, substitute, walk, walk_stmts

VECTOR_WIDTHS = (16, 8, 4)     # float32 lanes of AVX-512, AVX2, SSE
MIN_PARALLEL_WORK = 1 << 14    # innermost iterations below which threads cost more than they save


def default_schedule(kernel: Kernel, num_cores: int | None = None) -> Kernel:
    cores = num_cores or os.cpu_count() or 1
    return replace_body(kernel, _schedule(kernel.body, cores))


def _schedule(stmt: Stmt, cores: int) -> Stmt:
    def nest(loop: For) -> Stmt:
        vectorized = _vectorize_innermost(loop)
        return _parallelize(vectorized, cores) if cores > 1 else vectorized
    return _map_loops(stmt, nest)


def _vectorize_innermost(loop: For) -> Stmt:
    body = loop.body
    if _has_loop(body):
        new_body = _map_loops(body, _vectorize_innermost)
        return loop if new_body is body else For(loop.var, loop.extent, new_body, loop.kind, loop.axis)
    if loop.axis != "spatial" or loop.kind != "serial" or not _contiguous_in(loop):
        return loop
    if loop.extent <= VECTOR_WIDTHS[0]:
        return For(loop.var, loop.extent, body, "vectorized", loop.axis) if loop.extent >= 4 else loop
    width = next((w for w in VECTOR_WIDTHS if loop.extent % w == 0), None)
    if width is None:
        return loop
    outer, inner = f"{loop.var}_o", f"{loop.var}_v"
    split = substitute(body, {loop.var: Var(outer) * width + Var(inner)})
    return For(outer, loop.extent // width, For(inner, width, split, "vectorized"), axis=loop.axis)


def _contiguous_in(loop: For) -> bool:
    """Every store in the loop writes an element whose last index is the loop variable itself."""
    stores = [s for s in walk_stmts(loop.body) if isinstance(s, Store)]
    return bool(stores) and all(s.indices and s.indices[-1] == Var(loop.var) for s in stores)


def _parallelize(nest: Stmt, cores: int) -> Stmt:
    work = 1
    loop = nest
    chain = []
    while isinstance(loop, For):
        chain.append(loop)
        work *= loop.extent
        loop = loop.body
    if work < MIN_PARALLEL_WORK:
        return nest
    for depth, cand in enumerate(chain):
        if cand.axis != "spatial" or cand.kind != "serial":
            break
        if cand.extent >= 2:
            if _iterations_disjoint(cand):
                return _replace_at(nest, depth, For(cand.var, cand.extent, cand.body, "parallel", cand.axis))
            break
    return nest


def _iterations_disjoint(loop: For) -> bool:
    local = {s.buffer.name for s in walk_stmts(loop.body) if isinstance(s, Allocate)}
    var = Var(loop.var)
    for s in walk_stmts(loop.body):
        if isinstance(s, Store) and s.buffer.name not in local:
            if not any(var == e for idx in s.indices for e in walk(idx)):
                return False
    return True


def _replace_at(nest: For, depth: int, new: For) -> For:
    if depth == 0:
        return new
    return For(nest.var, nest.extent, _replace_at(nest.body, depth - 1, new), nest.kind, nest.axis)


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
