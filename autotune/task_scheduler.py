"""Tuning a whole model: its kernels as tasks, the trial budget spent where it buys the most latency.

Tasks are the distinct kernels of a graph (by structural hash: ResNet-50's repeated blocks are
one task each), weighted by how many times the model calls them. The model's estimated latency
is the sum over tasks of calls × best time. Every task first gets a warm-up round (its default
schedule, its rule-built tiles and a batch of samples), the heaviest tasks first, the lightest
with a small batch, and every batch small enough that the warm-ups take at most half of the
budget, so that a short budget reaches every task and is spent where the arithmetic is; after
that each round goes to the task whose next round is expected to cut the estimate most, as in
Ansor's gradient-based task scheduler:

    gradient_i = calls_i × (α · (best_i(t) − best_i(t − Δ)) / Δ  +  (1 − α) · (−best_i(t) / t))

the first term is the improvement per trial over the task's last few rounds (Δ trials), the
second the optimistic guess that the next t trials could save as much again as the first t.
The task with the steepest (most negative) gradient is tuned next; now and then a random one,
so that no estimate goes stale. The last RERANK_SHARE of the budget (autotune/budget.py)
measures each task's fastest schedules again, side by side, heaviest task first: times taken
minutes apart on a shared machine differ by more than the best schedules do, and the re-measured
ones decide. One set of measurement workers serves all tasks (they switch kernels), the cost
model is shared, and every measurement goes to the records database as it arrives, so tuning
again resumes every task from what is stored. Kernels tuned alone (`nestor tune kernel.ir`) are
tasks too: one loop decides warm-up, rounds, re-ranking and stopping for both.
"""
from __future__ import annotations

import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..ir import Graph, Kernel, structural_hash
from ..ir.errors import NestorError
from ..ir.machine import MachineParams
from ..passes import Schedule, canonical_loops
from ..codegen.memory import concats_in_place
from .budget import RERANK_TOP, Budget
from .search import Tuner, kernel_flops
from .nest import top_level_nests

ALPHA = 0.2        # weight of the observed improvement against the optimistic guess
WINDOW = 3         # rounds over which the observed improvement is taken
EPSILON = 0.05     # share of rounds given to a random task
SEEDS_PER_TASK = 2 # best decisions of each task offered to the similar tasks tuned after it
LIGHT_SHARE = 0.01 # a task under this share of the model's arithmetic warms up with LIGHT_BATCH
LIGHT_BATCH = 4    # (DenseNet-121 has 192 tasks; 120 of them concats and batch-norm+relu)
WARM_SHARE = 0.5   # of the budget (trials or time) the warm-up round of every task may take
MIN_WARM_BATCH = 2 # the default schedule and the first rule-built tile


@dataclass
class Task:
    hash: str
    kernel: Kernel                 # canonical loop names
    nodes: list[str]               # the graph nodes that call it
    flops: float
    constants: tuple[int, ...] = ()  # inputs that are model constants in every call (weights)
    tuner: Tuner | None = None
    trials: int = 0                # measured in this run
    errors: int = 0
    failed: str | None = None      # why the task cannot be tuned (its reference fails)
    exhausted: bool = False
    history: list = field(default_factory=list)   # (trials, best seconds) after each round

    @property
    def calls(self) -> int:
        return len(self.nodes)

    @property
    def name(self) -> str:
        return self.nodes[0] if len(self.nodes) == 1 else f"{self.nodes[0]} (+{len(self.nodes) - 1})"

    @property
    def best(self) -> float | None:
        return self.tuner.best_seconds if self.tuner else None

    @property
    def schedule(self) -> Schedule | None:
        """The fastest schedule found (this run or stored)."""
        return self.tuner.best if self.tuner else None

    @property
    def active(self) -> bool:
        return self.failed is None and not self.exhausted


