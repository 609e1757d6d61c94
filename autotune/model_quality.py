"""How well the cost model ranks candidates it has not seen, measured on a records database.

Out-of-fold predictions: the correct records of each task are dealt into `folds` folds; for each
fold a fresh model is trained on every other fold of every task (as the tuner's shared model
learns across the kernels of a model) and scores the held-out fold. Every record then has a
score from a model that never saw it, and on those scores, per task:
- pairwise accuracy: the share of pairs with different times that the scores order right;
- top-k recall among `pool`: over random pools of `pool` candidates, how often a truly fastest
  one is among the k best-scored (what a search round relies on when it measures its best few).
A second number, `transfer`, is the pairwise accuracy of a model trained on the other tasks only:
what pretraining on past records buys a new kernel before its first measurement.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..costmodel import CostModel, features, pairwise_accuracy, sampled_top_k_recall
from ..ir import parse_kernel
from ..passes import Schedule
from .records import Records


@dataclass
class TaskQuality:
    task: str
    kernel: str            # the kernel's name
    records: int           # correct records used
    pairwise: float
    top1: float
    top5: float
    transfer: float        # pairwise accuracy of a model trained on the other tasks only


def _samples(records: Records, target: str | None):
    """Feature rows, seconds and task of every correct record whose schedule still replays."""
    rows, seconds, groups, names = [], [], [], {}
    for task in records.tasks():
        text = records.task_kernel(task)
        if text is None:
            continue
        kernel = parse_kernel(text)
        names[task] = kernel.name
        kernels, secs = [], []
        for r in records.records(task, target, ok_only=True):
            try:
                kernels.append(Schedule.from_json(r.schedule).apply(kernel))
            except Exception:  # measured by an older Nestor whose passes differ
                continue
            secs.append(r.median)
        if kernels:
            rows.append(features(kernels))
            seconds += secs
            groups += [task] * len(kernels)
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(0, str), names
    return np.concatenate(rows), np.asarray(seconds), np.asarray(groups), names


def _fit(x, seconds, groups, seed) -> CostModel:
    model = CostModel(seed=seed)
    model.update_features(x, seconds, groups)
    return model


def evaluate(records_path: str, target: str | None = None, folds: int = 4, pool: int = 64,
             seed: int = 0, min_records: int = 8) -> list[TaskQuality]:
    """Quality per task (tasks with fewer than `min_records` correct records are left out)."""
    with Records(records_path) as records:
        x, seconds, groups, names = _samples(records, target)
    tasks = [t for t in dict.fromkeys(groups) if np.sum(groups == t) >= min_records]
    keep = np.isin(groups, tasks)
    x, seconds, groups = x[keep], seconds[keep], groups[keep]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(groups), int)
    for t in tasks:  # deal each task's records into folds evenly
        idx = np.flatnonzero(groups == t)
        fold[idx] = rng.permutation(len(idx)) % folds
    scores = np.zeros(len(groups))
    for f in range(folds):
        train = fold != f
        scores[~train] = _fit(x[train], seconds[train], groups[train], seed).predict_features(x[~train])
    out = []
    for t in tasks:
        mine = groups == t
        s, secs, g = scores[mine], seconds[mine], groups[mine]
        others = _fit(x[~mine], seconds[~mine], groups[~mine], seed) if len(tasks) > 1 else None
        transfer = (pairwise_accuracy(others.predict_features(x[mine]), secs, g)
                    if others is not None and others.trained else float("nan"))
        out.append(TaskQuality(t, names.get(t, t[:8]), int(mine.sum()), pairwise_accuracy(s, secs, g),
                               sampled_top_k_recall(s, secs, g, 1, pool, seed=seed),
                               sampled_top_k_recall(s, secs, g, 5, pool, seed=seed), transfer))
    return out


def report(quality: list[TaskQuality], pool: int = 64, out=print) -> float:
    """Print a table; returns the pairwise accuracy over all tasks (mean of the tasks')."""
    out(f"{'kernel':<16} {'task':<10} {'records':>7} {'pairwise':>8} {f'top1/{pool}':>8} "
        f"{f'top5/{pool}':>8} {'transfer':>8}")
    for q in quality:
        out(f"{q.kernel[:16]:<16} {q.task[:10]:<10} {q.records:>7} {q.pairwise:>8.3f} {q.top1:>8.2f} "
            f"{q.top5:>8.2f} {q.transfer:>8.3f}")
    if not quality:
        out("no task has enough correct records to evaluate")
        return float("nan")
    mean = lambda attr: float(np.nanmean([getattr(q, attr) for q in quality]))
    out(f"{'mean':<16} {'':<10} {sum(q.records for q in quality):>7} {mean('pairwise'):>8.3f} "
        f"{mean('top1'):>8.2f} {mean('top5'):>8.2f} {mean('transfer'):>8.3f}")
    out(f"cost model pairwise accuracy on held-out records: {mean('pairwise'):.3f}")
    return mean("pairwise")
