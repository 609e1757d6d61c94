"""Schedules: ordered, replayable lists of pass steps, as JSON or as a pipeline string.

    split(i0, 32); reorder(i0_o, r0, i0_i); vectorize(i0_i)

Replay and loop names. Steps name loops, and a structurally equal kernel may name its loops
differently (hashing ignores names: two convolutions of a model are one tuning task). So a
schedule always applies to the kernel with canonical loop names: `canonical_loops` renames spatial
loops i0, i1, ... and reduction loops r0, r1, ... in pre-order, whatever they were called. Equal
structures get equal names, so a schedule made on one kernel replays on any structurally equal
one; a one-nest kernel from the frontend already has these names, and `nestor ir` shows them.
Loops made by steps get names derived from their origin (base.py), so they are canonical too.
"""
from __future__ import annotations

import json
import os
import re
import typing
from dataclasses import dataclass

from ..ir import Allocate, For, If, Kernel, Seq, Stmt, Store, Var, replace_body, substitute, verify
from ..ir.errors import NestorError
from ..ir.verify import VerifyError
from .base import Pass, ScheduleError
from .registry import PassNotFound, get_pass


def canonical_loops(kernel: Kernel) -> Kernel:
    counts = {"spatial": 0, "reduce": 0}

    def go(s: Stmt, names: dict) -> Stmt:
        if isinstance(s, For):
            name = f"{'r' if s.axis == 'reduce' else 'i'}{counts[s.axis]}"
            counts[s.axis] += 1
            return For(name, s.extent, go(s.body, {**names, s.var: Var(name)}), s.kind, s.axis)
        if isinstance(s, Store):
            return Store(s.buffer, tuple(substitute(i, names) for i in s.indices),
                         substitute(s.value, names), s.reduce)
        if isinstance(s, Seq):
            return Seq(tuple(go(x, names) for x in s.stmts))
        if isinstance(s, If):
            return If(substitute(s.cond, names), go(s.then, names),
                      None if s.otherwise is None else go(s.otherwise, names))
        return Allocate(s.buffer, go(s.body, names))
    return replace_body(kernel, go(kernel.body, {}))


def debug_enabled() -> bool:
    return os.environ.get("NESTOR_DEBUG", "") not in ("", "0")


@dataclass(frozen=True)
class Schedule:
    steps: tuple[Pass, ...] = ()

    def then(self, step: Pass) -> Schedule:
        return Schedule(self.steps + (step,))

    def apply(self, kernel: Kernel, debug: bool | None = None) -> Kernel:
        """Replay the steps on `kernel` (loops renamed canonically first). With `debug` (default:
        the NESTOR_DEBUG environment variable) the kernel is verified after every step."""
        debug = debug_enabled() if debug is None else debug
        kernel = canonical_loops(kernel)
        for n, step in enumerate(self.steps):
            kernel = step.apply(kernel)
            if debug:
                try:
                    verify(kernel)
                except VerifyError as err:
                    raise VerifyError(f"after step {n + 1} `{step}` of a schedule: {err}") from err
        return kernel

    def to_json(self) -> str:
        return json.dumps([{"pass": s.name, "params": s.given_params()} for s in self.steps])

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        try:
            items = json.loads(text)
        except ValueError as err:
            raise ScheduleError("schedule", None, f"not JSON ({err})") from None
        if not isinstance(items, list):
            raise ScheduleError("schedule", None, f"expected a list of steps, got {type(items).__name__}")
        steps = []
        for n, item in enumerate(items):
            if not (isinstance(item, dict) and isinstance(item.get("pass"), str)
                    and isinstance(item.get("params", {}), dict)):
                raise ScheduleError(f"step {n + 1}", None, f"expected {{\"pass\": name, \"params\": "
                                                           f"{{...}}}}, got {item!r}")
            steps.append(get_pass(item["pass"]).from_params(item.get("params", {})))
        return cls(tuple(steps))

    def __str__(self) -> str:
        return "; ".join(str(s) for s in self.steps)


