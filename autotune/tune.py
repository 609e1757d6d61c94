"""Tuning kernels end to end: records, cost model, measurement and search wired together, with a
progress line, and the best stored schedules read back for compilation."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Callable

from ..codegen import host_target
from ..costmodel import CostModel
from ..ir import Kernel, parse_kernel, structural_hash
from ..ir.errors import NestorError
from ..passes import Schedule, canonical_loops
from .measure import Measurer
from .records import Records
from .search import Progress, Tuner, TuneResult
from .task_scheduler import Task, TaskScheduler, similarity_key, extract_tasks, round_printer


MAX_SIMILAR_TRIES = 4   # similar tasks' schedules tried for a kernel never tuned


def target_key(target=None) -> str:
    """The records key of a target: its JSON form (kind, mcpu, cores)."""
    return str(target or host_target())


def progress_printer(name: str, stream=sys.stderr) -> Callable[[Progress], None]:
    """`[name] ####------ 48/256 trials  best 1.234 ms  123.4 GFLOP/s  2 errors`, redrawn in place."""
    def show(p: Progress) -> None:
        width = 20
        if p.budget >= 10 ** 8:  # tuning until a deadline: no known end
            p = Progress(p.task, p.trials, p.trials + 1, p.best_seconds, p.gflops, p.errors)
        filled = int(width * p.trials / max(p.budget, 1))
        best = f"best {p.best_seconds * 1e3:8.3f} ms" if p.best_seconds else "best        -   "
        gf = f"{p.gflops:7.1f} GFLOP/s" if p.gflops else "      - GFLOP/s"
        end = "\n" if p.trials >= p.budget else ""
        stream.write(f"\r[{name}] {'#' * filled}{'-' * (width - filled)} {p.trials:4d}/{p.budget} trials  "
                     f"{best}  {gf}  {p.errors} errors{end}")
        stream.flush()
    return show


def tune_kernels(kernels: dict[str, Kernel], trials: int, records_path: str | None = None,
                 time_budget: float | None = None, target=None, show_progress: bool = True,
                 model_path: str | None = None, seed: int = 0) -> dict[str, TuneResult]:
    """Tune each kernel (name -> kernel; structurally equal ones once) for `trials` measurements,
    or until `time_budget` seconds are spent (shared equally). Measurements go to the records
    file as they arrive; the cost model is shared across kernels and saved to `model_path`."""
    key = target_key(target)
    results: dict[str, TuneResult] = {}
    by_hash: dict[str, str] = {}
    start = time.time()
    distinct = {structural_hash(k) for k in kernels.values()}
    with _tuning_state(records_path, model_path, seed) as (records, model):
        for n, (name, kernel) in enumerate(kernels.items()):
            h = structural_hash(kernel)
            if h in by_hash:
                results[name] = results[by_hash[h]]
                continue
            by_hash[h] = name
            deadline = None
            if time_budget is not None:
                left = len(distinct) - len(by_hash) + 1
                deadline = time.time() + (start + time_budget - time.time()) / left
            with Measurer(canonical_loops(kernel), target=target) as measurer:
                tuner = Tuner(kernel, measurer, records, model, key, seed=seed + n)
                results[name] = tuner.tune(trials, deadline,
                                           progress_printer(name) if show_progress else None)
            if show_progress and results[name].trials < trials:
                sys.stderr.write("\n")
    return results


def tune_graph(graph, trials: int | None = None, time_budget: float | None = None,
               records_path: str | None = None, target=None, show_progress: bool = True,
               model_path: str | None = None, seed: int = 0, batch: int = 16) -> list[Task]:
    """Tune the kernels of a model graph together (autotune.task_scheduler): `trials` measurements
    in all, or `time_budget` seconds. Returns the tasks with their best times and trial counts."""
    tasks = extract_tasks(graph)
    if not tasks:
        return tasks
    with _tuning_state(records_path, model_path, seed) as (records, model), \
            Measurer(None, target=target) as measurer:
        scheduler = TaskScheduler(tasks, measurer, records, model, target_key(target), batch, seed)
        try:
            scheduler.tune(trials, time_budget, round_printer() if show_progress else None)
        finally:
            if show_progress:
                sys.stderr.write("\n")
    return tasks


@contextlib.contextmanager
def _tuning_state(records_path: str | None, model_path: str | None, seed: int):
    """The records database and the cost model of a tuning run; the model is saved at the end,
    interrupted or not (the records are written as they arrive)."""
    records = Records(records_path) if records_path else None
    model = CostModel.load(model_path) if model_path and os.path.exists(model_path) else CostModel(seed=seed)
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
    best = _best_scheduled(records_path, target, similar)

    def lookup(kernel: Kernel) -> Schedule | None:
        found = best(kernel)
        return found[0] if found else None
    return lookup


def best_kernels(records_path: str, target=None) -> Callable[[Kernel], Kernel | None]:
    """As best_schedules, but the kernel scheduled (each schedule replayed once: compiling a
    model needs the result, and a borrowed schedule is replayed anyway to see that it applies)."""
    best = _best_scheduled(records_path, target, True)

    def lookup(kernel: Kernel) -> Kernel | None:
        found = best(kernel)
        return found[1] if found else None
    return lookup


def _best_scheduled(records_path: str, target, similar: bool) -> Callable[[Kernel], tuple[Schedule, Kernel] | None]:
    records = Records(records_path)
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
