"""Rules of thumb for the tiling rule's first candidates, measured before any random sample (as
Ansor's initial population starts from rule-built sketches): a model's task gets 50-100 trials
in a 30-minute tune, too few to find by chance the tile that fills the registers. Sizes are in
the target's vector registers (L lanes; A accumulators: MachineParams.accumulators).

Each is a small class: whether it applies to a kernel, and its seeds (TileDecisions). The tiling
rule offers those of every applicable one, in list order (rules/__init__.py).
"""
from __future__ import annotations

from dataclasses import replace

from ...passes.analysis import variables
from ..nest import KernelInfo
from .tiling import TileDecisions, max_tile, tile_size


class TileSeeds:
    def applies(self, info: KernelInfo) -> bool:
        raise NotImplementedError

    def seeds(self, info: KernelInfo, base: TileDecisions) -> list[TileDecisions]:
        raise NotImplementedError


def _divisor(info: KernelInfo, k: int, choices) -> int:
    """The largest of `choices` that divides loop k of the main nest; 1 if none does."""
    return max((c for c in choices if info.main.spatial[k].extent % c == 0), default=1)


def _least_waste(extent: int, choices) -> int:
    """The tile of `choices` whose last, partial tile leaves fewest iterations idle (the larger
    on a tie): for a loop none of them divides."""
    return min(choices, key=lambda c: (-extent % c, -c))


def _stage_at(info: KernelInfo) -> int | None:
    """Padded inputs computed per outer block where there are any."""
    return 0 if info.stages else None


def _lanes_fill_registers(info: KernelInfo) -> bool:
    """Some loop other than the contiguous one can hold one or two registers' lanes."""
    lanes = info.machine.lanes()
    return any({lanes, 2 * lanes} & set(l.factors) for l in info.lanes)


def _tiled_along_the_output(info: KernelInfo) -> bool:
    """A reduction whose vector runs along the output's contiguous loop, neither a row
    reduction (rfactor's) nor a blocked convolution (its own tiles)."""
    return (bool(info.main.reduce) and info.vector is not None and not info.rows
            and not BlockedConvTiles().applies(info))


