"""An example Nestor plugin: a pass (loop reversal) and a sketch rule that uses it.

Registered through the entry point groups `nestor.passes` and `nestor.sketch_rules` in this
package's pyproject.toml; once installed, `reverse(i0)` works in pipelines and schedule files,
and the tuner samples the rule's candidates beside the built-in rules of a CPU target.
"""
from __future__ import annotations

from dataclasses import dataclass

from nestor.autotune.decisions import Choice
from nestor.autotune.rules import SketchRule
from nestor.ir import For, Kernel, Var, substitute
from nestor.passes import DefaultNest, Pass
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


@dataclass(frozen=True)
class ReverseDecisions:
    loop: int       # which spatial loop of the main nest to reverse (its position)


class ReversedNest(SketchRule):
    """An example sketch rule: one spatial loop of the kernel's main nest reversed, then the
    default schedule on every nest. A rule says whether it applies, the domain of each of its
    decisions, its seeds, and the steps that realize a candidate; `targets` names the target
    kinds whose rule lists it joins."""
    name = "reversed_nest"
    decisions = ReverseDecisions
    targets = ("cpu",)

    def applies(self, info) -> bool:
        return bool(info.main.spatial)

    def domain(self, info, field: str, earlier: dict) -> Choice:
        return Choice(tuple(range(len(info.main.spatial))))

    def seeds(self, info) -> list[ReverseDecisions]:
        return [ReverseDecisions(0)]

    def realize(self, info, d: ReverseDecisions, builder) -> None:
        builder.must(Reverse(info.main.spatial[d.loop].var))
        for nest in info.nests:
            builder.must(DefaultNest.for_machine(nest.root, info.machine))
