"""The search space of a kernel: the sketch rules of its target that apply to it × their decisions.

A candidate is a rule's name and its typed decisions (autotune/decisions.py). The rules of a
target are a list of small classes (autotune/rules): each says whether it applies to a kernel,
the domains of its decisions, its seed candidates and how it realizes them. Sampling picks an
applicable rule and samples its decisions; mutation, crossover and adoption work field by field,
whatever the rule. A candidate's schedule is what the passes accepted, so every schedule in the
records replays exactly; a step a rule needed and the passes refused raises in strict mode (the
tests) and is counted in `refused` otherwise.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..codegen.target import machine_params
from ..ir import Kernel
from ..ir.errors import NestorError
from ..ir.machine import MachineParams
from ..passes import Schedule, default_schedule
from . import decisions
from .nest import KernelInfo
from .rules import Builder, SketchRule, rules_for


@dataclass(frozen=True)
class Candidate:
    """One point of a kernel's search space: a sketch rule and its decisions."""
    rule: str
    decisions: Any


class Sketch:
    """The search space of one kernel (canonical loop names) on one machine."""

    def __init__(self, info: KernelInfo, rules: tuple[SketchRule, ...], strict: bool = False):
        self.info = info
        self.rules = {r.name: r for r in rules if r.applies(info)}
        if not self.rules:
            raise NestorError(f"no sketch rule for a {info.machine.kind} target applies to kernel {info.kernel.name}")
        self.strict = strict
        self.refused: Counter[str] = Counter()   # "rule: pass" -> required steps refused

    @classmethod
    def of(cls, kernel: Kernel, machine: MachineParams | None = None, strict: bool = False,
           rules: tuple[SketchRule, ...] | None = None) -> Sketch:
        """The sketch of `kernel` for `machine` (default: this host) and its target's rules."""
        machine = machine or machine_params()
        return cls(KernelInfo.of(kernel, machine), rules_for(machine) if rules is None else rules, strict)

    @property
    def kernel(self) -> Kernel:
        return self.info.kernel

    @property
    def machine(self) -> MachineParams:
        return self.info.machine

    # decisions

    def sample(self, rng: random.Random) -> Candidate:
        rule = rng.choice(list(self.rules.values()))
        return self._finished(rule, decisions.sample(rule.decisions, self._domain(rule), rng))

    def mutate(self, c: Candidate, rng: random.Random) -> Candidate:
        rule = self.rules[c.rule]
        return self._finished(rule, decisions.mutate(c.decisions, self._domain(rule), rng))

    def crossover(self, a: Candidate, b: Candidate, rng: random.Random) -> Candidate:
        """Field by field from either parent; parents of two rules share nothing: one mutated."""
        if a.rule != b.rule:
            return self.mutate(rng.choice((a, b)), rng)
        rule = self.rules[a.rule]
        return self._finished(rule, decisions.crossover(a.decisions, b.decisions, self._domain(rule), rng))

    def adopt(self, c: Candidate) -> Candidate | None:
        """A similar kernel's candidate (another conv of the same shape of nest) made legal here;
        None where its rule does not apply or its nest has another depth."""
        rule = self.rules.get(c.rule)
        if rule is None or not isinstance(c.decisions, rule.decisions):
            return None
        d = decisions.adopt(c.decisions, self._domain(rule))
        return None if d is None else self._finished(rule, d)

    def rule_decisions(self) -> list[Candidate]:
        """Every applicable rule's seeds, in the rules' order."""
        return [self._finished(rule, d) for rule in self.rules.values() for d in rule.seeds(self.info)]

    def _domain(self, rule: SketchRule):
        return lambda field, earlier: rule.domain(self.info, field, earlier)

    def _finished(self, rule: SketchRule, d) -> Candidate:
        """Decisions constrained by the rule, then every field brought back into its domain."""
        d = decisions.adopt(rule.constrain(self.info, d), self._domain(rule), strict=False)
        return Candidate(rule.name, d)

    # schedule

    def realize(self, c: Candidate) -> tuple[Schedule, Kernel]:
        """The steps the candidate describes and the kernel they make."""
        rule = self.rules[c.rule]
        builder = Builder(self.info.kernel, rule.name, self.strict)
        rule.realize(self.info, c.decisions, builder)
        for step in builder.refused:
            self.refused[f"{rule.name}: {step}"] += 1
        return builder.schedule(), builder.kernel

    def schedule(self, c: Candidate) -> Schedule:
        return self.realize(c)[0]


def untuned_schedule(kernel: Kernel, machine: MachineParams) -> Kernel:
    """`kernel` scheduled without measuring anything. On a CPU, where each output reduces at
    least a vector's worth of elements (a matmul, a convolution, a softmax's rows), the first
    seed of its sketch (its first rule's rule of thumb: the candidate a tuning measures first),
    far faster than the basic schedule. Elsewhere the basic default schedule: on a GPU (the GPU
    rules' seeds run slower than its plain binding), and where an output reduces a handful of
    elements or none (LRN's 5 channels, a 3x3 pool, elementwise kernels), where a register tile
    gains little and its unrolled lanes can take many times as long to build."""
    info = KernelInfo.of(kernel, machine)
    spatial = math.prod(l.extent for l in info.main.spatial)
    if machine.is_gpu or info.main.work < spatial * machine.line_elements("float32"):
        return default_schedule(kernel, machine)
    rules = tuple(r for r in rules_for(machine) if r.applies(info))
    sketch = Sketch(info, rules) if rules else None
    seeds = sketch.rule_decisions() if sketch else []
    if not seeds:
        return default_schedule(kernel, machine)
    return sketch.realize(seeds[0])[1]
