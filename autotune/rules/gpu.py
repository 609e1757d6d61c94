"""GPU sketch rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...passes import Bind, Fuse, Split
from ..decisions import Choice
from ..nest import KernelInfo
from .base import Builder, SketchRule

THREADS = (32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class BindDecisions:
    threads: int        # threads of a block (a multiple of the warp)


class BindSpatial(SketchRule):
    """Every top-level nest's spatial loops fused into one, split into blocks of `threads`
    threads and bound to blockIdx.x / threadIdx.x; whatever is inside (a reduction) runs in
    each thread. The simplest correct GPU schedule, and where GPU tiling starts."""
    name = "bind_spatial"
    decisions = BindDecisions

    def applies(self, info: KernelInfo) -> bool:
        return info.machine.is_gpu and all(n.spatial for n in info.nests)

    def domain(self, info: KernelInfo, field: str, earlier: dict[str, Any]) -> Choice:
        if field == "threads":
            most = info.machine.max_threads_per_block
            return Choice(tuple(t for t in THREADS if t <= most and t % info.machine.warp_size == 0), ordered=True)
        raise KeyError(field)

    def seeds(self, info: KernelInfo) -> list[BindDecisions]:
        return [BindDecisions(256), BindDecisions(128)]

    def realize(self, info: KernelInfo, d: BindDecisions, b: Builder) -> None:
        for nest in info.nests:
            fused = nest.spatial[0].var
            for loop in nest.spatial[1:]:
                made = b.must(Fuse(fused, loop.var))
                if not made:
                    return
                fused = made.one("fused")
            split = b.must(Split(fused, min(d.threads, b.extents()[fused])))
            if split:
                b.must(Bind(split.one("outer"), "blockIdx.x"))
                b.must(Bind(split.one("inner"), "threadIdx.x"))
