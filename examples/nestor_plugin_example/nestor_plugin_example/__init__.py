"""An example Nestor pass plugin: loop reversal.

Registered through the entry point group `nestor.passes` in this package's pyproject.toml; once
installed, `reverse(i0)` works in pipelines and schedule files and the tuner may choose it.
"""
from __future__ import annotations

from dataclasses import dataclass

from nestor.ir import For, Kernel, Var, substitute
from nestor.passes import Pass
from nestor.passes.analysis import independence_problem
from nestor.passes.base import find_loop, loop_ref, loop_sites, replace_loop


@dataclass(frozen=True)
class Reverse(Pass):
    """Run a loop's iterations in the opposite order (`i` becomes `extent - 1 - i` in its body).

    Legal when the iterations are independent: no element of a written buffer is touched by two
    of them (the check parallel and vectorize use). So a reduction loop is not reversed, although
    reassociating its sum would usually be harmless: this pass stays exact.
    """
    name = "reverse"
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        loop = site.loop
        if loop.kind != "serial":
            raise self.fail(loop.var, f"is already {loop.kind}; reverse loops before annotating them")
        problem = independence_problem(loop, site.outer)
        if problem:
            raise self.fail(loop.var, f"its iterations are not independent: {problem}")
        body = substitute(loop.body, {loop.var: (loop.extent - 1) - Var(loop.var)})
        return replace_loop(kernel, site, For(loop.var, loop.extent, body, loop.kind, loop.axis))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        """Every loop of more than one iteration whose reversal is legal."""
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(s, sites)) for s in sites if s.loop.extent > 1])
