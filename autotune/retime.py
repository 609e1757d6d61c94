"""Measure a records database's schedules again, on this machine, with more repeats.

Why: a tuning measures each candidate once (a few repeats), on a machine that may be busy; its
records are the truth the cost model is judged against, and two measurements of the same schedule
disagree often enough to cap any model's pairwise accuracy near 0.8. Records imported from another
machine say nothing about this one at all. `retime` gives each distinct correct schedule of a task
`rounds` measurements of `repeats` repeats, each round in a fresh random order (so a slow spell of
the machine falls on different schedules each round), and writes them to a new database: one
record per schedule, holding every repeat, its median their median.

How noisy the result still is can be read off it: `agreement` is the share of a task's pairs of
schedules that two rounds order alike (the ceiling of any ranking judged against one round).
"""
from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..codegen import as_target
from ..costmodel import pairwise_accuracy
from ..ir import NestorError, parse_kernel
from ..passes import Schedule
from .measure import REPEATS, Measurer
from .records import Records, RecordsError
from .tune import target_key


@dataclass
class RetimeSummary:
    tasks: int = 0
    schedules: int = 0
    failed: int = 0           # schedules that no longer replay, build or run: left out
    agreement: list[float] = field(default_factory=list)   # per task, first round against second

    @property
    def mean_agreement(self) -> float:
        return float(np.mean(self.agreement)) if self.agreement else float("nan")


def retime(source: str, output: str, rounds: int = 2, repeats: int = REPEATS, target=None,
           constants: dict[str, tuple[int, ...]] | None = None, seed: int = 0,
           progress: Callable[[str], None] | None = None) -> RetimeSummary:
    """Re-measure every distinct correct schedule of `source` (all its targets) on `target` (None:
    this host) into the new database `output`. `constants`: task -> the inputs that are model
    constants (weights), whose stages the tuner timed apart (tasks absent: none)."""
    if rounds < 1 or repeats < 1:
        raise ValueError("rounds and repeats are at least 1")
    progress = progress or functools.partial(print, flush=True)
    rng = np.random.default_rng(seed)
    summary = RetimeSummary()
    with Records(source, create=False) as src, Records(output) as out:
        if out.count():
            raise RecordsError(f"records file '{output}' already holds records: retime writes a new database")
        key = target_key(as_target(target))
        with Measurer(None, target=target, repeats=repeats) as measurer:
            tasks = src.tasks()
            for n, task in enumerate(tasks, 1):
                text = src.task_kernel(task)
                if text is None:
                    continue
                kernel = parse_kernel(text)
                schedules = list(dict.fromkeys(r.schedule for r in src.records(task, ok_only=True)))
                candidates = {}
                for s in schedules:
                    try:
                        candidates[s] = Schedule.from_json(s).apply(kernel)
                    except Exception:   # measured by a Nestor whose passes differed
                        summary.failed += 1
                if not candidates:
                    continue
                try:
                    measurer.switch(kernel, constants=(constants or {}).get(task, ()))
                except NestorError as err:   # its reference does not run here: the other tasks still can
                    summary.failed += len(candidates)
                    progress(f"[retime] task {n}/{len(tasks)} {kernel.name}: left out ({err})")
                    continue
                times = _measure_rounds(measurer, candidates, rounds, rng)
                kept = {s: t for s, t in times.items() if len(t) == rounds}
                summary.failed += len(candidates) - len(kept)
                out.add_task(task, text, src.task_flops(task) or 0.0)
                with out.transaction():
                    for s, per_round in kept.items():
                        every = [x for r in per_round for x in r]
                        out.add(task, key, s, statistics.median(every), every)
                line = (f"[retime] task {n}/{len(tasks)} {kernel.name}: {len(kept)} schedules, "
                        f"{rounds} x {repeats} repeats")
                if rounds > 1 and len(kept) > 1:
                    summary.agreement.append(_agreement([statistics.median(t[0]) for t in kept.values()],
                                                        [statistics.median(t[1]) for t in kept.values()]))
                    line += f", rounds agree on {summary.agreement[-1]:.2f} of pairs"
                summary.tasks += 1
                summary.schedules += len(kept)
                progress(line)
    return summary


def _measure_rounds(measurer: Measurer, candidates: dict, rounds: int, rng) -> dict[str, list[list[float]]]:
    """Schedule -> its repeats of each round it measured correctly in."""
    times: dict[str, list[list[float]]] = {s: [] for s in candidates}
    names = list(candidates)
    for _ in range(rounds):
        order = [names[i] for i in rng.permutation(len(names))]
        for s, result in zip(order, measurer.measure([candidates[s] for s in order])):
            if result.ok:
                times[s].append(list(result.repeats))
    return times


def _agreement(a: list[float], b: list[float]) -> float:
    """The share of pairs (with different times in `a`) that `b` orders as `a` does."""
    return pairwise_accuracy(-np.asarray(b), a, np.zeros(len(a)))
