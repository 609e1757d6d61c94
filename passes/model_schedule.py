"""Schedules for a whole model: which steps each kernel gets, read from a JSON file.

    {"kernels": {"mm": "split(i0, 4); vectorize(i1)",           <- a node name
                 "relu": [{"pass": "parallel", "params": {"loop": "i0"}}],   <- a kernel name
                 "1254cbea": []}}                               <- a structural-hash prefix

A selector is a node name, a kernel name (every kernel of that name) or a prefix of at least
eight hex digits of a structural hash (`nestor ir` prints them). Steps are Schedule.to_json's
list or a pipeline string; `[]` leaves a kernel as the frontend wrote it. A bare list or pipeline
string instead of the object applies to every kernel. Kernels no selector matches get the default
schedule.

Structurally equal kernels are compiled once, so schedules are resolved to structural hashes:
when several selectors match one kernel, a node name or hash beats a kernel name, and two equally
specific selectors must agree.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

from ..ir import Graph, Kernel, structural_hash
from ..ir.errors import NestorError
from .base import ScheduleError
from .default import default_schedule
from .schedule import Schedule, parse_pipeline

MIN_HASH_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")


class ModelScheduleError(NestorError):
    """A schedule file that cannot be read, or that does not fit the model."""


@dataclass(frozen=True)
class ModelSchedule:
    """Per-kernel schedules; `selectors` is None when one schedule applies to every kernel."""
    source: str                                   # the file, or what the schedule came from
    selectors: tuple[tuple[str, Schedule], ...] | None = None
    everywhere: Schedule | None = None

    @classmethod
    def from_data(cls, data, source: str) -> ModelSchedule:
        """From a decoded schedule file (`source` names it in error messages)."""
        if isinstance(data, dict):
            if set(data) != {"kernels"} or not isinstance(data["kernels"], dict):
                raise ModelScheduleError(f"{source}: expected {{\"kernels\": {{selector: steps, ...}}}} "
                                         f"or a list of steps, got keys {sorted(data)}")
            return cls(source, tuple((str(sel), _steps(steps, f"{source}: kernels[{sel!r}]"))
                                     for sel, steps in data["kernels"].items()))
        return cls(source, everywhere=_steps(data, source))

    def scheduler_for(self, graph: Graph) -> Callable[[Kernel], Kernel]:
        """The function compile_graph applies to each distinct kernel of `graph`."""
        nodes = [n for n in graph.nodes if n.kernel is not None]
        hashes = {n.name: structural_hash(n.kernel) for n in nodes}
        chosen = self._resolve(nodes, hashes) if self.everywhere is None else {}
        names = {}  # hash -> the nodes that share it, for error messages
        for n in nodes:
            names.setdefault(hashes[n.name], []).append(n.name)

        def schedule(kernel: Kernel) -> Kernel:
            key = structural_hash(kernel)
            steps = chosen.get(key) if self.everywhere is None else self.everywhere
            if steps is None:
                return default_schedule(kernel)
            try:
                return steps.apply(kernel)
            except ScheduleError as err:
                where = _nodes_text(names[key]) if key in names else f"kernel {kernel.name}"
                raise ScheduleError(f"{self.source}: {where}: {err.step}", err.loop, err.reason) from None
        return schedule

    def _resolve(self, nodes, hashes: dict[str, str]) -> dict[str, Schedule]:
        """Structural hash -> its schedule, the most specific selector winning."""
        chosen: dict[str, tuple[int, str, Schedule]] = {}  # hash -> (specificity, selector, steps)
        for selector, steps in self.selectors:
            matched = _match(selector, nodes, hashes)
            if not matched:
                raise ModelScheduleError(
                    f"{self.source}: selector {selector!r} matches no kernel; node names: "
                    f"{', '.join(n.name for n in nodes)}; kernel names: "
                    f"{', '.join(dict.fromkeys(n.kernel.name for n in nodes))}")
            for key, rank in matched.items():
                old = chosen.get(key)
                if old and old[0] == rank and old[2] != steps:
                    raise ModelScheduleError(
                        f"{self.source}: selectors {old[1]!r} and {selector!r} give different steps to "
                        f"one kernel (nodes {', '.join(n.name for n in nodes if hashes[n.name] == key)} "
                        f"are structurally equal and compiled once)")
                if not old or rank > old[0]:
                    chosen[key] = (rank, selector, steps)
        return {key: steps for key, (_, _, steps) in chosen.items()}


NODE, KERNEL = 2, 1  # specificity: a node name or a hash beats a kernel name


def _match(selector: str, nodes, hashes: dict[str, str]) -> dict[str, int]:
    """Structural hash -> specificity of every kernel the selector picks."""
    matched: dict[str, int] = {}
    is_hash = len(selector) >= MIN_HASH_PREFIX and _HEX.fullmatch(selector.lower())
    for n in nodes:
        key = hashes[n.name]
        if n.name == selector or (is_hash and key.startswith(selector.lower())):
            matched[key] = NODE
        elif n.kernel.name == selector:
            matched.setdefault(key, KERNEL)
    return matched


def _steps(value, where: str) -> Schedule:
    try:
        if isinstance(value, str):
            return parse_pipeline(value)
        if isinstance(value, list):
            return Schedule.from_json(json.dumps(value))
    except NestorError as err:
        raise ModelScheduleError(f"{where}: {err}") from None
    raise ModelScheduleError(f"{where}: steps must be a pipeline string or a list of "
                             f"{{\"pass\": name, \"params\": {{...}}}}, got {type(value).__name__}")


def _nodes_text(names: list[str]) -> str:
    more = f" (and {len(names) - 1} structurally equal)" if len(names) > 1 else ""
    return f"node '{names[0]}'{more}"


def load_model_schedule(path: str | os.PathLike) -> ModelSchedule:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise ModelScheduleError(f"cannot read schedule file '{path}': {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelScheduleError(f"schedule file '{path}' is not valid JSON: {err}") from None
    return ModelSchedule.from_data(data, str(path))


def read_model_schedule(spec: str | os.PathLike) -> ModelSchedule:
    """A schedule file, or a pipeline string (it has parentheses) for every kernel."""
    if isinstance(spec, str) and "(" in spec and not os.path.exists(spec):
        return ModelSchedule.from_data(spec, f"schedule {spec!r}")
    return load_model_schedule(spec)
