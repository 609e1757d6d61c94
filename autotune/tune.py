"""Tuning kernels end to end: records, cost model, measurement and search wired together, with a
progress line, and the best stored schedules read back for compilation."""
from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Callable

import tvm

from ..codegen import as_target, host_target, machine_params
from ..costmodel import CostModel
from ..ir import Kernel, parse_kernel, structural_hash
from ..ir.errors import NestorError
from ..passes import Schedule, canonical_loops
from .budget import Budget
from .measure import Measurer
from .model_quality import pretraining_samples
from .records import Records
from .roofline import ensure_roofline
from .task_scheduler import Task, TaskScheduler, extract_tasks, kernel_tasks, round_printer, similarity_key


MAX_SIMILAR_TRIES = 4   # similar tasks' schedules tried for a kernel never tuned


def target_key(target: tvm.target.Target | None = None) -> str:
    """The records key of a target (default: this host): its JSON form (kind, mcpu, cores; a
    GPU's without its host CPU, on which the speed of its kernels does not depend)."""
    target = host_target() if target is None else target
    if target.kind.name == "cuda" and target.host is not None:
        spec = dict(target.export())
        del spec["host"]
        target = tvm.target.Target(spec)
    return str(target)


def tune_kernels(kernels: dict[str, Kernel], budget: Budget, records_path: str | None = None,
                 target=None, show_progress: bool = True, model_path: str | None = None,
                 seed: int = 0, batch: int = 16, pretrained: str | list[str] | None = None,
                 rpc: tuple[str, str] | None = None) -> list[Task]:
    """Tune kernels given by name (structurally equal ones are one task, its nodes their names)
    with the task scheduler, as the kernels of a model are. Returns the tasks."""
    return _tune_tasks(kernel_tasks(kernels), budget, records_path, target, show_progress, model_path, seed, batch,
                       pretrained, rpc)


def tune_graph(graph, budget: Budget, records_path: str | None = None, target=None,
               show_progress: bool = True, model_path: str | None = None, seed: int = 0,
               batch: int = 16, pretrained: str | list[str] | None = None,
               rpc: tuple[str, str] | None = None) -> list[Task]:
    """Tune the kernels of a model graph together (autotune.task_scheduler). Returns the tasks
    with their best times and trial counts. `pretrained`: records of other tunings (.sqlite)
    or saved cost models, whose samples the cost model learns from before the first round.
    `rpc`: (tracker HOST:PORT, key): measure on the devices registered there, not here."""
    return _tune_tasks(extract_tasks(graph), budget, records_path, target, show_progress, model_path, seed, batch,
                       pretrained, rpc)


def _tune_tasks(tasks: list[Task], budget: Budget, records_path: str | None, target, show_progress: bool,
                model_path: str | None, seed: int, batch: int, pretrained=None, rpc=None) -> list[Task]:
    """Tune `tasks` within `budget` on `target` (anything `as_target` takes; None: this host):
    one set of measurement workers, the records and the cost model shared by all of them."""
    if not tasks:
        return tasks
    target = as_target(target)
    machine = machine_params(target)
    with _tuning_state(records_path, model_path, seed, machine, pretrained, target_key(target)) as (records, model), \
            _measurer(target, rpc, time_left=lambda: budget.seconds_left) as measurer:
        scheduler = TaskScheduler(tasks, measurer, records, model, target_key(target), machine, batch, seed)
        try:
            scheduler.tune(budget, round_printer() if show_progress else None)
        finally:
            if show_progress:
                sys.stderr.write("\n")
        if records is not None and target.kind.name == "llvm" and rpc is None:   # the host timed them: its roofline
            ensure_roofline(records, target_key(target))   # (after the budget, which it must not eat)
    return tasks


def _measurer(target, rpc: tuple[str, str] | None, **options) -> Measurer:
    """This host's measurer, or with `rpc` (tracker, key) the one timing on remote devices."""
    if rpc is None:
        return Measurer(None, target=target, **options)
    from .rpc_measure import RPCMeasurer
    return RPCMeasurer(None, *rpc, target=target, **options)


