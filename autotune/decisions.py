"""Typed decisions: a sketch rule's choices are a frozen dataclass, and its domains say which
values each field may take on one kernel. Sampling, mutation, crossover and adoption are written
once, here, for every rule's decisions (as MetaSchedule's traces record typed random decisions).

A field's domain may depend on the fields before it (the tile factor of the loop holding the
vector lanes depends on which loop that is): `domain(name, earlier)` is asked field by field, in
the dataclass's order, and a value that an earlier change made illegal is brought back into its
domain (`Choice.nearest`).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Choice:
    """The legal values of one decision. `optional`: the first value means "leave the step out"
    and sampling takes another value with probability `p` only. `ordered`: numeric values, and
    adoption takes the largest legal one not above the value given (a tile factor clipped to
    what a smaller loop offers)."""
    values: tuple
    p: float | None = None          # None: uniform over the values
    ordered: bool = False
    weight: int = 1                 # how often mutation picks this field
    legal: Callable[[Any], bool] | None = None  # values realize accepts beyond those sampled (a seed's tile of 14)

    @property
    def default(self):
        return self.values[0]

    def sample(self, rng: random.Random):
        if self.p is None:
            return rng.choice(self.values)
        rest = self.values[1:]
        return rng.choice(rest) if rest and rng.random() < self.p else self.default

    def mutate(self, value, rng: random.Random):
        """Another legal value: an optional step toggled (left out, or one of its settings), any
        other value of a plain choice."""
        if self.p is not None:
            rest = [v for v in self.values[1:] if v != value]
            if value == self.default or (rest and rng.random() < 0.5):
                return rng.choice(rest) if rest else self.default
            return self.default
        others = [v for v in self.values if v != value]
        return rng.choice(others) if others else value

    def nearest(self, value, strict: bool = True):
        """`value` if it is one of the values (or, not `strict`, legal), else the closest one."""
        if value in self.values or (not strict and self.legal is not None and self.legal(value)):
            return value
        if self.ordered and isinstance(value, (int, float)):
            return max((v for v in self.values if v <= value), default=self.default)
        return self.default


@dataclass(frozen=True)
class PerLoop:
    """One choice per loop of a nest (tile factors): a tuple of values, mutated one loop at a time."""
    choices: tuple[Choice, ...]
    weight: int = 1

    def sample(self, rng: random.Random) -> tuple:
        return tuple(c.sample(rng) for c in self.choices)

    def mutate(self, value: tuple, rng: random.Random) -> tuple:
        k = rng.randrange(len(self.choices))
        return value[:k] + (self.choices[k].mutate(value[k], rng),) + value[k + 1:]

    def nearest(self, value, strict: bool = True) -> tuple | None:
        if not isinstance(value, tuple) or len(value) != len(self.choices):
            return None  # a nest of another depth: nothing carries over
        return tuple(c.nearest(v, strict) for c, v in zip(self.choices, value))

    def cross(self, a: tuple, b: tuple, rng: random.Random) -> tuple:
        return tuple(rng.choice(pair) for pair in zip(a, b))


Domain = Choice | PerLoop
DomainFn = Callable[[str, dict], Domain]   # (field name, the fields before it) -> its domain


def field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


def sample(kind: type, domain: DomainFn, rng: random.Random):
    values: dict[str, Any] = {}
    for name in field_names(kind):
        values[name] = domain(name, values).sample(rng)
    return kind(**values)


def mutate(decisions, domain: DomainFn, rng: random.Random):
    """One field changed (picked by the domains' weights), later fields kept where still legal."""
    domains: dict[str, Domain] = {}
    values: dict[str, Any] = {}
    for name in field_names(type(decisions)):
        domains[name] = domain(name, values)
        values[name] = getattr(decisions, name)
    movable = [n for n, d in domains.items() if isinstance(d, PerLoop) or len(d.values) > 1]
    if not movable:
        return decisions
    field = rng.choices(movable, weights=[domains[n].weight for n in movable])[0]
    changed = domains[field].mutate(getattr(decisions, field), rng)
    return _rebuilt(type(decisions), domain, lambda name, _: changed if name == field else getattr(decisions, name),
                    strict=False)


def crossover(a, b, domain: DomainFn, rng: random.Random):
    """Each field from either parent (per loop for per-loop fields), then made legal."""
    def pick(name: str, d: Domain):
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(d, PerLoop) and len(x) == len(y):
            return d.cross(x, y, rng)
        return x if rng.random() < 0.5 else y
    return _rebuilt(type(a), domain, pick, strict=False)


def adopt(decisions, domain: DomainFn, strict: bool = True):
    """Decisions made for a similar kernel, each value brought into this kernel's domain; None
    when a per-loop field has another length (nests of another depth). Not `strict`: values
    that are legal but never sampled (a seed's) are kept (what a change elsewhere left legal)."""
    return _rebuilt(type(decisions), domain, lambda name, _: getattr(decisions, name), strict)


def _rebuilt(kind: type, domain: DomainFn, value_of: Callable[[str, Domain], Any], strict: bool):
    values: dict[str, Any] = {}
    for name in field_names(kind):
        d = domain(name, values)
        value = d.nearest(value_of(name, d), strict)
        if value is None and isinstance(d, PerLoop):
            return None
        values[name] = value
    return kind(**values)