def extract_tasks(graph: Graph) -> list[Task]:
    """The distinct kernels of `graph`, in order of first call."""
    tasks: dict[str, Task] = {}
    _, in_place = concats_in_place(graph)  # they run nothing in the compiled model
    for node in graph.nodes:
        if node.kernel is None or node.name in in_place:
            continue
        h = structural_hash(node.kernel)
        constants = tuple(i for i, name in enumerate(node.inputs) if name in graph.constants)
        if h in tasks:
            tasks[h].nodes.append(node.name)
            tasks[h].constants = tuple(i for i in tasks[h].constants if i in constants)
        else:
            kernel = canonical_loops(node.kernel)
            tasks[h] = Task(h, kernel, [node.name], kernel_flops(kernel), constants)
    return list(tasks.values())


def kernel_tasks(kernels: dict[str, Kernel]) -> list[Task]:
    """Tasks of kernels tuned by name, outside a model: one per structural hash, its nodes the
    names of the kernels equal to it."""
    tasks: dict[str, Task] = {}
    for name, kernel in kernels.items():
        h = structural_hash(kernel)
        if h in tasks:
            tasks[h].nodes.append(name)
        else:
            kernel = canonical_loops(kernel)
            tasks[h] = Task(h, kernel, [name], kernel_flops(kernel))
    return list(tasks.values())


@dataclass
class RoundInfo:
    """What a progress display needs after each round."""
    round: int
    trials: int                    # measured so far
    elapsed: float                 # seconds so far
    budget: Budget
    warmed: int                    # tasks that had their warm-up round
    tasks: int
    latency: float | None          # estimated model latency (seconds), once every task has a time
    task: Task
    reranked: int = 0              # tasks whose fastest schedules were measured again


