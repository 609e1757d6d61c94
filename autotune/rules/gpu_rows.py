"""Row reductions on a GPU (softmax, layer normalization, a mean over the last axis): a block of
threads per row, each reduction split across the threads.

    for row (blockIdx.x):                      with `merge`, all nests of a row in one launch
      for t (threadIdx.x): partial[t] = init     rfactor into shared memory, a partial per thread
      for t (threadIdx.x):
        for r_o: partial[t] op= f(r_o * T + t)   neighbouring threads on neighbouring elements
      acc = fold(partial)                        every thread folds the partials into its own
                                                 register (cache_write), so none waits on another
      for i_o: for i_i (threadIdx.x): Out = g(acc, ...)

A row is read by T threads at once instead of one thread walking it. Nests the rule does not
split get the GPU default schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ir import Allocate, For, If, Seq, walk_stmts
from ...passes import Bind, CacheWrite, DefaultNest, Merge, Reorder, Rfactor, Split
from ..decisions import Choice
from ..nest import KernelInfo
from .base import Builder, SketchRule

THREADS = (32, 64, 128, 256, 512)


@dataclass(frozen=True)
class GpuRowDecisions:
    threads: int        # threads of a row's block, and partial results of each reduction
    merge: bool         # a row's nests in one launch


class GpuRowReductions(SketchRule):
    name = "gpu_rows"
    decisions = GpuRowDecisions

    def applies(self, info: KernelInfo) -> bool:
        return info.machine.is_gpu and bool(info.rows)

    def domain(self, info: KernelInfo, field: str, earlier: dict[str, Any]) -> Choice:
        if field == "threads":
            most = info.machine.max_threads_per_block
            return Choice(tuple(t for t in THREADS if t <= most), ordered=True)
        if field == "merge":
            return Choice((False, True))
        raise KeyError(field)

    def seeds(self, info: KernelInfo) -> list[GpuRowDecisions]:
        return [GpuRowDecisions(256, True), GpuRowDecisions(128, True), GpuRowDecisions(256, False)]

    def realize(self, info: KernelInfo, d: GpuRowDecisions, b: Builder) -> None:
        roots = [n.root for n in info.nests]
        groups = {root: root for root in roots}   # a nest's root -> the loop it runs in
        if d.merge:
            into = roots[0]
            for root in roots[1:]:
                if b.may(Merge(into, root)):
                    groups[root] = into
                else:
                    into = root
        rows = {}
        for root, loop in info.rows:
            # each reduction at the thread counts that divide it (else it stays in one thread)
            made = b.may(Rfactor(loop, d.threads, "shared"))
            if made:
                rows.setdefault(groups[root], []).append((root, made))
        for root in dict.fromkeys(groups.values()):
            if root not in rows:
                b.must(DefaultNest.for_machine(root, info.machine))
                continue
            self._row_block(info, d, b, root, rows[root])

    @staticmethod
    def _row_block(info: KernelInfo, d: GpuRowDecisions, b: Builder, root: str, reductions) -> None:
        """One block per row of loop `root`: its reductions across the threads, its other
        innermost spatial loops split over them."""
        nests = {n.root: n for n in info.nests}
        for nest_root, made in reductions:
            b.must(Reorder((made.one("lane"), made.one("outer"))))
            # each thread accumulates its partial in a register, stored to shared memory once
            b.may(CacheWrite(made.buffers[0], made.one("lane")))
            output = nests[nest_root].output
            if output is not None:  # each thread folds the partials into a register of its own
                b.may(CacheWrite(output.name, root))
            b.must(Bind(made.one("zero"), "threadIdx.x"))
            b.must(Bind(made.one("lane"), "threadIdx.x"))
        taken = {name for _, made in reductions for role in ("zero", "lane", "outer", "combine")
                 for name in made.get(role)}
        for loop in _spatial_leaves(b, root, taken):
            extent = b.extents()[loop]
            if extent > d.threads:
                split = b.must(Split(loop, d.threads))
                loop = split.one("inner") if split else None
            if loop:
                b.must(Bind(loop, "threadIdx.x"))
        b.must(Bind(root, "blockIdx.x"))


def _spatial_leaves(b: Builder, root: str, taken: set[str]) -> list[str]:
    """The innermost spatial loops inside loop `root` (an epilogue's columns), outside the
    split reductions' loops."""
    site = b.loop(root)
    out = []

    def visit(s) -> None:
        if isinstance(s, For):
            if s.var in taken:
                return
            if s.axis == "spatial" and not any(isinstance(x, For) for x in walk_stmts(s.body)):
                out.append(s.var)
                return
            visit(s.body)
        elif isinstance(s, Seq):
            for x in s.stmts:
                visit(x)
        elif isinstance(s, (Allocate, If)):
            visit(s.body if isinstance(s, Allocate) else s.then)
    visit(site.body)
    return out
