"""Row reductions on a GPU (softmax, layer normalization, a mean over the last axis): a block of
threads per row, each reduction split across the threads.

    for row (blockIdx.x):                      a nest's row loops (a batch, heads, rows) fused
                                               into one; with `merge`, all nests of a row in
                                               one launch
      for t (threadIdx.x): partial[t] = init     rfactor into shared memory, a partial per thread
      for t (threadIdx.x):
        for r_o: partial[t] op= f(r_o * T + t)   neighbouring threads on neighbouring elements
      acc = fold(partial)                        every thread folds the partials into its own
                                                 register (cache_write), so none waits on another
      for i_o: for i_i (threadIdx.x): Out = g(acc, ...)

A row is read by T threads at once instead of one thread walking it. The row loops are all the
spatial loops around the reductions: a model's layer norm over [1, 128, 768] or softmax over
[1, 12, 128, 128] has a batch loop of 1 outside its rows, which alone would make one block.
Nests the rule does not split get the GPU default schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ir import Allocate, For, If, Seq, Store, Var, loads, walk_stmts
from ...passes import Bind, CacheWrite, DefaultNest, Fuse, Merge, Pass, Reorder, Rfactor, ScheduleError, Split
from ..decisions import Choice
from ..nest import KernelInfo, Nest
from .base import Builder, SketchRule

THREADS = (32, 64, 128, 256, 512)
SEED_THREADS = 256  # the seeds' widest block: more threads fold more partials each


@dataclass(frozen=True)
class GpuRowDecisions:
    threads: int        # threads of a row's block, and partial results of each reduction
    merge: bool         # a row's nests in one launch


class GpuRowReductions(SketchRule):
    name = "gpu_rows"
    decisions = GpuRowDecisions

    def applies(self, info: KernelInfo) -> bool:
        return info.machine.is_gpu and bool(_thread_counts(info))

    def domain(self, info: KernelInfo, field: str, earlier: dict[str, Any]) -> Choice:
        if field == "threads":
            return Choice(_thread_counts(info), ordered=True)
        if field == "merge":
            return Choice((False, True))
        raise KeyError(field)

    def seeds(self, info: KernelInfo) -> list[GpuRowDecisions]:
        counts = _thread_counts(info)
        most = [t for t in counts if t <= SEED_THREADS] or [counts[0]]
        seeds = [GpuRowDecisions(most[-1], True), GpuRowDecisions(most[max(len(most) - 2, 0)], True),
                 GpuRowDecisions(most[-1], False)]
        return list(dict.fromkeys(seeds))

    def realize(self, info: KernelInfo, d: GpuRowDecisions, b: Builder) -> None:
        depth = _row_depth(info)
        apart = {n.root for n in info.nests if _other_reduction(info, n)}   # default-scheduled
        groups = [[info.nests[0]]]   # nests that run in one loop over rows
        for nest in info.nests[1:]:
            if d.merge and not apart & {n.root for n in groups[-1] + [nest]} and \
                    _same_thread_columns(info, groups[-1], nest) and _merge_rows(b, groups[-1][0], nest, depth):
                groups[-1].append(nest)
            else:
                groups.append([nest])
        split = {}   # nest root -> its reductions as rfactor made them
        for root, loop in info.rows:
            if root in apart:
                continue
            made = b.must(Rfactor(loop, d.threads, "shared", tail=info.extent(loop) % d.threads != 0))
            if made:
                split.setdefault(root, []).append((root, made))
        for group in groups:
            reductions = [r for n in group for r in split.get(n.root, ())]
            if not reductions:
                b.must(DefaultNest.for_machine(group[0].root, info.machine))
                continue
            self._row_block(info, d, b, [loop.var for loop in group[0].spatial[:depth]], reductions)

    @staticmethod
    def _row_block(info: KernelInfo, d: GpuRowDecisions, b: Builder, rows: list[str], reductions) -> None:
        """One block per row of loops `rows` (outermost first; a group of nests' row loops): its
        reductions across the threads, its other innermost spatial loops split over them."""
        nests = {n.root: n for n in info.nests}
        row = rows[-1]
        for nest_root, made in reductions:
            b.must(Reorder((made.one("lane"), made.one("outer"))))
            # each thread accumulates its partial in a register, stored to shared memory once
            b.may(CacheWrite(made.buffers[0], made.one("lane")))
            # each thread folds the partials into a register of its own: folded in global
            # memory, the threads of the block would race on the one element
            b.must(CacheWrite(nests[nest_root].output.name, row))
            b.must(Bind(made.one("zero"), "threadIdx.x"))
            b.must(Bind(made.one("lane"), "threadIdx.x"))
        taken = {name for _, made in reductions for role in ("zero", "lane", "outer", "combine")
                 for name in made.get(role)}
        for loop in _spatial_leaves(b, row, taken):
            extent = b.extents()[loop]
            if extent > d.threads:
                split = b.must(Split(loop, d.threads))
                loop = split.one("inner") if split else None
            if loop:
                b.must(Bind(loop, "threadIdx.x"))
        # the row loops as one block index (after the cache writes, which need affine indices)
        block = rows[0]
        for loop in rows[1:]:
            fused = b.must(Fuse(block, loop))
            block = fused.one("fused") if fused else block
        b.must(Bind(block, "blockIdx.x"))


def _thread_counts(info: KernelInfo) -> tuple[int, ...]:
    """Block widths that split every row reduction (one left whole would run in every thread of
    the block, each accumulating into the same global element) and the machine allows: those
    that divide every row, else (rows of prime length: a ViT's 197 tokens) those no longer than
    the shortest row, its last chunk guarded."""
    most = [t for t in THREADS if t <= info.machine.max_threads_per_block] if info.rows else []
    extents = [info.extent(loop) for _, loop in info.rows]
    dividing = tuple(t for t in most if all(e % t == 0 for e in extents))
    return dividing or tuple(t for t in most if t <= min(extents))


def _other_reduction(info: KernelInfo, nest: Nest) -> bool:
    """Whether the nest holds a reduction that is not a row's: in a row block every thread would
    run it whole, accumulating into one global element; the nest keeps the default schedule."""
    rows = {loop for _, loop in info.rows}
    return any(isinstance(s, For) and s.axis == "reduce" and s.var not in rows for s in walk_stmts(nest.spatial[0]))


def _row_depth(info: KernelInfo) -> int:
    """How many spatial loops of a row nest enclose its reductions: all are rows."""
    roots = {root for root, _ in info.rows}
    return min(len(n.spatial) for n in info.nests if n.root in roots)


def _merge_rows(b: Builder, into: Nest, nest: Nest, depth: int) -> bool:
    """Merge `nest` into the loops of `into`, row loop by row loop down to `depth`, all or none:
    a half-merged nest would leave sibling row loops that cannot fuse into one block index."""
    if min(len(into.spatial), len(nest.spatial)) < depth:
        return False
    steps = [Merge(a.var, c.var) for a, c in zip(into.spatial[:depth], nest.spatial[:depth])]
    if not _all_accepted(b.kernel, steps):
        return False
    for step in steps:
        b.must(step)
    return True


def _same_thread_columns(info: KernelInfo, group: list[Nest], nest: Nest) -> bool:
    """Whether a buffer that `nest` and the group pass between them in global memory (an Add
    before a layer norm) is read by the thread that wrote it: every access indexes its last
    dimension by a loop variable alone, and a row block's threads take column c of each loop
    (split, bound or rfactored by T) at thread c mod T. The reductions' outputs need not: every
    thread holds them in a register."""
    outputs = {n.output.name for n in info.nests if n.root in {root for root, _ in info.rows}}
    (written, used), (written_next, used_next) = _uses(group), _uses([nest])
    passed = ((written & used_next.keys()) | (written_next & used.keys())) - outputs
    return all(ix and isinstance(ix[-1], Var) for name in passed for ix in used[name] + used_next[name])


def _uses(nests: list[Nest]) -> tuple[set[str], dict[str, list[tuple]]]:
    """The buffers the nests write, and the indices of every access to each buffer."""
    written, used = set(), {}
    for n in nests:
        for st in walk_stmts(n.spatial[0]):
            if isinstance(st, Store):
                written.add(st.buffer.name)
                used.setdefault(st.buffer.name, []).append(st.indices)
        for load in loads(n.spatial[0]):
            used.setdefault(load.buffer.name, []).append(load.indices)
    return written, used


def _all_accepted(kernel, steps: list[Pass]) -> bool:
    try:
        for step in steps:
            kernel = step.apply(kernel)
    except ScheduleError:
        return False
    return True


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