class PipelineSyntaxError(NestorError):
    """A malformed pipeline string; `column` is 1-based."""

    def __init__(self, text: str, pos: int, problem: str):
        self.column = pos + 1
        super().__init__(f"pipeline, column {pos + 1}: {problem}\n  {text}\n  {' ' * pos}^")


# Names may hold dots (threadIdx.x) and an occurrence suffix (i0#1).
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*(?:#[0-9]+)?)"
                    r"|(?P<int>-?[0-9]+)|(?P<punct>[()\[\],;=]))")


def parse_pipeline(text: str) -> Schedule:
    """`name(arg, ...); ...` -> Schedule. Arguments are names, integers, `[lists]` or `key=value`;
    extra positional arguments go into the last parameter when that is a list, so
    `reorder(i, k, j)` is `reorder([i, k, j])`."""
    return _Parser(text).schedule()


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = []  # (kind, value, position)
        pos = 0
        while text[pos:].strip():
            m = _TOKEN.match(text, pos)
            if m is None:
                start = len(text) - len(text[pos:].lstrip())
                raise PipelineSyntaxError(text, start, f"unexpected character {text[start]!r}")
            kind = m.lastgroup
            value = int(m.group(kind)) if kind == "int" else m.group(kind)
            self.tokens.append((kind, value, m.start(kind)))
            pos = m.end()
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", None, len(self.text))

    def take(self, expected: str | None = None, kind: str | None = None):
        tok = self.peek()
        if (expected is not None and tok[1] != expected) or (kind is not None and tok[0] != kind):
            self.unexpected(f"'{expected}'" if expected else "a name")
        self.i += 1
        return tok

    def unexpected(self, want: str):
        kind, value, pos = self.peek()
        got = "the end" if kind == "end" else repr(str(value))
        raise PipelineSyntaxError(self.text, pos, f"expected {want}, got {got}")

    def separator(self, close: str) -> None:
        """Between items of a list closed by `close`: a comma, or nothing before `close`."""
        if self.peek()[1] == ",":
            self.i += 1
        elif self.peek()[1] != close:
            self.unexpected(f"',' or '{close}'")

    def schedule(self) -> Schedule:
        steps = []
        while self.peek()[0] != "end":
            if self.peek()[1] == ";":  # empty steps and a trailing ';' are fine
                self.take(";")
                continue
            steps.append(self.step())
            if self.peek()[0] != "end":
                self.take(";")
        return Schedule(tuple(steps))

    def step(self) -> Pass:
        _, name, pos = self.take(kind="name")
        self.take("(")
        args, kwargs = [], {}
        while self.peek()[1] != ")":
            if self.peek()[0] == "name" and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "=":
                key = self.take()[1]
                self.take("=")
                kwargs[key] = self.value()
            elif kwargs:
                raise PipelineSyntaxError(self.text, self.peek()[2], "positional argument after key=value")
            else:
                args.append(self.value())
            self.separator(")")
        self.take(")")
        try:
            cls = get_pass(name)
            types = cls.parameters()
            fields = list(types)
            if len(args) > len(fields) and fields and typing.get_origin(types[fields[-1]]) is tuple:
                args = args[:len(fields) - 1] + [args[len(fields) - 1:]]
            if len(args) > len(fields):
                raise ScheduleError(name, None, f"takes {len(fields)} argument(s), got {len(args)}")
            return cls.from_params({**dict(zip(fields, args)), **kwargs})
        except (PassNotFound, ScheduleError) as err:
            raise PipelineSyntaxError(self.text, pos, str(err)) from None

    def value(self):
        kind, value, pos = self.peek()
        if value == "[":
            self.take("[")
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
                self.separator("]")
            self.take("]")
            return items
        if kind in ("name", "int"):
            self.i += 1
            return value
        self.unexpected("a name, an integer or a list")