class TaskScheduler:
    """Tunes tasks (the kernels of a model, or kernels tuned by name) within one budget.
    `measurer` has `switch(kernel)` and `measure(kernels)`; `records` (autotune.records) and
    `model` (costmodel.CostModel) may be None; `target_key` keys the records and `machine` is
    the description the sketches read."""

    def __init__(self, tasks: list[Task], measurer, records, model, target_key: str, machine: MachineParams,
                 batch: int = 16, seed: int = 0):
        self.tasks, self.measurer, self.records, self.model = tasks, measurer, records, model
        self.target_key, self.machine, self.batch = target_key, machine, batch
        self.rng = random.Random(seed)
        self.seed = seed
        self.rounds = 0
        self.good: dict[tuple, dict[str, list[dict]]] = {}  # similar kernels -> task -> best decisions

    def latency(self) -> float | None:
        """Estimated model latency: calls × best time summed over tasks (None until all have one)."""
        bests = [(t.calls, t.best) for t in self.tasks if t.failed is None]
        if not bests or any(b is None for _, b in bests):
            return None
        return sum(c * b for c, b in bests)

    def tune(self, budget: Budget, progress: Callable[[RoundInfo], None] | None = None) -> list[Task]:
        """Run rounds until the budget is spent (it starts now) or no task is left to tune."""
        budget.start()
        # heaviest first: where the budget ends before every task had its warm-up, the tasks
        # left out run their default schedule, and they should be the light ones
        warm = sorted((t for t in self.tasks if not t.history), key=lambda t: -t.calls * t.flops)
        rerank: list[Task] | None = None  # the tasks left to re-rank, once that has begun
        while not budget.spent and any(t.active for t in self.tasks):
            if rerank is None and budget.reserve_begun:
                rerank = sorted((t for t in self.tasks if t.tuner and t.best), key=lambda t: -t.calls * t.best)
                reranking = len(rerank)
            if rerank:
                task = rerank.pop(0)
                n = self._rerank(task, budget.trials_left)
            else:  # after the re-ranking, what is left of the budget goes on searching
                first = self._warm_batch(len(warm), budget) if warm else None
                task = warm.pop(0) if warm else self._next_task()
                if task is None:
                    break
                n = self._round(task, budget.search_trials_left, first)
            budget.spend(n)
            if progress:
                progress(RoundInfo(self.rounds, budget.done, budget.elapsed, budget,
                                   len(self.tasks) - len(warm), len(self.tasks), self.latency(), task,
                                   0 if rerank is None else reranking - len(rerank)))
        return self.tasks

    def _rerank(self, task: Task, left: int | None) -> int:
        """Measure the task's fastest schedules again, side by side (Tuner.rerank)."""
        try:
            self.measurer.switch(task.kernel, constants=task.constants)
        except NestorError as err:
            task.failed = str(err)
            return 0
        errors = task.tuner.errors
        limit = 2 * RERANK_TOP if left is None else min(2 * RERANK_TOP, left)
        n = task.tuner.rerank(RERANK_TOP, limit)
        task.trials += n
        task.errors += task.tuner.errors - errors
        return n

    def _warm_batch(self, waiting: int, budget: Budget) -> int:
        """The batch of the next warm-up round: WARM_SHARE of the budget shared by the tasks still
        waiting (at least MIN_WARM_BATCH, at most the batch). With a short budget and many
        tasks (Inception-v2's 59 in 3 minutes) a 16-trial warm-up reached a quarter of them:
        the rest ran schedules borrowed from other shapes, up to 3x slower than their own
        rule-built tiles."""
        if budget.seconds is not None:
            per_trial = budget.elapsed / budget.done if budget.done else 1.0  # seconds a trial costs so far
            share = (WARM_SHARE * budget.seconds - budget.elapsed) / per_trial / waiting
        else:
            share = (WARM_SHARE * budget.trials - budget.done) / waiting
        return max(MIN_WARM_BATCH, min(self.batch, int(share)))

    def _round(self, task: Task, left: int | None, warm_batch: int | None = None) -> int:
        try:
            self.measurer.switch(task.kernel, constants=task.constants)
            if task.tuner is None:
                seeds = [d for ds in self.good.get(similarity_key(task.kernel), {}).values() for d in ds]
                task.tuner = Tuner(task.kernel, self.measurer, self.records, self.model, self.target_key,
                                   self.machine, batch=self.batch, seed=self.seed + len(self.tasks) + self.rounds,
                                   seeds=tuple(seeds))
        except NestorError as err:
            task.failed = str(err)
            return 0
        batch = self.batch
        if not task.history:  # its warm-up round
            batch = min(batch, warm_batch or batch)
            if self._share(task) < LIGHT_SHARE:
                batch = min(batch, LIGHT_BATCH)
        task.tuner.batch = min(batch, left) if left is not None else batch
        errors = task.tuner.errors
        n = task.tuner.round()
        self.rounds += 1
        task.trials += n
        task.errors += task.tuner.errors - errors
        task.exhausted = n == 0
        task.history.append((task.trials, task.best))
        good = task.tuner.good_decisions(SEEDS_PER_TASK)
        if good:
            self.good.setdefault(similarity_key(task.kernel), {})[task.hash] = good
        return n

    def _share(self, task: Task) -> float:
        total = sum(t.calls * t.flops for t in self.tasks)
        return task.calls * task.flops / total if total else 1.0

    def _next_task(self) -> Task | None:
        active = [t for t in self.tasks if t.active]
        if not active:
            return None
        if self.rng.random() < EPSILON:
            return self.rng.choice(active)
        return min(active, key=self._gradient)

    def _gradient(self, task: Task) -> float:
        """The expected change of the model's latency per trial spent on `task` (negative)."""
        best = task.best
        if best is None or task.trials == 0:
            return -math.inf  # nothing known yet: measure it
        forward = -best / task.trials
        backward = 0.0
        if len(task.history) > WINDOW:
            then_trials, then_best = task.history[-1 - WINDOW]
            if then_best is not None and task.trials > then_trials:
                backward = (best - then_best) / (task.trials - then_trials)
        return task.calls * (ALPHA * backward + (1 - ALPHA) * forward)


