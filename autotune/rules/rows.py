"""Row reductions (softmax, layer normalization, a mean over the contiguous axis): every reduction
that reads its inputs along their contiguous axis only is split by rfactor into vector lanes of
partial results, its nest made parallel; the other nests get the default schedule. With `merge`,
the nests run as one loop over rows (one parallel region; a row stays in cache across them)
wherever merge allows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...passes import DefaultNest, Merge, Parallel, Rfactor, Vectorize
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
        split_roots = set()
        for root, loop in info.rows:
            made = b.may(Rfactor(loop, d.rfactor, tail=_tail(info.extent(loop))))
            if made:
                b.must(Vectorize(made.one("lane")))
                b.must(Vectorize(made.one("zero")))
                split_roots.add(root)
        # With merge, a nest of one loop over rows and no reduction (TVM's `mean[i] = sum[i] / n`)
        # waits: its default schedule would split the loop into vectors, and it could no longer
        # join the row loop before it (one parallel region less); unmerged, it gets it after all.
        waiting = {n.root for n in info.nests[1:] if d.merge and len(n.spatial) == 1 and not n.reduce
                   and n.root not in split_roots}
        for nest in info.nests:
            if nest.root in split_roots:
                # the first loop with work to share (a matrix-vector product's rows are i1,
                # inside an i0 of extent 1)
                b.must(Parallel(next((l.var for l in nest.spatial if l.extent > 1), nest.root)))
            elif nest.root not in waiting:
                b.must(DefaultNest.for_machine(nest.root, info.machine))
        if d.merge:
            roots = [n.root for n in info.nests]
            into = roots[0]
            for root in roots[1:]:
                if b.may(Merge(into, root)):
                    continue
                if root in waiting:
                    b.must(DefaultNest.for_machine(root, info.machine))
                into = root  # a nest that cannot join starts the next group


def _tail(extent: int) -> bool:
    """Whether a row reduction is split with its last chunk guarded: only where no width
    divides it (a ViT's 197 tokens; codegen peels the guarded chunk off as a shorter vector).
    A row some width divides is split at those widths alone."""
    return not any(extent % f == 0 for f in RFACTOR_FACTORS)