class LaneTiles(TileSeeds):
    """Convolutions whose output channels can hold the lanes (nest.Lanes): 2L lanes × a row tile
    of 4-8 pixels (2 vectors a pixel, at most A), stored back plain or transposed; or L lanes ×
    2 rows of such a tile; the padded input computed per output-channel block."""

    def applies(self, info: KernelInfo) -> bool:
        return info.vector is not None and _lanes_fill_registers(info)

    def seeds(self, info: KernelInfo, base: TileDecisions) -> list[TileDecisions]:
        lanes_per, acc = info.machine.lanes(), info.machine.accumulators
        v, row = info.vector, info.row
        out = []
        for n, lanes in enumerate(info.lanes):
            for f in (2 * lanes_per, lanes_per):
                if f not in lanes.factors:
                    continue
                factors = list(base.factors)
                if f == lanes_per and row is not None and row != lanes.loop:
                    factors[row] = _divisor(info, row, (2,))
                rows = factors[row] if row is not None else 1
                fit = tuple(c for c in (4, 6, 7, 8) if c * rows * (f // lanes_per) <= acc)
                factors[v] = _divisor(info, v, fit)
                if factors[v] == 1:  # no such divisor (26): the tile that wastes least
                    factors[v] = _least_waste(info.main.spatial[v].extent, [c for c in fit if c >= 6])
                rule = replace(base, factors=tuple(factors), lanes=(n, f), stage_at=_stage_at(info))
                out += [rule, replace(rule, transpose_store=True)] if f > lanes_per else [rule]
        return out


class BlockedConvTiles(TileSeeds):
    """Blocked convolutions (NCHW16c: the vector is a channel block). Where a block is one
    register (AVX-512): a row tile of the whole row (up to A pixels) or its largest divisor of
    4-8, × 1 or 2 channel blocks. Where it is more (AVX2: two), 8-12 accumulators as rows ×
    pixels × blocks of 1 × p × 1, 1 × p × 2 or 2 × p × 1; 4 blocks of one pixel where the row has
    no such divisor (7); all the accumulators in one row tile, its last tile peeled where it does
    not divide the row; and the widest row tile that 2 registers short of all hold (it spills,
    but its weight loads serve more pixels: better where the weights stream from L2). Tiles of
    at most 8 accumulators whose weights outgrow L1 get a chunked copy too. The padded input
    computed per outer block or before."""

    def applies(self, info: KernelInfo) -> bool:
        return bool(info.main.reduce) and info.block_lanes and info.row is not None

    def seeds(self, info: KernelInfo, base: TileDecisions) -> list[TileDecisions]:
        loops, v, row = info.main.spatial, info.vector, info.row
        width = loops[row].extent
        height = loops[row - 1].extent if row > 0 else 1
        channel = next((k for k, l in enumerate(loops[:row]) if l.var in variables((info.main.index[1],))), None)
        blocks_total = loops[channel].extent if channel is not None else 1
        per_pixel = -(-loops[v].extent // info.machine.lanes())  # registers of one pixel's block
        out = []
        for rows, pixels, blocks in self._tiles(info, width, per_pixel):
            if height % rows or blocks_total % blocks or (blocks > 1 and channel is None) \
                    or (rows > 1 and row == 0):
                continue
            factors = list(base.factors)
            factors[v], factors[row] = loops[v].extent, pixels
            if rows > 1:
                factors[row - 1] = rows
            if channel is not None:
                factors[channel] = blocks
            chunk = _l1_chunk(info, blocks * loops[v].extent) if rows * pixels * blocks * per_pixel <= 8 else None
            for stage_at in ((0, None) if info.stages else (None,)):
                out.append(replace(base, factors=tuple(factors), unroll=4, stage_at=stage_at))
                if chunk:
                    out.append(replace(out[-1], chunk=(chunk, 0)))
        return out

    @staticmethod
    def _tiles(info: KernelInfo, width: int, per_pixel: int) -> list[tuple[int, int, int]]:
        """(rows, pixels, blocks) of the register tiles worth a try."""
        acc, registers = info.machine.accumulators, info.machine.vector_registers
        tiles = []
        if per_pixel == 1:
            for blocks, limit in ((1, acc), (2, acc // 2)):
                pixels = width if width <= limit else max(
                    (c for c in (4, 5, 6, 7, 8) if width % c == 0), default=None)
                if pixels is None and blocks == 1 and width <= registers - 2:
                    pixels = width  # a row no 4-8 divides (13) whole: all in registers still
                if pixels is not None:
                    tiles.append((1, pixels, blocks))
            return tiles
        for rows, blocks in ((1, 1), (1, 2), (2, 1)):
            most = acc // (rows * blocks * per_pixel)
            pixels = max((c for c in range(1, most + 1) if width % c == 0), default=1)
            if rows * pixels * blocks * per_pixel >= acc * 2 // 3:
                tiles.append((rows, pixels, blocks))
        if not tiles:
            tiles.append((1, 1, max(b for b in (1, 2, 4) if b * per_pixel <= acc)))
        full = acc // per_pixel
        if width > full and (1, full, 1) not in tiles:
            tiles.append((1, full, 1))
        wide = max(c for c in range(1, (registers - 2) // per_pixel + 1) if width % c == 0)
        if (1, wide, 1) not in tiles:
            tiles.append((1, wide, 1))
        return tiles


def _l1_chunk(info: KernelInfo, channels: int) -> int | None:
    """The chunk of the outermost reduction loop whose weights for `channels` output channels
    fill about half of L1, where all of them (over L1) do not: the chunk a tile of at most 8
    accumulators sweeps over the plane (wider tiles, which spill, and 3x3 convs, whose chunk of
    one input block is 9 KB a channel block, gained nothing)."""
    per_step = channels * 4
    for r in info.main.reduce[1:]:
        per_step *= info.extent(r)
    l1 = info.machine.l1_bytes
    if info.extent(info.main.reduce[0]) * per_step <= l1:
        return None
    fits = [f for f in info.chunk_factors if f * per_step <= l1 // 2]
    return max(fits) if fits else None


class MatmulTiles(TileSeeds):
    """Other reductions along the output's contiguous loop (matmuls): a vector of up to 2L lanes
    × the 4-8 rows that fit the accumulators, with its weights in panels if it reads them a row
    per reduction step. Where none of 8-2L divides a vector loop longer than 2L (251, 197),
    2L and L lanes, each a seed, the last tile a shorter vector (codegen peels a split's tail
    off the vector loop); where no 4-8 divides the rows (127), the row tile that wastes least,
    its tail peeled too."""

    def applies(self, info: KernelInfo) -> bool:
        return _tiled_along_the_output(info) and self._widths(info)[0] > 1

    @staticmethod
    def _widths(info: KernelInfo) -> tuple[int, ...]:
        lanes, extent = info.machine.lanes(), info.main.spatial[info.vector].extent
        width = _divisor(info, info.vector, tuple(c for c in (8, 16, 32) if c <= 2 * lanes))
        if width > 1 or extent <= 2 * lanes:  # a row that short: ChannelTiles' (a conv's)
            return (width,)
        return tuple(c for c in (2 * lanes, lanes) if c <= extent)

    def seeds(self, info: KernelInfo, base: TileDecisions) -> list[TileDecisions]:
        lanes_per, v, row = info.machine.lanes(), info.vector, info.row
        out = []
        for width in self._widths(info):
            factors = list(base.factors)
            factors[v] = width
            if row is not None:
                vectors = -(-width // lanes_per)
                fit = tuple(c for c in (4, 6, 8) if c * vectors <= info.machine.accumulators)
                factors[row] = _divisor(info, row, fit)
                if factors[row] == 1 and fit and info.main.spatial[row].extent > max(fit):
                    factors[row] = _least_waste(info.main.spatial[row].extent, fit)
            out.append(replace(base, factors=tuple(factors), stage_at=_stage_at(info), panel=bool(info.panels)))
        return out


class ChannelTiles(TileSeeds):
    """Convolutions whose output channels hold no L or 2L lanes (SqueezeNet's 1000 classes,
    ShuffleNet's 34-136 channels a group) and whose rows are short (7-28): the vector spans a
    row (or half of a 28-pixel one) and the tile takes 2-8 output channels × the rows that fit.
    Tiles divide their loops (a guard on the vector lanes would scalarize them)."""

    def applies(self, info: KernelInfo) -> bool:
        return _tiled_along_the_output(info) and not _lanes_fill_registers(info) and len(info.main.index) >= 3

    def seeds(self, info: KernelInfo, base: TileDecisions) -> list[TileDecisions]:
        loops, v, row = info.main.spatial, info.vector, info.row
        width, lanes = loops[v].extent, info.machine.lanes()
        # one register's lanes where a divisor allows: a vector of two registers, one partial,
        # ran 6x slower than one of half the lanes
        vec = width if width <= lanes else max((d for d in range(lanes // 2 + 1, lanes + 1) if width % d == 0),
                                               default=None)
        if vec is None:
            vec = width if width <= 16 else max((d for d in range(7, 17) if width % d == 0), default=None)
        index = info.main.index
        channel = max((k for k, l in enumerate(loops) if l.var in variables((index[1],))),
                      default=None) if len(index) >= 3 else None
        if vec is None or width > 32 or channel is None or channel in (v, row):
            return []
        channels = loops[channel].extent
        height = loops[row].extent if row is not None else 1
        budget = max_tile(info)
        c = 4 if channels % 4 == 0 else 2
        tiles = [(c, height if height <= 8 else 8 // c)]  # 8 rows of a vector at most
        if channels % 8 == 0:
            tiles.append((8, 1))
        out = []
        for c, rows in tiles:
            while tile_size((c, rows, vec), 2) > budget and c > 1 and channels % (c // 2) == 0:
                c //= 2  # fewer channels, all the rows
            if channels % c or height % rows or tile_size((c, rows, vec), 2) > budget:
                continue
            factors = list(base.factors)
            factors[v], factors[channel] = vec, c
            if row is not None:
                factors[row] = rows
            out.append(replace(base, factors=tuple(factors), stage_at=_stage_at(info)))
        return out
