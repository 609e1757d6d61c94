"""What every sketch rule shares: the SketchRule interface and the Builder that applies its steps.

A sketch rule (Ansor's sketch rules, MetaSchedule's schedule rules) is one structural way to
schedule a kernel on a target: it says whether it applies to a kernel, the typed domains of its
decisions (autotune/decisions.py), the seed candidates its rules of thumb expect to be good, and
how decisions become schedule steps. Rules live in per-target lists (rules/__init__.py).

Steps go through a Builder. A rule asks for a step with `must` when the step is part of the
structure it promised (a refusal is a bug: it raises in strict mode, which the tests use, and is
counted in the tuning statistics otherwise), and with `may` when a refusal is one of the step's
expected outcomes (a merge of two nests that do not line up). Passes hand back the loops they
made (`Made`), so rules never rebuild loop names.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from ...ir import For, Kernel, walk_stmts
from ...ir.errors import NestorError
from ...passes import Made, Pass, Schedule, ScheduleError
from ..decisions import Domain
from ..nest import KernelInfo


class StepRefused(NestorError):
    """A step a rule needs was refused (strict mode): the rule and the pass disagree."""


class Builder:
    """Applies steps as a rule chooses them, keeping those the passes accept."""

    def __init__(self, kernel: Kernel, rule: str = "", strict: bool = False):
        self.kernel, self.rule, self.strict = kernel, rule, strict
        self.steps: list[Pass] = []
        self.refused: list[str] = []    # the required steps refused (not in strict mode)
        self._extents: tuple[Kernel | None, dict[str, int]] = (None, {})

    def extents(self) -> dict[str, int]:
        """The current kernel's loops and their extents (computed once per kernel)."""
        if self._extents[0] is not self.kernel:
            self._extents = (self.kernel, {s.var: s.extent for s in walk_stmts(self.kernel.body)
                                           if isinstance(s, For)})
        return self._extents[1]

    def loop(self, name: str) -> For:
        """Loop `name` of the current kernel (its first, where sibling nests share the name)."""
        return next(s for s in walk_stmts(self.kernel.body) if isinstance(s, For) and s.var == name)

    def innermost(self, loop: str) -> bool:
        """Whether loop `loop` of the current kernel has no loop inside it."""
        return not any(isinstance(s, For) for s in walk_stmts(self.loop(loop).body))

    def must(self, step: Pass) -> Made | None:
        """A step the rule's structure needs. Refused: StepRefused in strict mode, else counted
        and left out (the schedule stays what the passes accepted, so it replays)."""
        try:
            return self._apply(step)
        except ScheduleError as err:
            if self.strict:
                raise StepRefused(f"sketch rule {self.rule}: a required step was refused: {err}") from None
            self.refused.append(step.name)
            return None

    def may(self, step: Pass, accept: Callable[[Kernel, Made], bool] | None = None) -> Made | None:
        """A step whose refusal is one of its expected outcomes; None then. `accept`: the rule's
        own test of the kernel the step makes (a budget), which may leave the step out too."""
        try:
            return self._apply(step, accept)
        except ScheduleError:
            return None

    def _apply(self, step: Pass, accept=None) -> Made | None:
        kernel, made = step.trace(self.kernel)
        if accept is not None and not accept(kernel, made):
            return None
        self.kernel = kernel
        self.steps.append(step)
        return made

    def schedule(self) -> Schedule:
        return Schedule(tuple(self.steps))


class SketchRule:
    """One structural way to schedule a kernel (module doc). Subclasses set `name` and
    `decisions` (a frozen dataclass type) and implement the four parts."""
    name: ClassVar[str] = ""
    decisions: ClassVar[type]

    def applies(self, info: KernelInfo) -> bool:
        raise NotImplementedError

    def domain(self, info: KernelInfo, field: str, earlier: dict[str, Any]) -> Domain:
        """The legal values of decision `field`, given the decisions before it."""
        raise NotImplementedError

    def seeds(self, info: KernelInfo) -> list:
        """Decisions measured before any random sample (rules of thumb for this target)."""
        return []

    def realize(self, info: KernelInfo, d, builder: Builder) -> None:
        """Apply the steps decisions `d` describe to `builder.kernel` (info.kernel at first)."""
        raise NotImplementedError

    def constrain(self, info: KernelInfo, d):
        """Decisions made to respect what domains cannot say alone (a register budget)."""
        return d
