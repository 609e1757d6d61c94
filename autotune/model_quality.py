"""How well the cost model ranks candidates it has not seen, measured on a records database.

Out-of-fold predictions: the correct records of each task are dealt into `folds` folds; for each
fold a fresh model is trained on every other fold of every task (as the tuner's shared model
learns across the kernels of a model) and scores the held-out fold. Every record then has a
score from a model that never saw it, and on those scores, per task:
- pairwise accuracy: the share of pairs with different times that the scores order right;
- top-k recall among `pool`: over random pools of `pool` candidates, how often a truly fastest
  one is among the k best-scored (what a search round relies on when it measures its best few).
A second number, `transfer`, is the pairwise accuracy of a model trained on the other tasks only:
what the shared model knows of a kernel before its first measurement.

The models learn from each record's fastest repeat (Record.fastest, as the tuner's model does);
their scores are judged against the records' medians (the times the tuner ranks schedules by),
or with truth="fastest" against the fastest repeats, which a busy machine disturbs less, or
against a re-timed copy of the records (autotune.retime), whose noise caps the measure less.
With `pretrained` (records of other models, or a saved cost model) every model above also learns
from those samples first
(the tuner's `pretrained` does the same), and a third number, `pretrained`, is the pairwise
accuracy of a model trained on them alone (TenSet's transfer: a new model's kernels ranked by
what was learned on others). Pretraining samples of a task evaluated here are left out, so
both measure transfer to unseen kernels. With `metaschedule`, MetaSchedule's own cost model is
trained and scored on the same folds (autotune.ms_model_quality): the peers' model on the same
measurements.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..codegen import machine_params
from ..costmodel import FEATURE_NAMES, CostModel, features, pairwise_accuracy, sampled_top_k_recall
from ..ir import InputError, parse_kernel
from ..ir.machine import GENERIC_CPU, MachineParams
from ..passes import Schedule
from .records import Records, RecordsError


@dataclass
class TaskQuality:
    task: str
    kernel: str            # the kernel's name
    records: int           # correct records used
    pairwise: float
    top1: float
    top5: float
    transfer: float        # pairwise accuracy of a model trained on the other tasks only
    pretrained: float      # ... of a model trained on the pretraining samples only (NaN without)
    measured: tuple[float, float] = (float("nan"), float("nan"))  # truth=DB: the records' own medians
    #   as the ranking (pairwise, top-5): how far one measurement of each schedule agrees with the truth
    metaschedule: tuple[float, float] = (float("nan"), float("nan"))  # MetaSchedule's cost model's
    #   (pairwise, top-5), out of the same folds (autotune.ms_model_quality)


@functools.cache
def _machine(target_key: str) -> MachineParams:
    """The machine a record was measured on (its features count that machine's cache lines,
    vector lanes and cores)."""
    try:
        return machine_params(target_key)
    except Exception:  # a target this TVM does not know: the generic CPU's features
        return GENERIC_CPU


def record_samples(records: Records, target: str | None = None, names: dict | None = None,
                   medians: list | None = None, schedules: list | None = None,
                   kernels: list | None = None, targets: list | None = None):
    """Feature rows, seconds (the fastest repeat) and task of every correct record (of `target`,
    or all) whose schedule still replays; features for the machine each record was measured on.
    `names`, if given, receives task -> kernel name, `medians` the records' medians,
    `schedules` their schedules (JSON), `kernels` the scheduled kernels and `targets` the
    target keys they were measured on."""
    rows, seconds, groups = [], [], []
    for task in records.tasks():
        text = records.task_kernel(task)
        if text is None:
            continue
        kernel = parse_kernel(text)
        if names is not None:
            names[task] = kernel.name
        by_target: dict[str, tuple[list, list]] = {}
        for r in records.records(task, target, ok_only=True):
            try:
                scheduled = Schedule.from_json(r.schedule).apply(kernel)
            except Exception:  # measured by an older Nestor whose passes differ
                continue
            replayed, secs = by_target.setdefault(r.target, ([], []))
            replayed.append(scheduled)
            secs.append((r.fastest, r.median, r.schedule))
        for key, (scheduled, secs) in by_target.items():
            rows.append(features(scheduled, _machine(key)))
            seconds += [fastest for fastest, _, _ in secs]
            if medians is not None:
                medians += [median for _, median, _ in secs]
            if schedules is not None:
                schedules += [schedule for _, _, schedule in secs]
            if kernels is not None:
                kernels += scheduled
            if targets is not None:
                targets += [key] * len(scheduled)
            groups += [task] * len(scheduled)
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(0, str)
    return np.concatenate(rows), np.asarray(seconds), np.asarray(groups)


def pretraining_samples(paths: str | Sequence[str], target: str | None = None):
    """Samples to pretrain a cost model with, from records databases (`record_samples`) or
    saved cost models (their training data), one path or several: feature rows, seconds, groups."""
    parts = [_pretraining_file(p, target) for p in ([paths] if isinstance(paths, str) else paths)]
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros(0), np.zeros(0, str)
    return tuple(np.concatenate(column) for column in zip(*parts))


def _pretraining_file(path: str, target: str | None):
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise InputError(f"cannot read pretraining file '{path}': {err}") from None
    if head == b"SQLite format 3\x00":
        with Records(path, create=False) as records:
            return record_samples(records, target)
    if not head.startswith(b"PK"):   # np.load would call it pickled data
        raise InputError(f"pretraining file '{path}' is neither a records database (.sqlite) nor a saved "
                         f"cost model (.npz)")
    return CostModel.load(path).training_data()


def _fit(x, seconds, groups, seed, base: CostModel | None = None) -> CostModel:
    """A model trained on these samples, from the pretrained `base` if given (a copy: the
    base's boosters and samples are only ever replaced, never changed in place)."""
    model = copy.copy(base) if base is not None else CostModel(seed=seed)
    model.update_features(x, seconds, groups)
    return model


def evaluate(records_path: str, target: str | None = None, folds: int = 4, pool: int = 64,
             seed: int = 0, min_records: int = 8, pretrained: str | Sequence[str] | None = None,
             truth: str = "median", metaschedule: bool = False) -> list[TaskQuality]:
    """Quality per task (tasks with fewer than `min_records` correct records are left out);
    `pretrained`: records databases or saved cost models to pretrain every model with; `truth`:
    judge against the records' "median" or "fastest" repeat, or the medians a records database
    (path) holds for the same schedules (`nestor records retime`: more repeats, interleaved;
    records it lacks are left out); `metaschedule`: score MetaSchedule's cost model too, on the
    same folds (TaskQuality.metaschedule)."""
    names: dict[str, str] = {}
    medians: list[float] = []
    schedules: list[str] = []
    kernels: list = []
    targets: list[str] = []
    with Records(records_path, create=False) as records:
        x, seconds, groups = record_samples(records, target, names, medians, schedules,
                                            kernels if metaschedule else None, targets if metaschedule else None)
    index = np.arange(len(groups))   # of each sample left, in kernels and targets
    own = None  # truth=DB: the records' own medians, judged beside the model
    if truth not in ("median", "fastest"):
        own = np.asarray(medians)
        medians = _retimed(truth, groups, schedules)
        known = ~np.isnan(medians)
        x, seconds, groups, medians, own = x[known], seconds[known], groups[known], medians[known], own[known]
        index = index[known]
    tasks = [t for t in dict.fromkeys(groups) if np.sum(groups == t) >= min_records]
    if not tasks:
        raise RecordsError(f"records file '{records_path}' has no task with {min_records} correct records "
                           f"that replay: nothing to evaluate")
    keep = np.isin(groups, tasks)
    x, seconds, groups, index = x[keep], seconds[keep], groups[keep], index[keep]
    own = own[keep] if own is not None else None
    judged = seconds if truth == "fastest" else np.asarray(medians)[keep]
    base = None
    if pretrained:
        px, ps, pg = pretraining_samples(pretrained, target)
        unseen = ~np.isin(pg, groups)
        base = CostModel(seed=seed)
        base.pretrain_features(px[unseen], ps[unseen], pg[unseen])
    rng = np.random.default_rng(seed)
    fold = np.empty(len(groups), int)
    for t in tasks:  # deal each task's records into folds evenly
        idx = np.flatnonzero(groups == t)
        fold[idx] = rng.permutation(len(idx)) % folds
    scores = np.zeros(len(groups))
    for f in range(folds):
        train = fold != f
        model = _fit(x[train], seconds[train], groups[train], seed, base)
        scores[~train] = model.predict_features(x[~train], groups[~train])  # as search ranks a task's pool
    ms_scores = None
    if metaschedule:
        from .ms_model_quality import metaschedule_scores
        ms_scores = metaschedule_scores([kernels[i] for i in index], seconds, groups, fold,
                                        [targets[i] for i in index], seed)
    out = []
    for t in tasks:
        mine = groups == t
        s, secs, g = scores[mine], judged[mine], groups[mine]
        others = _fit(x[~mine], seconds[~mine], groups[~mine], seed, base) if len(tasks) > 1 else None
        transfer = (pairwise_accuracy(others.predict_features(x[mine]), secs, g)
                    if others is not None and others.trained else float("nan"))
        alone = (pairwise_accuracy(base.predict_features(x[mine]), secs, g)
                 if base is not None and base.trained else float("nan"))
        measured = ((pairwise_accuracy(-own[mine], secs, g), sampled_top_k_recall(-own[mine], secs, g, 5, pool, seed=seed))
                    if own is not None else (float("nan"), float("nan")))
        theirs = ((pairwise_accuracy(ms_scores[mine], secs, g),
                   sampled_top_k_recall(ms_scores[mine], secs, g, 5, pool, seed=seed))
                  if ms_scores is not None else (float("nan"), float("nan")))
        out.append(TaskQuality(t, names.get(t, t[:8]), int(mine.sum()), pairwise_accuracy(s, secs, g),
                               sampled_top_k_recall(s, secs, g, 1, pool, seed=seed),
                               sampled_top_k_recall(s, secs, g, 5, pool, seed=seed), transfer, alone, measured,
                               theirs))
    return out


def _retimed(path: str, groups, schedules: list[str]) -> np.ndarray:
    """The median `path` holds for each (task, schedule), NaN where it holds none."""
    with Records(path, create=False) as truth:
        median = {(r.task, r.schedule): r.median for r in truth.records(ok_only=True)}
    return np.array([median.get((g, s), np.nan) for g, s in zip(groups, schedules)], float)


def report(quality: list[TaskQuality], pool: int = 64, out=print) -> float:
    """Print a table; returns the pairwise accuracy over all tasks (mean of the tasks')."""
    out(f"{'kernel':<16} {'task':<10} {'records':>7} {'pairwise':>8} {f'top1/{pool}':>8} "
        f"{f'top5/{pool}':>8} {'transfer':>8} {'pretrained':>10}")
    for q in quality:
        out(f"{q.kernel[:16]:<16} {q.task[:10]:<10} {q.records:>7} {q.pairwise:>8.3f} {q.top1:>8.2f} "
            f"{q.top5:>8.2f} {q.transfer:>8.3f} {q.pretrained:>10.3f}")
    if not quality:
        out("no task has enough correct records to evaluate")
        return float("nan")
    def mean(attr):
        values = [getattr(q, attr) for q in quality]
        return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
    out(f"{'mean':<16} {'':<10} {sum(q.records for q in quality):>7} {mean('pairwise'):>8.3f} "
        f"{mean('top1'):>8.2f} {mean('top5'):>8.2f} {mean('transfer'):>8.3f} {mean('pretrained'):>10.3f}")
    measured = np.array([q.measured for q in quality])
    if not np.all(np.isnan(measured)):
        pairwise, top5 = np.nanmean(measured, axis=0)
        out(f"the records' own times ranked against the same truth: pairwise {pairwise:.3f}, top5/{pool} {top5:.2f} "
            f"(how far one measurement agrees with it)")
    theirs = np.array([q.metaschedule for q in quality])
    if not np.all(np.isnan(theirs)):
        pairwise, top5 = np.nanmean(theirs, axis=0)
        out(f"MetaSchedule's cost model (PerStoreFeature, XGBModel), same folds: pairwise {pairwise:.3f}, "
            f"top5/{pool} {top5:.2f}; Nestor's: {mean('pairwise'):.3f}, {mean('top5'):.2f}")
    out(f"cost model pairwise accuracy on held-out records: {mean('pairwise'):.3f}")
    return mean("pairwise")
