"""Multi-level tiling of the main nest (CPU): Ansor's tiling sketch for conv- and matmul-like nests.

    split each spatial loop by its tile factor; outer loops first (in a chosen order), then the
    tile loops, the vector loop last; fuse outer loops into one parallel loop; accumulate the
    tile in registers (cache_write), move the reduction loops outside the tile (distribute +
    reorder), unroll the innermost reduction loop; optionally split the outermost reduction
    loop into chunks and sweep each chunk over all the tiles of an outer loop (partial sums
    in a second, outer accumulator: `chunk`); optionally copy an input's panel to a contiguous
    buffer (cache_read); vectorize the vector loop and unroll the other tile loops.

The lanes may sit on another loop than the output's contiguous one (`lanes`, nest.Lanes): the
inputs it reads are packed so its reads stay contiguous, the accumulator tile is laid out with
that dimension last (cache_write's order), and the tile is stored back a lane vector at a time
or, transposed, along the output's contiguous dimension (`transpose_store`). An input read a
row per reduction step along the vector loop (a matmul's B[k, n]) may be packed into panels
[n / tile][k][tile] (`panel`). An intermediate the main nest reads (a padded input) may be
computed at one of the outer loops (`stage_at`), a tile's region at a time.

Other top-level nests get the default schedule. Plugin passes' instances (their
`schedule_space` on the kernel) are offered as one more step (`extra`).

Which seed candidates the rule offers is a list of TileSeeds (rules/tile_seeds.py), each a rule
of thumb with its own applicability.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

from ...passes import (CacheRead, CacheWrite, ComputeAt, DefaultNest, Distribute, Fuse, Pack, Parallel, Reorder,
                       Split, Unroll, Vectorize)
from ...passes.annotate import MAX_VECTOR
from ..decisions import Choice, PerLoop
from ..nest import KernelInfo, Lanes
from .base import Builder, SketchRule

# A register tile's rows: a few vectors of accumulators each, whatever the extent (where one
# does not divide it, the last tile is guarded and codegen peels it off the loop).
TILE_ROWS = (1, 2, 3, 4, 6, 8, 16)
VECTOR_FACTORS = (1, 4, 8, 16, 32, 64)
UNROLL_FACTORS = (1, 2, 4, 8)
MAX_UNROLLED = 16           # tile loops longer than this stay loops
TILE_UNIT = 8               # float32 lanes the register tile's size is counted in (see tile_size)


@dataclass(frozen=True)
class TileDecisions:
    # a field's domain may depend on the fields above it
    lanes: tuple[int, int] | None            # (index into info.lanes, lane count) or the contiguous loop's
    factors: tuple[int, ...]                 # tile of each spatial loop of the main nest
    order: int                               # permutation of the outer loops (index)
    unroll: int                              # the innermost reduction loop's unroll
    transpose_store: bool                    # lanes elsewhere: store along the output's last dimension
    panel: bool                              # pack the panel inputs
    chunk: tuple[int, int] | None            # (reduction chunk, outer level) swept over the tiles below
    cache_read: tuple[str, int] | None       # (input, outer loop) to copy it at
    stage_at: int | None                     # outer loop the intermediates are computed at
    fuse: int                                # outer loops fused into the parallel one: 1 or 2
    extra: int | None                        # a plugin pass's instance, appended

    @classmethod
    def plain(cls, loops: int) -> TileDecisions:
        """No tiling: every loop outer, nothing optional (what seeds start from)."""
        return cls(None, (1,) * loops, 0, 1, False, False, None, None, None, 1, None)


@functools.cache   # asked for every loop each time a search samples or mutates a candidate
def tile_factors(extent: int) -> tuple[int, ...]:
    """The tile factors a loop of `extent` (not the vector loop) is offered: TILE_ROWS, and each
    divisor of the extent up to a vector's rows (TILE_UNIT), a tile with no tail (7 for 56 and
    77, 5 for 1000)."""
    divisors = (f for f in range(1, min(extent, TILE_UNIT) + 1) if extent % f == 0)
    return tuple(sorted({f for f in TILE_ROWS if f <= extent}.union(divisors)))


def effective_factors(info: KernelInfo, d) -> list[int]:
    """The tile factors realize uses: a loop holding the lanes is tiled by their count."""
    factors = list(d["factors"] if isinstance(d, dict) else d.factors)
    lanes = d["lanes"] if isinstance(d, dict) else d.lanes
    if lanes:
        factors[info.lanes[lanes[0]].loop] = lanes[1]
    return factors


def vector_loop(info: KernelInfo, lanes: tuple[int, int] | None) -> int | None:
    """The position of the loop holding the vector lanes."""
    return info.lanes[lanes[0]].loop if lanes else info.vector


def outer_loops(info: KernelInfo, factors: list[int]) -> list[int]:
    """The positions of the outer loops realize makes (loops of extent 1 are kept in front, not
    counted), before `order` permutes them."""
    return [k for k, (loop, f) in enumerate(zip(info.main.spatial, factors))
            if loop.extent > 1 and not (f >= loop.extent and f > 1)]


def tile_size(factors, vector: int | None) -> int:
    """A register tile's size in vectors of TILE_UNIT float32 lanes (32 bytes: an AVX2 register,
    half an AVX-512 one), the unit the tiling rules were measured in."""
    size = 1
    for k, f in enumerate(factors):
        size *= max(1, f // TILE_UNIT) if k == vector else f
    return size


def max_tile(info: KernelInfo) -> int:
    """The register tile's limit in tile_size's units: all vector registers but two for
    operands, 16 at most (32 with AVX-512's 16 lanes; 14 with AVX2: two spill, which the
    blocked rules' widest row tile accepts)."""
    machine = info.machine
    return min(machine.vector_registers - 2, 16) * machine.lanes() // TILE_UNIT


class MultiLevelTiling(SketchRule):
    name = "tiling"
    decisions = TileDecisions

    def __init__(self, seeds: tuple = ()):
        self.seed_rules = seeds

    def applies(self, info: KernelInfo) -> bool:
        return bool(info.main.spatial)

    def domain(self, info: KernelInfo, field: str, earlier: dict[str, Any]):
        loops = info.main.spatial
        if field == "lanes":
            return Choice((None, *((n, f) for n, l in enumerate(info.lanes) for f in l.factors)), p=0.5)
        if field == "factors":
            vector = vector_loop(info, earlier["lanes"])
            lanes_at = vector if earlier["lanes"] else None
            choices = []
            for k, loop in enumerate(loops):
                if k == lanes_at:  # its factor is the lane count
                    choices.append(Choice((1,)))
                    continue
                pool = VECTOR_FACTORS if k == vector else tile_factors(loop.extent)
                # a loop that shares an output dimension with another (a grouped conv's
                # g * 28 + c) is cut evenly: a guard's wider range there defeats the dependence
                # test of the band's reorder
                even = loop.var in info.mixed_loops
                pool = tuple(f for f in pool if f <= loop.extent and not (even and loop.extent % f))
                # a seed's factor outside the pool is legal (a row of 14); one over the extent
                # puts the whole loop in the tile
                choices.append(Choice(pool or (1,), ordered=True,
                                      legal=functools.partial(_even, extent=loop.extent) if even else _positive))
            return PerLoop(tuple(choices), weight=2)
        factors = effective_factors(info, earlier) if "factors" in earlier else []
        positions = outer_loops(info, factors)
        outer = len(positions)
        if field == "order":
            return Choice(tuple(range(_permutations(outer))))
        if field == "fuse":
            # the second outer loop must still sit alone in the first: nothing computed,
            # copied or chunked at the first; and both cut evenly: a tile's guard through the
            # fused loop's // and % is not peeled (codegen), a vector tail's then runs scalar
            levels = [earlier["stage_at"], (earlier["cache_read"] or (0, None))[1], (earlier["chunk"] or (0, None))[1]]
            first = [positions[i] for i in _permutation(outer, earlier["order"])[:2]]
            even = all(loops[k].extent % factors[k] == 0 for k in first)
            return Choice((1, 2) if outer >= 2 and 0 not in levels and even else (1,))
        if field == "unroll":
            last = info.extent(info.main.reduce[-1]) if info.main.reduce else 1
            return Choice(tuple(u for u in UNROLL_FACTORS if u <= last))
        if field == "cache_read":
            packed = set(packed_inputs(info, earlier["lanes"], earlier["panel"]))
            # below a chunk's level the outer loops are the reduction's copies (distribute):
            # an epilogue's input (a bias) is not read there
            levels = range(min(4, outer) if earlier["chunk"] is None else earlier["chunk"][1] + 1)
            return Choice((None, *((b, at) for b in info.inputs if b not in packed for at in levels)), p=0.5)
        if field == "stage_at":
            return Choice((None, *range(min(4, outer))) if info.stages else (None,), p=0.6)
        if field == "transpose_store":
            return Choice((False, True) if earlier["lanes"] else (False,))
        if field == "panel":
            # panels of the vector tile's width, which must divide each panel input's rows
            width = effective_factors(info, earlier)[info.vector] if info.vector is not None else 1
            fits = width > 1 and all(info.input_shape(b)[-1] % width == 0 for b in info.panels)
            return Choice((False, True) if info.panels and not earlier["lanes"] and fits else (False,))
        if field == "chunk":
            levels = range(min(3, outer - 1)) if info.main.output is not None else range(0)
            return Choice((None, *((f, lv) for f in info.chunk_factors for lv in levels)), p=0.3)
        if field == "extra":
            return Choice((None, *range(len(info.extra))), p=0.3)
        raise KeyError(field)

    def seeds(self, info: KernelInfo) -> list[TileDecisions]:
        base = TileDecisions.plain(len(info.main.spatial))
        return [d for rule in self.seed_rules if rule.applies(info) for d in rule.seeds(info, base)]

    def constrain(self, info: KernelInfo, d: TileDecisions) -> TileDecisions:
        """The register tile kept within max_tile: the largest factor but the vector's shrunk."""
        factors = effective_factors(info, d)
        vector = vector_loop(info, d.lanes)
        limit = max_tile(info)
        while tile_size(factors, vector) > limit and any(f > 1 for i, f in enumerate(factors) if i != vector):
            k = max((i for i in range(len(factors)) if i != vector), key=lambda i: factors[i])
            factors[k] = max(f for f in tile_factors(info.main.spatial[k].extent) if f < factors[k])
        if d.lanes:
            factors[vector] = d.factors[vector]
        return TileDecisions(**{**d.__dict__, "factors": tuple(factors)})

    # realization

    def realize(self, info: KernelInfo, d: TileDecisions, b: Builder) -> None:
        loops = info.main.spatial
        lanes = info.lanes[d.lanes[0]] if d.lanes else None
        vector = vector_loop(info, d.lanes)
        factors = effective_factors(info, d)
        outer, inner = [], []
        for k, (loop, f) in enumerate(zip(loops, factors)):
            made = b.must(Split(loop.var, f)) if 1 < f < loop.extent else None
            if made:
                outer.append(made.one("outer"))
                inner.append((k, made.one("inner")))
            elif f >= loop.extent and f > 1:
                inner.append((k, loop.var))
            else:
                outer.append(loop.var)
        ones = [n for n in outer if b.extents()[n] == 1]  # kept in front, never fused
        outer = [n for n in outer if n not in ones]
        outer = [outer[i] for i in _permutation(len(outer), d.order)]
        inner.sort(key=lambda t: (t[0] == vector, t[0]))
        tile = [name for _, name in inner]
        if len(ones + outer + tile) > 1:
            # refused where a non-dividing tile's guard widens an output index that mixes two
            # loops (a layout conversion's c * 16 + b) past what the dependence test proves
            b.may(Reorder(tuple(ones + outer + tile)))
        vector_name = next((name for k, name in inner if k == vector), None)
        copies: dict[str, list[str]] = {}   # a tile loop -> its copies in the nests distribute made
        compute_tile = tile
        if info.main.reduce and (outer or ones) and tile and info.main.output is not None:
            # a tile of every loop but those of extent 1 (a global pool's one vector of channels)
            # accumulates at the last of those: left in place, its lanes would hold the reduction
            compute_tile = self._accumulate(info, d, b, lanes, outer or ones[-1:], tile, copies)
        inlined = set()  # stages computed inside the main nest: no nest of their own left
        if d.stage_at is not None and outer:
            # each padded input computed where it is read, one tile's region at a time (before
            # fuse: its indices must stay affine)
            for stage in info.stages:
                if b.must(ComputeAt(stage, outer[d.stage_at])):
                    inlined.add(stage)
        packs = []
        for buffer, dim in lanes.packs if lanes else ():  # what packed_inputs names
            rank = len(info.input_shape(buffer))
            packs.append(Pack(buffer, dim, d.lanes[1], tuple(x for x in range(rank + 1) if x != dim + 1) + (dim + 1,)))
        if d.panel and vector_name is not None:
            # a matmul's weights B[k, n] read a row per reduction step, with the vector tile's
            # columns: blocked into panels [n / tile][k][tile], each tile's stream contiguous
            for buffer in info.panels:
                rank = len(info.input_shape(buffer))
                packs.append(Pack(buffer, rank - 1, factors[vector], (rank - 1, *range(rank - 1), rank)))
        for pack in packs:
            made = b.must(pack)
            if made and made.get("new"):
                # the copy runs on every core, a vector at a time: left serial, an activation's
                # copy ran on one thread while the others waited (a weight's runs at compile time)
                b.must(DefaultNest.for_machine(made.get("new")[0], info.machine))
        if d.cache_read and outer:
            buffer, at = d.cache_read
            made = b.may(CacheRead(buffer, outer[at]))  # refused where the region is too large
            if made and made.get("copy"):  # a scalar's copy has no loop
                _vectorize_copy(b, made.get("copy")[-1])
        # fused last: tiles and copies need the outer loops' plain (affine) indices
        if d.fuse == 2:
            made = b.must(Fuse(outer[0], outer[1]))
            if made:
                outer = [made.one("fused")] + outer[2:]
        if outer:
            b.must(Parallel(outer[0]))
        # the tile loops of the init, reduction and epilogue nests (after distribute)
        epilogues = [_copy(copies, n, c) for c in range(1, len(copies.get(tile[0], []))) for n in tile] if tile else []
        vector_names = {vector_name, *copies.get(vector_name, [])}
        for n in dict.fromkeys(tile + compute_tile + epilogues):
            if n in vector_names:
                if b.innermost(n):  # not where the tile holds its reduction (no register tile)
                    b.must(Vectorize(n))
            elif b.extents()[n] <= MAX_UNROLLED:
                b.must(Unroll(n))
        for nest in info.other_nests:
            if nest.output is None or nest.output.name not in inlined:
                b.must(DefaultNest.for_machine(nest.root, info.machine))
        if d.extra is not None:
            b.may(info.extra[d.extra])  # third-party legality: a refusal is theirs

    def _accumulate(self, info, d, b: Builder, lanes: Lanes | None, outer, tile, copies) -> list[str]:
        """The tile accumulated in registers (cache_write at the last outer loop), the reduction
        loops moved outside it; or, with `chunk`, the chunked sweep. Returns the reduction's
        tile loops."""
        out = info.main.output.name
        rank = len(info.main.output.shape)
        layout = ()
        if lanes:  # the lanes' dimension last, so each accumulator is one vector
            layout = tuple(x for x in range(rank) if x != lanes.out_dim) + (lanes.out_dim,)
        if d.chunk and len(outer) >= 2:
            accumulators, compute_tile = self._chunked(info, d, b, out, layout, outer, tile, copies)
        else:
            compute_tile = tile
            # the tile must be a dense box of the output (cache_write's test): where an output
            # dimension mixes loops the tile cuts (a Winograd tile's 2y + dy) it accumulates in place
            made = b.may(CacheWrite(out, outer[-1], layout))
            accumulators = [made] if made else []
            made = b.must(Distribute(tile[0])) if made else None
            if made:
                _record_copies(made, copies)
                compute_tile = [_copy(copies, n) for n in tile]
                if b.must(Reorder(tuple(info.main.reduce) + tuple(compute_tile))):
                    self._unroll_reduction(d, b, info.main.reduce[-1])
        for n, made in enumerate(accumulators):  # the register tile's copies unrolled, not a chunk's plane
            self._copy_loops(d, b, made, rank, lanes, layout, unroll=n == len(accumulators) - 1)
        return compute_tile

    def _chunked(self, info, d, b: Builder, out, layout, outer, tile, copies):
        """The reduction in chunks (MLAS's pointwise convolutions): the outermost reduction loop
        split, its chunks outermost below outer loop `at`, so each chunk of the weights serves
        every tile below `at` from L1 instead of streaming whole from L2 per tile. The partial
        sums of the tiles below `at` live in an outer accumulator (cache_write at `at`), each
        tile's in registers (cache_write at the last outer loop). Returns the accumulators'
        cache_writes and the reduction's tile loops."""
        factor, at = d.chunk
        first, rest = info.main.reduce[0], tuple(info.main.reduce[1:])
        split = b.must(Split(first, factor))
        plane = b.may(CacheWrite(out, outer[at], layout)) if split else None  # a dense box: see _accumulate
        made = b.must(Distribute(outer[at + 1])) if plane else None
        if not made:
            return [plane] if plane else [], tile
        _record_copies(made, copies)
        below = [_copy(copies, n) for n in outer[at + 1:]]
        compute_tile = [_copy(copies, n) for n in tile]
        register = None
        if b.must(Reorder((split.one("outer"), *below, split.one("inner"), *rest, *compute_tile))):
            register = b.may(CacheWrite(plane.buffers[0], below[-1]))
            if register:
                self._unroll_reduction(d, b, split.one("inner") if not rest else rest[-1])
        outer[at + 1:] = below
        return [m for m in (plane, register) if m], compute_tile

    @staticmethod
    def _unroll_reduction(d: TileDecisions, b: Builder, loop: str) -> None:
        """Unroll reduction loop `loop` by d.unroll where that does not exceed it (a seed's 4
        on a 3x3 convolution's 3)."""
        if 1 < d.unroll <= b.extents()[loop]:
            made = b.must(Split(loop, d.unroll))
            if made:
                b.must(Unroll(made.one("inner")))

    @staticmethod
    def _copy_loops(d, b: Builder, made, rank: int, lanes, layout, unroll: bool) -> None:
        """Vectorize (and unroll) the loops that copy an accumulator in and back."""
        for role in ("write", "read"):
            names = list(made.get(role))
            if not names:  # an initialized tile has no copy-in
                continue
            if role == "write" and lanes and d.transpose_store:
                # the lanes' dimension is not the output's contiguous one: store along the
                # output's last dimension (one vector store, a strided read of the accumulator)
                # instead of scattering each lane to its own channel
                at = layout.index(rank - 1)
                band = names[:at] + [names[-1]] + names[at:-1]
                if b.must(Reorder(tuple(band))):
                    names = band[:at + 1] + band[at + 2:] + [band[at + 1]]
            _vectorize_copy(b, names[-1])
            for n in names[:-1] if unroll else ():
                if b.extents()[n] <= MAX_UNROLLED:
                    b.must(Unroll(n))


def packed_inputs(info: KernelInfo, lanes: tuple[int, int] | None, panel: bool) -> list[str]:
    """The inputs realize packs (read through their packed copy from then on)."""
    if lanes:
        return [buffer for buffer, _ in info.lanes[lanes[0]].packs]
    return list(info.panels) if panel else []


def _vectorize_copy(b: Builder, loop: str) -> None:
    """A copy's innermost loop vectorized where it is one vector long at most (a plane's copy
    along a whole row of 512 stays a loop)."""
    if b.extents()[loop] <= MAX_VECTOR:
        b.must(Vectorize(loop))


def _positive(factor) -> bool:
    return isinstance(factor, int) and factor >= 1


def _even(factor, extent: int) -> bool:
    return _positive(factor) and (factor >= extent or extent % factor == 0)


def _copy(copies: dict[str, list[str]], loop: str, nest: int = 0) -> str:
    """Loop `loop` in the `nest`-th nest distribute made (0: the reduction of `init; reduce;
    epilogue`); itself where distribute did not copy it (a guard ended the distributed chain
    above it, so the nests share it)."""
    names = copies.get(loop, [])
    return names[nest] if nest < len(names) else loop


def _record_copies(made, copies: dict[str, list[str]]) -> None:
    for loop, names in made.loops.items():
        copies.setdefault(loop, []).extend(names)


def _permutations(n: int) -> int:
    """The orders of n outer loops the rule tries: all of them up to 4 loops, else one."""
    return len(list(itertools.permutations(range(n)))) if n <= 4 else 1


def _permutation(n: int, index: int) -> tuple[int, ...]:
    return list(itertools.permutations(range(n)))[index] if n <= 4 else tuple(range(n))
