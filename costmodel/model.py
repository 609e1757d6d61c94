"""The cost model: XGBoost with a pairwise ranking objective over kernel features.

Only the order of candidates of one task matters to the search (which few of hundreds to
measure), and absolute times differ by orders of magnitude between tasks, so the model ranks:
samples are grouped by task and XGBoost learns from pairs inside a group. The label is
log(fastest time of the group / time), so higher means faster, and so are the predictions.

Online training keeps every measured sample and refits from scratch on each update (a few
hundred trees' worth of work on at most a few thousand rows: well under a second), which is
simpler and steadier than stacking trees on old ones. `save` writes the samples with the
boosters, so a reloaded model keeps learning where it stopped, and `pretrain` seeds it from
past records before a new task is tuned (TenSet's and MetaSchedule's pretrained models): they
train a base whose scores the model's own trees start from (see CostModel). Beside the shared
model, each task with a few samples of its own gets a small model of its own, whose scores are
added with weight TASK_WEIGHT when candidates of that task are ranked: the shared trees split on
what sets kernels apart, a task's own trees on what orders its schedules. A file saved with
other features (FORMAT, or the feature names) is refused with a CostModelError: its samples
cannot be read as today's features.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Iterable

import numpy as np
import xgboost as xgb

from ..ir import Kernel, NestorError
from ..ir.errors import DAMAGED_ARRAY_FILE
from ..ir.files import atomic_write
from ..ir.machine import GENERIC_CPU, MachineParams
from .features import FEATURE_NAMES, kernel_features

ROUNDS = 150           # trees per fit
MAX_SAMPLES = 20_000   # most recent samples kept for training
FORMAT = 4             # 2: ShapeFeatures; 3: pretraining samples and base booster saved apart; 4: CacheFeatures
PARAMS = {
    "objective": "rank:pairwise",
    "lambdarank_pair_method": "mean",     # random pairs across the whole group, not only the top
    "lambdarank_num_pair_per_sample": 32,
    "eta": 0.1,
    "max_depth": 4,
    "min_child_weight": 1,
    "subsample": 0.8,
    "colsample_bytree": 0.5,
    "tree_method": "hist",
}
TASK_WEIGHT = 0.25     # of a task's own model's scores beside the shared model's
TASK_MIN_SAMPLES = 4   # own samples a task needs before it gets a model of its own
TASK_ROUNDS = 50
TASK_PARAMS = {**PARAMS, "max_depth": 2, "subsample": 1.0}  # tens of samples: shallow, all of them
_FEATURES_ID = hashlib.sha1("\n".join(FEATURE_NAMES).encode()).hexdigest()[:16]


def features(kernels: Iterable[Kernel], machine: MachineParams = GENERIC_CPU) -> np.ndarray:
    rows = [kernel_features(k, machine) for k in kernels]
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(FEATURE_NAMES))


class CostModelError(NestorError):
    """A saved cost model this Nestor cannot use (another format or other features)."""


class CostModel:
    """Ranks candidate kernels of a task: `predict` gives higher scores to faster ones.

    Two sets of samples: the pretraining ones (other tunings' records, `pretrain`) and the
    model's own (`update`). The pretraining samples train a base booster once; each refit on
    the own samples starts from the base's scores (XGBoost's base margin) and adds its trees to
    them, so a refit costs what the own samples cost however many were pretrained on (trained
    together, 6,000 samples took 3 s a refit: a second or more of each round of a tuning).
    On a ResNet-50 tune's records both ways ranked within a point of each other."""

    def __init__(self, seed: int = 0, rounds: int = ROUNDS, nthread: int | None = None,
                 machine: MachineParams = GENERIC_CPU):
        self.seed, self.rounds = seed, rounds
        self.machine = machine  # the target the kernels run on (features count its cache lines)
        self.nthread = nthread or 1  # small data; threads only contend on a shared machine
        self._own = _no_samples()
        self._pre = _no_samples()
        self._booster: xgb.Booster | None = None  # on the own samples, from the base's scores
        self._base: xgb.Booster | None = None     # on the pretraining samples
        self._tasks: dict[str, xgb.Booster] = {}  # a task's own model, on its own samples only

    @property
    def trained(self) -> bool:
        return self._booster is not None or self._base is not None

    @property
    def samples(self) -> int:
        """Samples learnt from, pretraining ones included."""
        return len(self._own[1]) + len(self._pre[1])

    def update(self, kernels: list[Kernel], seconds: list[float], groups: list[str]) -> None:
        """Add measured samples (failed measurements are not passed) and refit."""
        self.update_features(features(kernels, self.machine), seconds, groups)

    def update_features(self, x: np.ndarray, seconds, groups) -> None:
        """`update` with the feature rows already computed (`features(kernels)`)."""
        self._own = _added(self._own, x, seconds, groups)
        self._booster = self._train(self._own, self._base) or self._booster
        self._train_tasks(np.unique(np.asarray(groups, dtype=str)))

    def pretrain(self, samples: Iterable[tuple[Kernel, float, str]]) -> None:
        """Learn from past records: (kernel, seconds, group) triples; bad times are skipped."""
        rows, secs, groups = [], [], []
        for kernel, sec, group in samples:
            if sec is not None and math.isfinite(sec) and sec > 0:
                rows.append(kernel_features(kernel, self.machine))
                secs.append(sec)
                groups.append(group)
        if rows:
            self.pretrain_features(np.array(rows, np.float32), secs, groups)

    def pretrain_features(self, x: np.ndarray, seconds, groups) -> int:
        """`pretrain` with feature rows (from `features`, another model's `training_data`, or
        autotune.model_quality.record_samples). Groups the model already learns from are
        skipped (a model pretrained, saved and pretrained again from the same records would
        count them twice). Refits the base, then the own samples on it. Returns the samples
        added."""
        groups = np.asarray(groups, dtype=str)
        new = ~np.isin(groups, np.concatenate([self._own[2], self._pre[2]]))
        before = len(self._pre[1])
        self._pre = _added(self._pre, np.asarray(x, np.float32)[new], np.asarray(seconds, np.float64)[new],
                           groups[new])
        if len(self._pre[1]) == before:
            return 0
        self._base = self._train(self._pre, None) or self._base
        self._booster = self._train(self._own, self._base)
        return len(self._pre[1]) - before

    def training_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The samples the model learns from, pretraining ones first: feature rows, seconds, groups."""
        return tuple(np.concatenate([a, b]) for a, b in zip(self._pre, self._own))

    def predict(self, kernels: list[Kernel], group: str | None = None) -> np.ndarray:
        """A score per kernel, higher = predicted faster (comparable within one task only);
        `group`: the task they are candidates of, whose own model then adds its scores.
        Zeros before any training."""
        if not self.trained:
            return np.zeros(len(kernels))
        return self.predict_features(features(kernels, self.machine), group)

    def predict_features(self, x: np.ndarray, groups=None) -> np.ndarray:
        """`predict` with feature rows; `groups`: one task for all rows, or one per row."""
        if not self.trained:
            return np.zeros(len(x))
        if self._booster is None:  # pretrained only
            return self._base.predict(self._matrix(x, None)).astype(np.float64)
        scores = self._booster.predict(self._matrix(x, self._base)).astype(np.float64)
        if groups is not None:
            groups = np.broadcast_to(np.asarray(groups, dtype=str), (len(x),))
            for group in set(groups) & self._tasks.keys():
                mine = groups == group
                scores[mine] += TASK_WEIGHT * self._tasks[group].predict(self._matrix(x[mine], None))
        return scores

    # training

    def _matrix(self, x: np.ndarray, base: xgb.Booster | None, **kw) -> xgb.DMatrix:
        data = xgb.DMatrix(x, nthread=self.nthread, **kw)
        if base is not None:
            data.set_base_margin(base.predict(data, output_margin=True))  # (no margin set yet: base's own)
        return data

    def _train_tasks(self, groups) -> None:
        """Refit the own models of these tasks (those with TASK_MIN_SAMPLES own samples). The
        dict is replaced, not changed: a copy of this model (model_quality's folds) keeps its own."""
        tasks = dict(self._tasks)
        for group in groups:
            mine = self._own[2] == group
            if mine.sum() >= TASK_MIN_SAMPLES:
                booster = self._train(tuple(column[mine] for column in self._own), None, TASK_PARAMS, TASK_ROUNDS)
                if booster is not None:
                    tasks[group] = booster
        self._tasks = tasks

    def _train(self, samples, base: xgb.Booster | None, params: dict = PARAMS,
               rounds: int | None = None) -> xgb.Booster | None:
        """A booster ranking `samples` within their groups, from `base`'s scores; None when
        no group has two different times (nothing to learn)."""
        x, seconds, groups = samples
        order = np.argsort(groups, kind="stable")  # XGBoost wants each group contiguous
        groups, seconds = groups[order], seconds[order]
        names, starts, sizes = np.unique(groups, return_index=True, return_counts=True)
        labels = np.empty_like(seconds)
        for start, size in zip(starts, sizes):
            part = seconds[start:start + size]
            labels[start:start + size] = np.log(part.min() / part)
        if not any(np.ptp(seconds[s:s + n]) > 0 for s, n in zip(starts, sizes)):
            return None
        data = self._matrix(x[order], base, label=labels)
        data.set_group(sizes)
        params = {**params, "seed": self.seed, "nthread": self.nthread}
        return xgb.train(params, data, num_boost_round=rounds or self.rounds)

    # persistence

    def save(self, path: str) -> None:
        """Samples and boosters in one .npz file, written atomically."""
        meta = json.dumps({"format": FORMAT, "features": _FEATURES_ID, "seed": self.seed,
                           "rounds": self.rounds})
        buf = io.BytesIO()
        np.savez_compressed(buf, x=self._own[0], seconds=self._own[1], groups=self._own[2],
                            pre_x=self._pre[0], pre_seconds=self._pre[1], pre_groups=self._pre[2],
                            booster=_raw(self._booster), base=_raw(self._base), meta=np.array(meta))
        with atomic_write(path) as f:
            f.write(buf.getvalue())

    @classmethod
    def load(cls, path: str, machine: MachineParams = GENERIC_CPU) -> CostModel:
        """A saved model, to rank kernels for `machine`. One saved with other features (an
        older Nestor) cannot predict these: CostModelError, which says so."""
        try:
            with np.load(path, allow_pickle=False) as f:
                # every member read now: a damaged one fails here, not in a later refit
                saved = {name: f[name] for name in _SAVED}
            meta = json.loads(str(saved["meta"]))
        except KeyError as err:
            raise CostModelError(f"{path}: not a Nestor cost model file (no {err.args[0].split()[0]})") from None
        except DAMAGED_ARRAY_FILE as err:
            raise CostModelError(f"{path}: not a Nestor cost model file ({err})") from None
        if not isinstance(meta, dict):
            raise CostModelError(f"{path}: not a Nestor cost model file (its metadata is not an object)")
        if meta.get("format") != FORMAT or meta.get("features") != _FEATURES_ID:
            was = f"format {meta.get('format')}" + (" with other features" if meta.get("format") == FORMAT else "")
            raise CostModelError(
                f"{path}: cost model saved by another Nestor ({was}; this one reads format {FORMAT}): "
                f"its samples are not today's features. Delete it or choose another file; to keep what it "
                f"learned, pretrain from the records it was tuned with (--pretrained RECORDS.sqlite)")
        seed, rounds = meta.get("seed", 0), meta.get("rounds", ROUNDS)
        if not (_is_int(seed) and _is_int(rounds) and rounds > 0):
            raise CostModelError(f"{path}: damaged cost model file (seed {seed!r}, rounds {rounds!r})")
        model = cls(seed=seed, rounds=rounds, machine=machine)
        model._own = _samples(saved, "", path)
        model._pre = _samples(saved, "pre_", path)
        try:
            model._booster, model._base = model._unraw(saved["booster"]), model._unraw(saved["base"])
        except (ValueError, TypeError) as err:  # XGBoostError is a ValueError
            first = (str(err).strip() or type(err).__name__).splitlines()[0]  # XGBoost appends a stack
            raise CostModelError(f"{path}: damaged cost model file (its booster: {first})") from None
        for booster in (model._booster, model._base):
            if booster is not None and booster.num_features() != len(FEATURE_NAMES):
                raise CostModelError(f"{path}: damaged cost model file (a booster of {booster.num_features()} "
                                     f"features, not {len(FEATURE_NAMES)})")
        model._train_tasks(np.unique(model._own[2]))  # small and quick: refit, not saved
        return model

    def _unraw(self, raw: np.ndarray) -> xgb.Booster | None:
        if not len(raw):
            return None
        booster = xgb.Booster(params={"nthread": self.nthread})
        booster.load_model(bytearray(raw.tobytes()))
        return booster


_SAVED = ("x", "seconds", "groups", "pre_x", "pre_seconds", "pre_groups", "booster", "base", "meta")


def _samples(saved: dict, prefix: str, path: str):
    """The (features, seconds, groups) of a loaded file, checked: rows of today's features,
    as many times and groups."""
    x, seconds, groups = (saved[prefix + k] for k in ("x", "seconds", "groups"))
    if not (x.ndim == 2 and x.shape[1] == len(FEATURE_NAMES) and x.dtype.kind == "f"
            and seconds.ndim == groups.ndim == 1 and seconds.dtype.kind == "f" and groups.dtype.kind == "U"
            and len(x) == len(seconds) == len(groups)):
        raise CostModelError(f"{path}: damaged cost model file ({prefix}samples: features {x.shape} {x.dtype}, "
                             f"times {seconds.shape} {seconds.dtype}, groups {groups.shape} {groups.dtype})")
    return x, seconds, groups


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_samples():
    return np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros(0), np.zeros(0, dtype=str)


def _added(samples, x: np.ndarray, seconds, groups):
    """`samples` and the new ones with a usable time, the most recent MAX_SAMPLES."""
    seconds = np.asarray(seconds, dtype=np.float64)
    if not (len(x) == len(seconds) == len(groups)):
        raise ValueError(f"{len(x)} kernels, {len(seconds)} times, {len(groups)} groups")
    keep = np.isfinite(seconds) & (seconds > 0)
    new = (np.asarray(x, np.float32)[keep], seconds[keep], np.asarray(groups, dtype=str)[keep])
    return tuple(np.concatenate([old, add])[-MAX_SAMPLES:] for old, add in zip(samples, new))


def _raw(booster: xgb.Booster | None) -> np.ndarray:
    return np.frombuffer(bytes(booster.save_raw("ubj")), np.uint8) if booster is not None else np.zeros(0, np.uint8)


# quality measures

def pairwise_accuracy(scores, seconds, groups) -> float:
    """The fraction of same-group pairs with different times that the scores order correctly
    (higher score ↔ lower time); a tie in score counts half. NaN when there is no such pair."""
    scores, seconds, groups = np.asarray(scores, float), np.asarray(seconds, float), np.asarray(groups)
    right = total = 0.0
    for g in np.unique(groups):
        s, t = scores[groups == g], seconds[groups == g]
        faster = t[:, None] < t[None, :]           # i faster than j
        ds = s[:, None] - s[None, :]
        right += np.sum(faster & (ds > 0)) + 0.5 * np.sum(faster & (ds == 0))
        total += np.sum(faster)
    return right / total if total else float("nan")


def top_k_recall(scores, seconds, k: int) -> float:
    """For the candidates of one task: 1.0 if a truly fastest one is among the k best-scored,
    else 0.0. Ties in score are broken against it (an untrained model earns nothing)."""
    scores, seconds = np.asarray(scores, float), np.asarray(seconds, float)
    best = np.flatnonzero(seconds == seconds.min())
    ahead = [np.sum(scores >= scores[b]) - 1 for b in best]  # candidates scored at least as high
    return float(min(ahead) < k)


def sampled_top_k_recall(scores, seconds, groups, k: int, pool: int = 64, draws: int = 200,
                         seed: int = 0) -> float:
    """Mean top-k recall over random pools of `pool` candidates drawn inside each group (as a
    search round ranks a pool and measures its best few)."""
    scores, seconds, groups = np.asarray(scores, float), np.asarray(seconds, float), np.asarray(groups)
    rng = np.random.default_rng(seed)
    hits = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        for _ in range(draws if len(idx) > pool else 1):
            pick = rng.choice(idx, size=min(pool, len(idx)), replace=False)
            hits.append(top_k_recall(scores[pick], seconds[pick], k))
    return float(np.mean(hits)) if hits else float("nan")
