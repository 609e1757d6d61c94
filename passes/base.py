"""What every pass shares: the Pass base class, ScheduleError, and finding loops by name.

A pass is a frozen dataclass whose typed fields are its parameters (like xDSL's ModulePass):
`Split(loop="i0", factor=32)`. Its text form is the pipeline syntax, `split(i0, 32)`.

Loops are named by their variable. A name used by one loop only is the loop; a name that several
loops share (sibling nests may each have an `i0`) is ambiguous and must carry its occurrence in
pre-order, `i0#1` for the second. Loops made by passes get names derived from the loop they come
from (`i0_o`, `i0_i`), made unique by `fresh_name`, so the names are deterministic.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar

from ..ir import Allocate, Buffer, For, If, Kernel, Seq, Stmt, Store, replace_body, walk_stmts
from ..ir.errors import NestorError


class ScheduleError(NestorError):
    """An illegal or malformed schedule step; the message names the step, the loop and why."""

    def __init__(self, step, loop: str | None, reason: str):
        self.step, self.loop, self.reason = str(step), loop, reason
        where = f" loop {loop}:" if loop else ""
        super().__init__(f"{self.step}:{where} {reason}")


@dataclass(frozen=True)
class Site:
    """One loop of a kernel: its index in pre-order among all loops and the loops around it."""
    index: int
    loop: For
    outer: tuple[For, ...]


_SITES: dict[int, tuple[Stmt, tuple[Site, ...]]] = {}  # id(stmt) -> (stmt, its sites)
_SITES_KEPT = 16


def loop_sites(stmt: Stmt) -> tuple[Site, ...]:
    """Every loop of `stmt` in pre-order. The IR is immutable, so the sites of the last few
    statements asked about are kept (each schedule step looks its loops up several times; the
    tuner applies tens of thousands of steps a minute). The statement is kept with them, so
    its id cannot be reused while the entry lives."""
    hit = _SITES.get(id(stmt))
    if hit is not None and hit[0] is stmt:
        return hit[1]
    sites = _loop_sites(stmt)
    if len(_SITES) >= _SITES_KEPT:
        del _SITES[next(iter(_SITES))]
    _SITES[id(stmt)] = (stmt, sites)
    return sites


def _loop_sites(stmt: Stmt) -> tuple[Site, ...]:
    sites: list[Site] = []

    def visit(s: Stmt, outer: tuple[For, ...]) -> None:
        if isinstance(s, For):
            sites.append(Site(len(sites), s, outer))
            visit(s.body, outer + (s,))
        elif isinstance(s, Seq):
            for x in s.stmts:
                visit(x, outer)
        elif isinstance(s, If):
            visit(s.then, outer)
            if s.otherwise is not None:
                visit(s.otherwise, outer)
        elif isinstance(s, Allocate):
            visit(s.body, outer)
    visit(stmt, ())
    return tuple(sites)


def loop_ref(site: Site, sites: tuple[Site, ...]) -> str:
    """The name that resolves to `site`: its variable, with `#k` when the variable is shared."""
    same = [s.index for s in sites if s.loop.var == site.loop.var]
    return site.loop.var if len(same) == 1 else f"{site.loop.var}#{same.index(site.index)}"


def find_loop(kernel: Kernel, ref: str, step) -> Site:
    sites = loop_sites(kernel.body)
    name, _, occurrence = ref.partition("#")
    same = [s for s in sites if s.loop.var == name]
    if not same:
        names = ", ".join(dict.fromkeys(s.loop.var for s in sites)) or "none"
        raise ScheduleError(step, ref, f"no such loop (loops: {names})")
    if occurrence:
        if not occurrence.isdigit() or int(occurrence) >= len(same):
            raise ScheduleError(step, ref, f"there are {len(same)} loops named {name}, "
                                           f"numbered #0..#{len(same) - 1}")
        return same[int(occurrence)]
    if len(same) > 1:
        raise ScheduleError(step, ref, f"{len(same)} loops are named {name}; "
                                       f"say which with {name}#0..{name}#{len(same) - 1}")
    return same[0]


def replace_loop(kernel: Kernel, site: Site, new: Stmt) -> Kernel:
    """The kernel with the loop at `site` replaced by `new`."""
    counts: dict[int, int] = {}

    def count(s: Stmt | None) -> int:  # loops in s; each subtree counted once, not once a level
        if s is None or isinstance(s, Store):
            return 0
        if id(s) not in counts:
            if isinstance(s, (For, Allocate)):
                counts[id(s)] = isinstance(s, For) + count(s.body)
            else:
                counts[id(s)] = sum(count(x) for x in (s.stmts if isinstance(s, Seq) else (s.then, s.otherwise)))
        return counts[id(s)]

    def go(s: Stmt, start: int) -> Stmt:  # start: pre-order index of the first loop in s
        if isinstance(s, For):
            if start == site.index:
                return new
            return For(s.var, s.extent, go(s.body, start + 1), s.kind, s.axis)
        if isinstance(s, Allocate):
            return Allocate(s.buffer, go(s.body, start))
        parts = s.stmts if isinstance(s, Seq) else (s.then, s.otherwise)
        out = []
        for part in parts:
            n = count(part)
            out.append(go(part, start) if start <= site.index < start + n else part)
            start += n
        if isinstance(s, Seq):  # a loop replaced by a sequence (distribute) joins this one
            return Seq(tuple(x for part in out for x in (part.stmts if isinstance(part, Seq) else (part,))))
        return If(s.cond, out[0], out[1])
    return replace_body(kernel, go(kernel.body, 0))


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is first free; the result is added to `taken`."""
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def find_buffer(kernel: Kernel, name: str, step) -> Buffer:
    """A kernel parameter or allocated buffer by name."""
    found = {b.name: b for b in kernel.params}
    found.update({s.buffer.name: s.buffer for s in walk_stmts(kernel.body) if isinstance(s, Allocate)})
    if name not in found:
        raise ScheduleError(step, None, f"no buffer named {name} (buffers: {', '.join(found)})")
    return found[name]


