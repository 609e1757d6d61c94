"""Evolutionary search over a kernel's sketch, steered by the cost model, resumable from records.

Each round proposes a pool of candidates — mutations and crossovers of the fastest measured ones
plus fresh random samples — ranks the pool with the cost model, and measures the best few plus an
epsilon of random ones (exploration keeps the model honest). Every measurement goes to the records
database at once, so a killed tuner loses at most the batch in flight; tuning again skips what is
stored and trains the cost model on it before proposing anything.
"""
from __future__ import annotations

import random

import numpy as np

from ..ir import Allocate, For, Kernel, Seq, Store, print_kernel, structural_hash
from ..costmodel import features
from ..ir.machine import MachineParams
from ..passes import DefaultNest, Schedule, canonical_loops
from .measure import BUDGET_ENDED
from .realize import realize_pool
from .space import Candidate, Sketch

POOL = 256           # candidates ranked by the cost model per round (at most)
POOL_PER_TRIAL = 16  # ... and per trial of the round: a 2-trial warm-up ranks 32, not 256
EPSILON = 0.2        # share of a batch measured at random
RERANK_FEWEST = 4    # a task with fewer schedules measured (a short budget's warm-up) is not re-ranked


def kernel_flops(kernel: Kernel) -> float:
    """Arithmetic of the unscheduled kernel: 2 per multiply-add, 1 per other update."""
    def go(s, count: int) -> float:
        if isinstance(s, For):
            return go(s.body, count * s.extent)
        if isinstance(s, Store):
            return count * (2 if s.reduce == "add" else 1)
        if isinstance(s, Seq):
            return sum(go(c, count) for c in s.stmts)
        if isinstance(s, Allocate):
            return go(s.body, count)
        return go(s.then, count) + (go(s.otherwise, count) if s.otherwise is not None else 0)
    return float(go(kernel.body, 1))