def similarity_key(kernel: Kernel) -> tuple:
    """Kernels whose sketch decisions transfer: the same computation (name: conv_relu, matmul ...)
    over nests of the same depth; shapes may differ."""
    return kernel.name, tuple(len(n.spatial) for n in top_level_nests(kernel))


def round_printer(stream=None) -> Callable[[RoundInfo], None]:
    """`[tune] ####------ 480/2000 trials  round 30  warm-up 30/30  est. 45.21 ms  last: conv_3
    0.512 ms 98.1 GFLOP/s`, redrawn in place on `stream` (default: stderr at each call)."""
    def show(r: RoundInfo) -> None:
        width = 20
        used, count = _budget_used(r)
        filled = min(width, int(width * used))
        est = f"est. {r.latency * 1e3:9.3f} ms" if r.latency else "est.         -   "
        stage = f"re-rank {r.reranked}/{r.tasks}" if r.reranked else f"warm-up {r.warmed}/{r.tasks}"
        out = stream or sys.stderr
        out.write(f"\r[tune] {'#' * filled}{'-' * (width - filled)} {count}  round {r.round:4d}  "
                  f"{stage}  {est}  last: {_task_best(r.task)}")
        out.flush()
    return show


def _budget_used(r: RoundInfo) -> tuple[float, str]:
    """The share of the budget used (by trials or by time, whichever is further) and its text."""
    b = r.budget
    shares, text = [], f"{r.trials:5d}"
    if b.trials is not None:
        shares.append(r.trials / b.trials)
        text += f"/{b.trials}"
    text += " trials"
    if b.seconds is not None:
        shares.append(r.elapsed / b.seconds)
        text += f" {r.elapsed:5.0f}/{b.seconds:.0f} s"
    return max(shares), text


def _task_best(task: Task) -> str:
    """`conv_3 0.512 ms 98.1 GFLOP/s`: a task's name and its best time so far."""
    if not task.best:
        return f"{task.name[:24]:<24} {'-':>9} ms {'-':>7} GFLOP/s"
    return f"{task.name[:24]:<24} {task.best * 1e3:9.3f} ms {task.flops / task.best / 1e9:7.1f} GFLOP/s"


def task_table(tasks: list[Task], out=print) -> None:
    """Per task: calls, share of the estimated latency, trials, best time, GFLOP/s, errors; and
    the steps sketch rules needed that the passes refused (a rule and a pass that disagree)."""
    total = sum(t.calls * t.best for t in tasks if t.best) or 1.0
    out(f"{'task':<28} {'calls':>5} {'share':>6} {'trials':>6} {'errors':>6} {'best ms':>9} {'GFLOP/s':>8}")
    for t in sorted(tasks, key=lambda t: -(t.calls * (t.best or 0))):
        if t.failed:
            out(f"{t.name[:28]:<28} {t.calls:>5} {'-':>6} {t.trials:>6} {t.errors:>6} {'failed':>9}  {t.failed}")
            continue
        share = f"{100 * t.calls * t.best / total:5.1f}%" if t.best else f"{'-':>6}"
        best = f"{t.best * 1e3:9.3f}" if t.best else f"{'-':>9}"
        gf = f"{t.flops / t.best / 1e9:8.1f}" if t.best else f"{'-':>8}"
        out(f"{t.name[:28]:<28} {t.calls:>5} {share} {t.trials:>6} {t.errors:>6} {best} {gf}")
    refused = refused_steps(tasks)
    if refused:
        top = ", ".join(f"{step} {n}" for step, n in refused.most_common(4))
        out(f"refused steps: {sum(refused.values())} required steps of sketch rules were refused ({top})")


def refused_steps(tasks: list[Task]) -> Counter:
    """`rule: pass` -> how many required steps the passes refused over the tasks' candidates."""
    total: Counter = Counter()
    for t in tasks:
        if t.tuner is not None:
            total.update(t.tuner.sketch.refused)
    return total
