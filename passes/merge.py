"""merge: two sibling loops in one (loop fusion of consecutive nests).

    for i in 0..N { A(i) }
    for j in 0..N { B(j) }        → for i in 0..N { A(i); B(i) }

A layer norm's mean, variance and output nests then run as one loop over rows: one parallel
region instead of three, and each row stays in L1 between the three passes over it. Legal when
iteration i of B needs from A only what iteration i of A made, and A never needs what B
overwrites: every buffer one of them writes and the other touches is indexed, in every access
of both, by the loop variable alone in one and the same dimension (the row `Mean[i, 0]`), or by
the same expressions of it alone in some dimensions that together determine it (a loop over
heads × tokens fused into one: `Max[i // 197, i % 197, 0]`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Allocate, For, If, Kernel, Load, Seq, Stmt, Store, Var, replace_body, seq, substitute, walk_stmts
from ..ir.visit import stmt_exprs, variables, walk
from .analysis import determined_vars, independence_problem, written_uses
from .base import Pass, find_loop, loop_ref, loop_sites


def _accesses(body: Stmt) -> dict[str, list[tuple]]:
    """Buffer name -> index tuples of its loads and stores in `body` (buffers allocated in it
    excluded), and the names it writes."""
    local = {s.buffer.name for s in walk_stmts(body) if isinstance(s, Allocate)}
    found: dict[str, list[tuple]] = {}
    for s in walk_stmts(body):
        if isinstance(s, Store) and s.buffer.name not in local:
            found.setdefault(s.buffer.name, []).append(s.indices)
        for e in stmt_exprs(s):
            for x in walk(e):
                if isinstance(x, Load) and x.buffer.name not in local:
                    found.setdefault(x.buffer.name, []).append(x.indices)
    return found


def _one_slice_per_row(indices: list[tuple], row: str, extent: int) -> bool:
    """Whether the accesses `indices` of one buffer touch, in iteration `row` of a loop of
    `extent`, only a slice that no other iteration touches: some dimensions are indexed, in
    every access, by the same expressions of `row` alone, and together they determine `row`."""
    rank = len(indices[0])
    if any(len(ix) != rank for ix in indices):
        return False
    dims = tuple(indices[0][d] for d in range(rank) if all(ix[d] == indices[0][d] for ix in indices)
                 and variables((indices[0][d],)) == {row})
    return row in determined_vars(dims, {row: extent})


def _replace_pair(s: Stmt, first: For, second: For, merged: For) -> tuple[Stmt, bool]:
    """`s` with the consecutive statements `first`, `second` (by identity) replaced by `merged`."""
    if isinstance(s, Seq):
        stmts = list(s.stmts)
        for k in range(len(stmts) - 1):
            if stmts[k] is first and stmts[k + 1] is second:
                return seq(*stmts[:k], merged, *stmts[k + 2:]), True
        for k, x in enumerate(stmts):
            new, done = _replace_pair(x, first, second, merged)
            if done:
                stmts[k] = new
                return seq(*stmts), True
        return s, False
    if isinstance(s, For):
        body, done = _replace_pair(s.body, first, second, merged)
        return (For(s.var, s.extent, body, s.kind, s.axis), True) if done else (s, False)
    if isinstance(s, Allocate):
        body, done = _replace_pair(s.body, first, second, merged)
        return (Allocate(s.buffer, body), True) if done else (s, False)
    if isinstance(s, If):
        then, done = _replace_pair(s.then, first, second, merged)
        if done:
            return If(s.cond, then, s.otherwise), True
        if s.otherwise is not None:
            otherwise, done = _replace_pair(s.otherwise, first, second, merged)
            if done:
                return If(s.cond, s.then, otherwise), True
    return s, False


@dataclass(frozen=True)
class Merge(Pass):
    """Run the loop `second`, the statement right after loop `first` (same extent and axis),
    inside `first`, after its body; `second`'s variable becomes `first`'s. The merged loop keeps
    `first`'s kind: a serial `second` joins a parallel `first` when its own iterations are
    independent; other annotations must be equal."""
    name = "merge"
    first: str
    second: str

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.second, self)
        a, b = find_loop(kernel, self.first, self).loop, site.loop
        kinds = {a.kind, b.kind}
        if (a.extent, a.axis) != (b.extent, b.axis) or (len(kinds) > 1 and kinds != {"serial", "parallel"}):
            raise self.fail(self.second, f"is a {b.kind} {b.axis} loop of {b.extent} iterations, {a.var} a "
                                         f"{a.kind} {a.axis} loop of {a.extent}; only equal loops merge "
                                         f"(serial into parallel where its iterations are independent)")
        if a.axis != "spatial":
            raise self.fail(self.first, "is a reduction loop; only spatial loops merge")
        if a.kind == "parallel" and b.kind == "serial":
            problem = independence_problem(b, site.outer)
            if problem:
                raise self.fail(self.second, f"would run in parallel inside {a.var}, but its iterations "
                                             f"are not independent: {problem}")
        later = substitute(b.body, {b.var: Var(a.var)})
        uses_a, uses_b = _accesses(a.body), _accesses(later)
        written_a, written_b = ({b.name for b in written_uses(s)} for s in (a.body, later))
        for name in sorted((written_a & set(uses_b)) | (written_b & set(uses_a))):
            if not _one_slice_per_row(uses_a[name] + uses_b[name], a.var, a.extent):
                raise self.fail(self.second, f"{name} is shared with {a.var}'s body at other positions than "
                                             f"a slice indexed by the loop variable alone: an "
                                             f"iteration would see another iteration's data")
        merged = For(a.var, a.extent, seq(a.body, later), a.kind, a.axis)
        body, done = _replace_pair(kernel.body, a, b, merged)
        if not done:
            raise self.fail(self.second, f"is not the statement right after loop {a.var}")
        return replace_body(kernel, body)

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(x, sites), loop_ref(y, sites))
                                  for x in sites for y in sites if y.index > x.index and y.outer == x.outer])