class Tuner:
    """Searches the schedules of one kernel, a round at a time; the task scheduler decides
    which kernel's round comes next and when the budget ends. `measurer.measure(kernels) ->
    results`, `records` (autotune.records) and `model` (costmodel.CostModel) are shared across
    kernels; `target_key` keys the records, `machine` is what the sketch's rules read."""

    def __init__(self, kernel: Kernel, measurer, records, model, target_key: str, machine: MachineParams,
                 batch: int = 16, seed: int = 0, seeds: tuple[Candidate, ...] = ()):
        self.kernel = canonical_loops(kernel)
        self.task = structural_hash(kernel)
        self.sketch = Sketch.of(self.kernel, machine)
        self.measurer, self.records, self.model = measurer, records, model
        self.target_key, self.batch = target_key, batch
        self.rng = random.Random(seed)
        self.flops = kernel_flops(self.kernel)
        self.seen: set[str] = set()
        self.measured: list[tuple[float, dict]] = []   # (seconds, decisions) of this run's good ones
        self.times: dict[str, float] = {}  # schedule JSON -> seconds, its latest correct measurement
        self.best_seconds: float | None = None
        self.best: Schedule | None = None
        self.stored = 0
        self.errors = 0
        self._unmeasured: dict[str, tuple[dict, Schedule, np.ndarray]] = {}  # the last pool, by schedule
        self._schedule_of: dict[str, str] = {}  # repr of decisions realized -> their schedule's JSON
        self._spread = True  # pools realized in the measurer's workers, where it has them
        # good decisions of similar kernels (the task scheduler's other tasks): offered first,
        # and mutated until this kernel has measured parents of its own
        self.seeds = [a for a in (self.sketch.adopt(d) for d in seeds) if a is not None]
        self.rules = self.sketch.rule_decisions()  # offered first too: the first before the seeds
        if records is not None:
            self._resume()

    def _resume(self) -> None:
        self.records.add_task(self.task, print_kernel(self.kernel), self.flops)
        done = self.records.records(self.task, self.target_key)
        self.stored = len(done)
        self.seen |= {r.schedule for r in done}
        good = [r for r in done if r.ok]
        self.times.update((r.schedule, r.median) for r in good)  # in order: the latest stays
        self._take_best()
        if self.model is not None and good:
            kernels, secs = [], []
            for r in good:
                try:
                    kernels.append(Schedule.from_json(r.schedule).apply(self.kernel))
                    secs.append(r.fastest)
                except Exception:  # a record from an older Nestor that no longer replays
                    continue
            if kernels:
                self.model.update(kernels, secs, [self.task] * len(kernels))

    # proposing

    def _candidates(self) -> list[tuple[dict, Schedule, np.ndarray]]:
        """The round's pool: (decisions, schedule, feature row) each, no schedule seen before."""
        size = min(POOL, POOL_PER_TRIAL * self.batch)
        if not self._model_ready():
            size = min(size, self.batch)  # no model yet: random samples are all we can do
        # Up to half the pool: the last round's newest candidates not measured, realized already.
        # Realizing one (its passes applied in Python, ~6 ms) is much of a round's cost: a pool
        # of 256 for Inception-v2's 2-trial warm-ups took 1-6 s a task (up to 900 realized: a
        # small space gives many repeats) against 0.3 s of measuring.
        carried = [(k, c) for k, c in self._unmeasured.items() if k not in self.seen]
        pool: dict[str, tuple[dict, Schedule, np.ndarray]] = dict(carried[len(carried) - size // 2:] if carried else [])
        parents = self.good_decisions(8) or self.seeds[:8]
        tries = 0
        # the kernel's own first rule-built tile leads: a warm-up round may be 2 trials (the
        # default schedule and this)
        offered = [] if self.measured else self.rules[:1] + self.seeds + self.rules[1:]
        while len(pool) < size and tries < 2 * size:
            fresh: dict[str, Candidate] = {}  # repr -> decisions to realize, drawn together
            while len(pool) + len(fresh) < size and tries < 2 * size:
                tries += 1
                d = self._draw(offered, parents)
                # mutations of the same parents repeat themselves: half of a pool's tries were
                # schedules already measured or pooled, and a decision seen before is known unrealized
                known = self._schedule_of.get(repr(d))
                if known is not None and (known in self.seen or known in pool):
                    continue
                if known in self._unmeasured:  # realized for the last pool, not carried: no need to again
                    pool[known] = self._unmeasured[known]
                    continue
                fresh.setdefault(repr(d), d)
            for (text, d), schedule, row in zip(fresh.items(), *self._realize(list(fresh.values()))):
                key = schedule.to_json()
                self._schedule_of[text] = key
                if key not in self.seen and key not in pool:
                    pool[key] = (d, schedule, row)
        self._unmeasured = pool
        return list(pool.values())

    def _draw(self, offered: list[Candidate], parents: list[Candidate]) -> Candidate:
        """The next decisions to try: those offered first, then mutations and crossovers of the
        parents, and fresh samples."""
        r = self.rng.random()
        if offered:
            return offered.pop(0)
        if parents and r < 0.6:
            return self.sketch.mutate(self.rng.choice(parents), self.rng)
        if len(parents) >= 2 and r < 0.75:
            return self.sketch.crossover(*self.rng.sample(parents, 2), self.rng)
        return self.sketch.sample(self.rng)

    def _realize(self, candidates: list[Candidate]) -> tuple[list[Schedule], np.ndarray]:
        """Their schedules and feature rows: in the measurer's worker processes where it has them
        (Measurer.realize), else (or where they fail) here."""
        spread = getattr(self.measurer, "realize", None)
        if spread is not None and self._spread and len(candidates) > 1:
            done = spread(self.sketch, candidates, self._machine)
            if done is not None:
                return done
            self._spread = False  # (a rule the workers cannot import): not tried again
        return realize_pool(self.sketch, candidates, self._machine)

    @property
    def _machine(self) -> MachineParams:
        """The machine whose features the cost model learns (its caches, lanes and cores)."""
        return getattr(self.model, "machine", self.sketch.machine)

    def good_decisions(self, n: int) -> list[Candidate]:
        """The decisions of this run's `n` fastest measured candidates, fastest first."""
        return [d for _, d in sorted(self.measured, key=lambda t: t[0])[:n]]

    def _model_ready(self) -> bool:
        return self.model is not None and self.model.trained

    def _choose(self, pool):
        offered = self.seeds + self.rules
        seeded = [c for c in pool if any(c[0] is d for d in offered)][:self.batch // 2]
        if seeded:  # measured whatever the model thinks: it has not seen this kernel yet
            rest = self._choose([c for c in pool if all(c is not x for x in seeded)])
            return seeded + rest[:self.batch - len(seeded)]
        if not self._model_ready() or len(pool) <= self.batch:
            self.rng.shuffle(pool)
            return pool[:self.batch]
        rows = np.array([row for _, _, row in pool])
        scores = self.model.predict_features(rows, self.task)  # with the task's own model
        ranked = [pool[i] for i in sorted(range(len(pool)), key=lambda i: -scores[i])]
        explore = max(1, int(self.batch * EPSILON))
        chosen = ranked[:self.batch - explore]
        rest = ranked[self.batch - explore:]
        return chosen + self.rng.sample(rest, min(explore, len(rest)))

    def _default_candidate(self) -> tuple[None, Schedule, Kernel] | None:
        """The basic schedule as steps (`default` on every top-level nest), measured first; the
        first rule-built tile, the untuned default on a CPU, leads the same batch (_candidates),
        so tuning never ends worse than not tuning. None once it was measured."""
        schedule = Schedule(tuple(DefaultNest.for_machine(n.root, self.sketch.machine)
                                  for n in self.sketch.info.nests))
        if schedule.to_json() in self.seen:
            return None
        return None, schedule, schedule.apply(self.kernel)

    # one round

    def round(self) -> int:
        """Propose, rank, measure one batch; returns how many were measured (0: space exhausted)."""
        batch = self.propose()
        if batch:
            self.learn(batch, self.measurer.measure([k for _, _, k in batch]))
        return len(batch)

    def propose(self) -> list[tuple[Candidate | None, Schedule, Kernel]]:
        """The next batch to measure, (decisions, schedule, kernel) each: the default schedule
        first while unmeasured. Another measurer (MetaSchedule's runner) may time it; `learn`
        takes its results."""
        chosen = self._choose(self._candidates())
        default = self._default_candidate()
        if default is not None:
            chosen = chosen[:max(self.batch - 1, 0)]
        batch = [(d, schedule, schedule.apply(self.kernel)) for d, schedule, _ in chosen]
        return [default] + batch if default is not None else batch

    def learn(self, batch, results) -> None:
        """Store a proposed batch's measurements (MeasureResult each) and train the model on them."""
        good_kernels, good_keys, good_secs = [], [], []
        for (d, schedule, kernel), res in zip(batch, results):
            if res.error == BUDGET_ENDED:  # cut, not measured: a later run measures it
                continue
            key = schedule.to_json()
            self.seen.add(key)
            if self.records is not None:
                self.records.add(self.task, self.target_key, key, res.median, list(res.repeats), res.error,
                                 res.device)
            if not res.ok:
                self.errors += 1
                continue
            if d is not None:  # the default schedule has no decisions to mutate
                self.measured.append((res.median, d))
            good_kernels.append(kernel)
            good_keys.append(key)
            good_secs.append(res.fastest)  # the model learns from the fastest repeat
            self.times[key] = res.median
            if self.best_seconds is None or res.median < self.best_seconds:
                self.best_seconds, self.best = res.median, schedule
        if self.model is not None and good_kernels:
            self.model.update_features(self._rows(good_keys, good_kernels), good_secs, [self.task] * len(good_kernels))

    def _rows(self, keys: list[str], kernels: list[Kernel]) -> np.ndarray:
        """Feature rows of measured kernels: those of the pool that offered them, computed when it
        was realized; the others (the default schedule) featurized now."""
        pooled = self._unmeasured
        others = iter(features([k for key, k in zip(keys, kernels) if key not in pooled], self._machine))
        return np.array([pooled[key][2] if key in pooled else next(others) for key in keys])

    def rerank(self, top: int, limit: int | None = None) -> int:
        """Measure the `top` fastest schedules again, in one batch, and take the fastest by these
        times (Records.best judges a schedule by its latest time too). Rounds measured minutes
        apart on a shared machine differ by more than the top schedules do: ResNet-50's records
        once held 1.23-1.30 ms for schedules of one conv that ran 0.59-0.99 ms side by side.
        Not with fewer than RERANK_FEWEST schedules: a short budget's warm-up of a task (its
        default schedule and its rule-built tile, rarely close) is better spent on the warm-up
        of another (Inception-v2 in 3 minutes: 60 tasks, 2 schedules each). Where the machine is
        slower now and an older time not measured again comes out fastest, the next are
        measured too, up to `limit` in all (default `top`). Returns how many were measured."""
        limit = top if limit is None else limit
        again: set[str] = set()
        if len(self.times) < RERANK_FEWEST:
            return 0
        while len(again) < limit:
            ranked, kernels = [], []
            for key in sorted(self.times, key=self.times.get):
                if len(ranked) == min(top, limit - len(again)):
                    break
                if key in again:
                    continue
                try:
                    kernels.append(Schedule.from_json(key).apply(self.kernel))
                    ranked.append(key)
                except Exception:  # a record from an older Nestor that no longer replays
                    del self.times[key]
            if not ranked or len(ranked) + len(again) < 2:
                break
            results = self.measurer.measure(kernels)
            for key, res in zip(ranked, results):
                again.add(key)
                if res.error == BUDGET_ENDED:
                    continue
                if self.records is not None:
                    self.records.add(self.task, self.target_key, key, res.median, list(res.repeats), res.error,
                                     res.device)
                if res.ok:
                    self.times[key] = res.median
                else:  # as in Records.best, its earlier correct time stands
                    self.errors += 1
            self._take_best()
            if self.best.to_json() in again:
                break
        return len(again)

    def _take_best(self) -> None:
        if self.times:
            key = min(self.times, key=self.times.get)
            self.best_seconds, self.best = self.times[key], Schedule.from_json(key)