def buffer_names(kernel: Kernel) -> set[str]:
    return {b.name for b in kernel.params} | {s.buffer.name for s in walk_stmts(kernel.body)
                                              if isinstance(s, Allocate)}


def loop_names(kernel: Kernel) -> set[str]:
    return {s.var for s in walk_stmts(kernel.body) if isinstance(s, For)}


def _allocated(kernel: Kernel) -> list[str]:
    return [s.buffer.name for s in walk_stmts(kernel.body) if isinstance(s, Allocate)]


@dataclass(frozen=True)
class Made:
    """What a step made: its new loops by role (each pass names its roles: a split's `outer` and
    `inner`, a cache_write's `read` and `write` copies ...) and its new buffers. Callers take
    loop names from here instead of rebuilding the names a pass happens to choose."""
    loops: dict[str, tuple[str, ...]]
    buffers: tuple[str, ...] = ()

    def get(self, role: str) -> tuple[str, ...]:
        return self.loops.get(role, ())

    def one(self, role: str) -> str:
        (name,) = self.loops[role]
        return name


@dataclass(frozen=True)
class Pass:
    """A kernel-to-kernel transformation; subclasses are frozen dataclasses of their parameters.

    `apply` checks legality first and raises ScheduleError on an illegal step; it never returns a
    kernel that computes something else (up to the floating-point reassociation of reductions
    that reorder documents).
    """
    name: ClassVar[str] = ""
    creates: ClassVar[bool] = True   # may make loops or buffers (trace looks for them)

    def apply(self, kernel: Kernel) -> Kernel:
        raise NotImplementedError

    def trace(self, kernel: Kernel) -> tuple[Kernel, Made]:
        """`apply`, and what the step made. New loops are those `kernel` lacks (fresh_name never
        reuses a name), in pre-order; `loop_roles` sorts them."""
        after = self.apply(kernel)
        if not self.creates:
            return after, Made({})
        taken = {s.loop.var for s in loop_sites(kernel.body)}
        new = tuple(dict.fromkeys(s.loop.var for s in loop_sites(after.body) if s.loop.var not in taken))
        old_buffers = set(_allocated(kernel))
        return after, Made(self.loop_roles(kernel, new), tuple(b for b in _allocated(after) if b not in old_buffers))

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """The step's new loops (pre-order) by role; by default all are `new`."""
        return {"new": new} if new else {}

    def check(self, kernel: Kernel) -> None:
        """Raise ScheduleError if the step is illegal on `kernel`. Passes are cheap on kernel-sized
        IR, so this is `apply` with the result dropped."""
        self.apply(kernel)

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        """The legal instances this pass offers on `kernel` (the tuner's choices)."""
        return []

    @classmethod
    def legal(cls, kernel: Kernel, candidates) -> list[Pass]:
        out = []
        for c in candidates:
            try:
                c.check(kernel)
            except ScheduleError:
                continue
            out.append(c)
        return out

    def fail(self, loop: str | None, reason: str) -> ScheduleError:
        return ScheduleError(self, loop, reason)

    # parameters

    @classmethod
    def parameters(cls) -> dict[str, object]:
        """Parameter name -> type, in order (for `nestor passes` and the pipeline parser)."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def given_params(self) -> dict:
        """The parameters without those at their defaults, so that a parameter added to a pass
        later (with a default) changes neither the text nor the JSON of existing schedules."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default}

    @classmethod
    def from_params(cls, params: dict) -> Pass:
        """An instance from loosely typed values (JSON lists, pipeline literals), type-checked."""
        types = cls.parameters()
        unknown = set(params) - set(types)
        if unknown:
            raise ScheduleError(cls.name, None, f"unknown parameter(s) {', '.join(sorted(unknown))}; "
                                               f"{cls.name} takes {', '.join(types) or 'none'}")
        defaults = {f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING}
        missing = [p for p in types if p not in params and p not in defaults]
        if missing:
            raise ScheduleError(cls.name, None, f"missing parameter(s) {', '.join(missing)}")
        values = {}
        for key, tp in types.items():
            if key not in params:
                continue  # its default
            try:
                values[key] = _coerce(params[key], tp)
            except TypeError as err:
                raise ScheduleError(cls.name, None, f"parameter {key}: {err}") from None
        return cls(**values)

    def __str__(self) -> str:
        values = list(self.params().values())
        given = self.given_params()
        while values and list(self.params())[len(values) - 1] not in given:
            values.pop()  # trailing defaults go unsaid (the parameters are positional)
        args = [_format(v) for v in values]
        if values and _is_flat_tuple(values[-1]):  # a trailing list is written spread out
            args[-1:] = [_format(v) for v in values[-1]]
        return f"{self.name}({', '.join(args)})"


def _coerce(value, tp):
    if typing.get_origin(tp) is tuple:
        (item, *_) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = (value,)  # one value where a list is expected is a list of one
        return tuple(_coerce(v, item) for v in value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (str, bool) and isinstance(value, tp):
        return value
    if tp is bool and value in ("true", "false"):  # the pipeline text of a flag
        return value == "true"
    raise TypeError(f"expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _is_flat_tuple(v) -> bool:
    return isinstance(v, tuple) and bool(v) and not any(isinstance(x, tuple) for x in v)


def _format(v, inner: bool = False) -> str:
    if isinstance(v, tuple):
        if inner and len(v) == 1:  # [[32], [8]] reads better as [32, 8]; _coerce undoes it
            return _format(v[0])
        return "[" + ", ".join(_format(x, True) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
