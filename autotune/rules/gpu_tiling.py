"""Multi-level tiling on a GPU (Ansor's and MetaSchedule's "SSSRRSRS" for CUDA, with fewer levels).

Each spatial loop of the main nest is split into block × thread × register levels:

    for block (fused, blockIdx.x):                  a block's tile of the output
      for thread_z, thread_y, thread_x:             threadIdx.{z,y,x}: one register tile each
        accumulators = 0                            cache_write: the tile in registers
        for r_o:                                    the first reduction loop in chunks of `step`
          copy the block's inputs for this chunk    cache_read into shared memory, the copy split
            into shared memory                      over all the block's threads (cooperative fetch)
          for r_i, other reduction loops:           unrolled (`unroll`)
            for the register tile: accumulate
        store the register tile

The thread loops are bound before the shared copies are made, so a copy holds what all of the
block's threads read (passes/cache.py), and bound to at most three axes, the innermost
spatial loop on threadIdx.x so that neighbouring threads touch neighbouring addresses.
Other top-level nests (a padding stage) get the GPU default schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...ir import Allocate, Buffer, For, If, Seq, itemsize, walk_stmts
from ...passes import (Bind, CacheRead, CacheWrite, DefaultNest, Distribute, Fuse, Inline, Reorder, Split, Unroll,
                       Vectorize)
from ..decisions import Choice, PerLoop
from ..nest import KernelInfo
from .base import Builder, SketchRule

THREAD_AXES = ("threadIdx.x", "threadIdx.y", "threadIdx.z")
MAX_REGISTER_TILE = 64      # accumulators a thread keeps in registers (of 255)
MAX_UNROLLED = 16           # reduction chunks longer than this stay loops
MAX_STEP = 64               # reduction iterations staged at once
VECTORS = (1, 2, 4)         # a copy's vector: 16 bytes of float32 at most (one LDG.128)


@dataclass(frozen=True)
class GpuTileDecisions:
    threads: tuple[int, ...]    # per spatial loop of the main nest: its threads in a block
    inner: tuple[int, ...]      # per spatial loop: the register tile of one thread
    step: int                   # the first reduction loop's chunk per shared-memory stage
    shared: bool                # stage what the reduction reads in shared memory
    unroll: bool                # unroll the reduction loops inside a chunk
    interleave: bool            # a thread's tile strided by the threads (neighbours on neighbouring
                                # elements: coalesced, no bank conflicts), else contiguous
    inline: bool = False        # the intermediates main reads (a padded input) computed where read
    vector: int = 1             # elements each thread copies at once into shared memory (float4)


def _factors(extent: int, most: int) -> tuple[int, ...]:
    """Powers of two and divisors of `extent` up to `most` (and `extent`)."""
    pool = {f for f in range(1, min(extent, most) + 1) if extent % f == 0}
    pool |= {1 << k for k in range(8) if (1 << k) <= min(extent, most)}
    return tuple(sorted(pool))


class GpuTiling(SketchRule):
    name = "gpu_tiling"
    decisions = GpuTileDecisions

    def applies(self, info: KernelInfo) -> bool:
        main = info.main
        return info.machine.is_gpu and bool(main.spatial) and bool(main.reduce) and main.output is not None

    def domain(self, info: KernelInfo, field: str, earlier: dict[str, Any]):
        loops = info.main.spatial
        if field == "threads":
            most = info.machine.max_threads_per_block
            return PerLoop(tuple(Choice(_factors(l.extent, min(most, 256)), ordered=True) for l in loops), weight=2)
        if field == "inner":
            return PerLoop(tuple(Choice(_factors(l.extent, 16), ordered=True) for l in loops), weight=2)
        if field == "step":
            return Choice(_factors(info.extent(info.main.reduce[0]), MAX_STEP), ordered=True)
        if field in ("shared", "unroll", "interleave"):
            return Choice((False, True))
        if field == "vector":
            return Choice(VECTORS, ordered=True)
        if field == "inline":
            return Choice((False, True) if info.stages else (False,))
            return Choice((False, True))
        raise KeyError(field)

    def constrain(self, info: KernelInfo, d: GpuTileDecisions) -> GpuTileDecisions:
        """Within the machine: threads in a block at most its limit, on at most three loops; a
        register tile of at most MAX_REGISTER_TILE; each loop's threads × tile within it."""
        extents = [l.extent for l in info.main.spatial]
        threads, inner = list(d.threads), list(d.inner)
        for k, n in enumerate(extents):
            while threads[k] * inner[k] > n and inner[k] > 1:
                inner[k] //= 2
            while threads[k] * inner[k] > n and threads[k] > 1:
                threads[k] //= 2
        bound = [k for k, t in enumerate(threads) if t > 1]
        for k in bound[:-len(THREAD_AXES)]:  # the outermost ones beyond three axes
            threads[k] = 1
        while math.prod(threads) > info.machine.max_threads_per_block:
            k = max(range(len(threads)), key=lambda i: threads[i])
            threads[k] //= 2
        while math.prod(inner) > MAX_REGISTER_TILE:
            k = max(range(len(inner)), key=lambda i: inner[i])
            inner[k] //= 2
        step = d.step
        if d.shared:  # staging needs unguarded tiles (_stage): thread counts and chunks that divide
            for k, n in enumerate(extents):
                if n % inner[k]:
                    inner[k] = max(f for f in range(1, inner[k] + 1) if n % f == 0)
                threads[k] = max(f for f in range(1, threads[k] + 1) if (n // inner[k]) % f == 0)
            first = info.extent(info.main.reduce[0])
            step = max(f for f in range(1, step + 1) if first % f == 0)
        return GpuTileDecisions(tuple(threads), tuple(inner), step, d.shared, d.unroll, d.interleave, d.inline,
                                d.vector)

    def seeds(self, info: KernelInfo) -> list[GpuTileDecisions]:
        """16×16 threads on the two innermost loops longer than one, 4×4 or 2×2 register tiles,
        chunks of 8 or 16 staged in shared memory (and once without); with three such loops
        (a convolution's channels, rows and columns), 4×8×8 threads too. `constrain` fits
        them to the extents."""
        loops = info.main.spatial
        wide = [k for k, l in enumerate(loops) if l.extent > 1]

        def seed(threads, inner, step, shared, interleave, vector=1):
            t, i = [1] * len(loops), [1] * len(loops)
            for k, tk, ik in zip(wide[-len(threads):], threads, inner):
                t[k], i[k] = tk, ik
            return GpuTileDecisions(tuple(t), tuple(i), step, shared, True, interleave, bool(info.stages), vector)
        out = [seed((16, 16), (4, 4), 16, True, True), seed((16, 16), (4, 4), 16, True, False, 4),
               seed((16, 16), (4, 4), 8, True, False),
               seed((16, 16), (2, 2), 16, True, True), seed((16, 16), (4, 4), 1, False, True)]
        if len(wide) >= 3:
            out += [seed((4, 8, 8), (4, 2, 2), 8, True, True), seed((8, 4, 8), (2, 2, 4), 16, True, True)]
        return out

    # realization

    def realize(self, info: KernelInfo, d: GpuTileDecisions, b: Builder) -> None:
        # an inlined padding is read through its guard: one launch and one copy of the input fewer
        inlined = {stage for stage in info.stages if d.inline and b.may(Inline(stage)) is not None}
        outer, threads, tile = self._tile(info, d, b)
        if len(outer + threads + tile) > 1:
            b.must(Reorder(tuple(outer + threads + tile)))
        reduce = self._accumulate(info, d, b, outer, threads, tile)
        bound = list(zip(reversed(threads), THREAD_AXES))
        for loop, axis in bound:
            b.must(Bind(loop, axis))
        if d.shared and reduce:
            self._stage(info, b, reduce, [(b.extents()[loop], axis) for loop, axis in bound], d.vector)
        if len(outer) > 1:
            fused = outer[0]
            for loop in outer[1:]:
                made = b.must(Fuse(fused, loop))
                if not made:
                    break
                fused = made.one("fused")
            outer = [fused]
        if outer:
            b.must(Bind(outer[0], "blockIdx.x"))
        for nest in info.other_nests:
            if nest.output is None or nest.output.name not in inlined:
                b.must(DefaultNest.for_machine(nest.root, info.machine))

    @staticmethod
    def _tile(info: KernelInfo, d: GpuTileDecisions, b: Builder) -> tuple[list[str], list[str], list[str]]:
        """Each spatial loop split into its block, thread and register levels (a level of one
        iteration left out); the names of each level's loops."""
        outer, threads, tile = [], [], []
        for loop, t, i in zip(info.main.spatial, d.threads, d.inner):
            rest = loop.var
            if t * i < loop.extent:
                made = b.must(Split(loop.var, t * i))
                if not made:
                    outer.append(loop.var)
                    continue
                outer.append(made.one("outer"))
                rest = made.one("inner")
            elif t * i == 1:  # a loop of one iteration
                outer.append(rest)
                continue
            if t > 1 and i > 1:
                # interleaved: index = block + tile * t + thread; else block + thread * i + tile
                made = b.must(Split(rest, t if d.interleave else i))
                if made:
                    thread_part, tile_part = ("inner", "outer") if d.interleave else ("outer", "inner")
                    threads.append(made.one(thread_part))
                    tile.append(made.one(tile_part))
            elif t > 1:
                threads.append(rest)
            else:
                tile.append(rest)
        return outer, threads, tile

    def _accumulate(self, info, d: GpuTileDecisions, b: Builder, outer, threads, tile) -> list[str]:
        """The register tile accumulated in registers (cache_write inside the threads) with the
        reduction loops moved outside it, chunked by `step`. Returns the reduction loops of the
        tile's nest, outermost first (empty where the accumulation was refused)."""
        at = (threads or outer or [None])[-1]
        if at is None:
            return []
        made = b.may(CacheWrite(info.main.output.name, at))
        if not made:
            return []
        reduce = list(info.main.reduce)
        compute = tile
        if tile:
            distributed = b.must(Distribute(tile[0]))
            if not distributed:
                return []
            compute = [distributed.loops.get(n, (n,))[0] for n in tile]
            if not b.must(Reorder(tuple(reduce) + tuple(compute))):
                return []
        first = reduce[0]
        if 1 < d.step < b.extents()[first]:
            split = b.must(Split(first, d.step))
            if split:
                reduce[:1] = [split.one("outer"), split.one("inner")]
        if d.unroll:  # the loops inside one chunk
            for loop in reduce[1:]:
                if b.extents()[loop] <= MAX_UNROLLED:
                    b.must(Unroll(loop))
        for loop in tile + compute + list(made.get("write")):
            if b.extents()[loop] <= MAX_UNROLLED:
                b.must(Unroll(loop))
        return reduce

    @staticmethod
    def _stage(info: KernelInfo, b: Builder, reduce: list[str], axes: list[tuple[int, str]], vector: int) -> None:
        """Copy each buffer the reduction reads into shared memory at the chunk loop, the copy
        spread over the block's threads (innermost axis first), `vector` contiguous elements a
        thread where the copy's rows hold whole vectors and no guard splits them, within the
        shared memory of a block."""
        at = reduce[0]
        site = b.loop(at)
        if _guarded(b.kernel.body, at) or any(isinstance(s, If) for s in walk_stmts(site.body)):
            # a tile that does not divide its loop: the barriers around the copies would sit
            # under its guard, waiting for threads the guard keeps out (TVM refuses them)
            return
        budget = info.machine.shared_memory_per_block
        allocated = _allocated(b.kernel)  # the stages not inlined
        copies: list[Buffer] = []

        def fits(kernel, made) -> bool:
            (copy,) = [s.buffer for s in walk_stmts(kernel.body) if isinstance(s, Allocate) and s.buffer.name in made.buffers]
            copies.append(copy)
            return copy.size * itemsize(copy.dtype) <= budget
        for buffer in info.inputs + tuple(s for s in info.stages if s in allocated):
            # refused where the buffer is not read at that loop or its region is unknown, or
            # left out beyond the block's shared memory: read from global memory then
            made = b.may(CacheRead(buffer, at, "shared"), accept=fits)
            if not made:
                continue
            copy = copies[-1]
            budget -= copy.size * itemsize(copy.dtype)
            loops = list(made.get("copy"))
            copy_site = b.loop(loops[0])
            if vector > 1 and copy.shape[-1] % vector == 0 and not any(isinstance(s, If) for s in walk_stmts(copy_site)):
                # split before the fuse, so the vector's index stays a plain ramp (no // or %)
                split = b.must(Split(loops[-1], vector)) if copy.shape[-1] > vector else None
                if split:
                    b.must(Vectorize(split.one("inner")))
                    loops[-1] = split.one("outer")
                elif copy.shape[-1] == vector:
                    b.must(Vectorize(loops.pop()))
            fused = loops[0] if loops else None
            for loop in loops[1:]:
                fm = b.must(Fuse(fused, loop))
                if not fm:
                    return
                fused = fm.one("fused")
            if fused:
                _spread(b, fused, axes)


def _spread(b: Builder, loop: str, axes: list[tuple[int, str]]) -> None:
    """Split a copy loop over the block's threads: its innermost part on threadIdx.x, the next
    on threadIdx.y, ...; what is left runs as a serial loop around them. A part is bound only
    where it has exactly as many iterations as the axis has threads: a shorter one would be
    guarded as a whole, and TVM cannot put the barrier that follows the copy inside a guard.
    (A copy smaller than the block leaves its outer part serial: copied by every thread row.)"""
    total = math.prod(n for n, _ in axes)
    if axes and b.extents()[loop] > total:
        made = b.must(Split(loop, total))  # a copy that does not divide: the store is guarded
        if not made:
            return
        loop = made.one("inner")
    for n, axis in axes:
        extent = b.extents()[loop]
        if extent < n:
            return
        if extent == n:
            b.must(Bind(loop, axis))
            return
        made = b.must(Split(loop, n))
        if not made:
            return
        b.must(Bind(made.one("inner"), axis))
        loop = made.one("outer")


def _guarded(stmt, loop: str, inside: bool = False) -> bool:
    """Whether loop `loop` sits inside an `if`."""
    if isinstance(stmt, For):
        return inside if stmt.var == loop else _guarded(stmt.body, loop, inside)
    if isinstance(stmt, Seq):
        return any(_guarded(s, loop, inside) for s in stmt.stmts)
    if isinstance(stmt, Allocate):
        return _guarded(stmt.body, loop, inside)
    if isinstance(stmt, If):
        return _guarded(stmt.then, loop, True) or (stmt.otherwise is not None and _guarded(stmt.otherwise, loop, True))
    return False


def _allocated(kernel) -> set[str]:
    return {s.buffer.name for s in walk_stmts(kernel.body) if isinstance(s, Allocate)}
