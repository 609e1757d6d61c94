"""Row reductions (softmax, layer normalization, a mean over the contiguous axis): every reduction
that reads its inputs along their contiguous axis only is split by rfactor into vector lanes of
partial results, folded in halves (tree_combine), its nest made parallel over all rows (the
loops above the row fused: heads x tokens); the other nests get the default schedule. With
`merge`, the nests run as one loop over rows (one parallel region; a row stays in cache across
them) wherever merge allows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...passes import DefaultNest, Fuse, Merge, Parallel, Rfactor, TreeCombine, Vectorize
from ..decisions import Choice
from ..nest import RFACTOR_FACTORS, KernelInfo
from .base import Builder, SketchRule


@dataclass(frozen=True)
class RowDecisions:
    rfactor: int        # vector lanes of partial results
    merge: bool         # the nests as one loop over rows


class RowReductions(SketchRule):
    name = "rows"
    decisions = RowDecisions

    def applies(self, info: KernelInfo) -> bool:
        return bool(info.rows)

    def domain(self, info: KernelInfo, field: str, earlier: dict[str, Any]) -> Choice:
        if field == "rfactor":
            return Choice(RFACTOR_FACTORS, ordered=True)
        if field == "merge":
            return Choice((False, True))
        raise KeyError(field)

    def seeds(self, info: KernelInfo) -> list[RowDecisions]:
        return [RowDecisions(16, False), RowDecisions(32, False)]

    def realize(self, info: KernelInfo, d: RowDecisions, b: Builder) -> None:
        roots = _fuse_row_bands(info, b)
        split_roots = set()
        for root, loop in info.rows:
            made = b.may(Rfactor(loop, d.rfactor, tail=_tail(info.extent(loop))))
            if made:
                b.must(Vectorize(made.one("lane")))
                b.must(Vectorize(made.one("zero")))
                halves = b.must(TreeCombine(made.one("combine")))
                for half in halves.get("halves") if halves else ():
                    if b.extents()[half] > 1:
                        b.must(Vectorize(half))
                split_roots.add(roots[root])
        # With merge, a nest of one loop over rows and no reduction (TVM's `mean[i] = sum[i] / n`)
        # waits: its default schedule would split the loop into vectors, and it could no longer
        # join the row loop before it (one parallel region less); unmerged, it gets it after all.
        waiting = {roots[n.root] for n in info.nests[1:] if d.merge and len(n.spatial) == 1 and not n.reduce
                   and roots[n.root] not in split_roots}
        for nest in info.nests:
            root = roots[nest.root]
            if root in split_roots:
                # the first loop with work to share (a matrix-vector product's rows are i1,
                # inside an i0 of extent 1)
                fused = root != nest.root
                b.must(Parallel(root if fused else next((l.var for l in nest.spatial if l.extent > 1), root)))
            elif root not in waiting:
                b.must(DefaultNest.for_machine(root, info.machine))
        if d.merge:
            order = [roots[n.root] for n in info.nests]
            into = order[0]
            for root in order[1:]:
                if b.may(Merge(into, root)):
                    continue
                if root in waiting:
                    b.must(DefaultNest.for_machine(root, info.machine))
                into = root  # a nest that cannot join starts the next group


def _fuse_row_bands(info: KernelInfo, b: Builder) -> dict[str, str]:
    """Fuse, in every nest, the loops over rows (those above the first row reduction: a softmax's
    heads and tokens) into one loop, so that each nest, or the merged nests, run one parallel
    loop over all rows rather than over the outermost dimension alone (6 heads for 16 cores; a
    batch of 1). A nest whose outer loops do not have those extents is left as it is. Returns
    each nest's root after it."""
    first = next(n for n in info.nests if n.root == info.rows[0][0])
    band = tuple(l.extent for l in first.spatial)
    roots = {}
    for nest in info.nests:
        loops = [l.var for l in nest.spatial]
        root = loops[0]
        if len(band) > 1 and tuple(l.extent for l in nest.spatial[:len(band)]) == band:
            for inner in loops[1:len(band)]:
                made = b.may(Fuse(root, inner))
                if not made:
                    break
                root = made.one("fused")
        roots[nest.root] = root
    return roots


def _tail(extent: int) -> bool:
    """Whether a row reduction is split with its last chunk guarded: only where no width
    divides it (a ViT's 197 tokens; codegen peels the guarded chunk off as a shorter vector).
    A row some width divides is split at those widths alone."""
    return not any(extent % f == 0 for f in RFACTOR_FACTORS)