@contextlib.contextmanager
def _tuning_state(records_path: str | None, model_path: str | None, seed: int, machine,
                  pretrained: str | list[str] | None = None, key: str | None = None):
    """The records database and the cost model (for `machine`) of a tuning run, pretrained from
    `pretrained` if given (from records, those measured on target `key` only: another machine's
    times rank kernels for that machine); the model is saved at the end, interrupted or not
    (the records are written as they arrive)."""
    if model_path and os.path.exists(model_path):
        model = CostModel.load(model_path, machine)
    else:
        model = CostModel(seed=seed, machine=machine)
    if pretrained:
        model.pretrain_features(*pretraining_samples(pretrained, key))
    records = Records(records_path) if records_path else None
    try:
        yield records, model
    finally:
        if model_path and model.trained:
            model.save(model_path)
        if records is not None:
            records.close()


def best_schedules(records_path: str, target=None, similar: bool = True) -> Callable[[Kernel], Schedule | None]:
    """A lookup: kernel -> the fastest schedule stored for it (by structural hash). A kernel never
    tuned (a short budget ran out before its turn) gets, with `similar`, the schedule of the
    nearest-shaped tuned kernel of the same computation and loop structure that applies to it
    (as AutoTVM falls back to a reference log): passes keep results whatever the shapes, and a
    convolution tuned at one size is far faster at the next than the default schedule. None
    when there is neither."""
    best = _best_scheduled(records_path, as_target(target), similar)

    def lookup(kernel: Kernel) -> Schedule | None:
        found = best(kernel)
        return found[0] if found else None
    return lookup


def best_kernels(records_path: str, target=None) -> Callable[[Kernel], Kernel | None]:
    """As best_schedules, but the kernel scheduled (each schedule replayed once: compiling a
    model needs the result, and a borrowed schedule is replayed anyway to see that it applies)."""
    best = _best_scheduled(records_path, as_target(target), True)

    def lookup(kernel: Kernel) -> Kernel | None:
        found = best(kernel)
        return found[1] if found else None
    return lookup


def _best_scheduled(records_path: str, target: tvm.target.Target, similar: bool) -> Callable[[Kernel], tuple[Schedule, Kernel] | None]:
    records = Records(records_path, create=False)
    key = target_key(target)
    tuned: dict[tuple, list[tuple[Kernel, str]]] | None = None

    def similar_tasks(kernel: Kernel) -> list[tuple[Kernel, str]]:
        nonlocal tuned
        if tuned is None:  # read once: every tuned task's kernel and best schedule, by kind
            tuned = {}
            for task in records.tasks():
                text, best = records.task_kernel(task), records.best(task, key)
                if text and best:
                    k = parse_kernel(text)
                    tuned.setdefault(similarity_key(k), []).append((k, best.schedule))
        found = tuned.get(similarity_key(kernel), [])
        return sorted(found, key=lambda t: _shape_distance(t[0], kernel))

    def lookup(kernel: Kernel) -> tuple[Schedule, Kernel] | None:
        best = records.best(structural_hash(kernel), key)
        if best:
            schedule = Schedule.from_json(best.schedule)
            return schedule, schedule.apply(kernel)
        # the nearest few only: each try replays a whole schedule, and a records file of many
        # models holds dozens of similar tasks (a miss on all of them costs minutes of compile)
        for _, text in similar_tasks(canonical_loops(kernel))[:MAX_SIMILAR_TRIES] if similar else ():
            schedule = Schedule.from_json(text)
            try:
                return schedule, schedule.apply(kernel)
            except NestorError:  # ScheduleError: a loop it names is missing or too short
                continue
        return None
    return lookup


def _shape_distance(a: Kernel, b: Kernel) -> float:
    """How far apart two kernels' buffer shapes are (sum of |log2| of the dimension ratios)."""
    pairs = [(x, y) for p, q in zip(a.inputs + a.outputs, b.inputs + b.outputs) for x, y in zip(p.shape, q.shape)]
    return sum(abs(math.log2(max(x, 1) / max(y, 1))) for x, y in pairs)
