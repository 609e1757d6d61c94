"""Nestor's cost model ranking MetaSchedule's own candidates (its evolutionary search, its
design spaces and mutators): `ms.tune_tir(..., cost_model=NestorCostModel())`.

A candidate is a schedule of the workload (its trace applied, postprocessors included); its
module is imported as a Nestor kernel (codegen.tir_import: split and fused loops, cache
stages, unroll pragmas) and featurized as Nestor featurizes its own kernels, and Nestor's
XGBoost ranking model learns from MetaSchedule's runner times, grouped by workload.

MetaSchedule reads a score as a predicted normalized throughput: it clamps scores below 0,
samples parents in proportion to them and keeps the best across the rounds of one evolution.
So the model's ranking margins are turned into exp(a * (margin - best measured margin)),
with `a` fitted so that margin differences read as log time ratios on the measured samples:
about the best measured time / the candidate's, the same on every call. Before any training
the scores are random, as MetaSchedule's XGBModel's are; a candidate Nestor cannot featurize
scores as the task's median measured candidate (0.5 before training), neither chosen nor
shunned, and a batch of which it can featurize none scores at random.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..codegen import machine_params
from ..codegen.tir_import import kernel_from_primfunc
from ..costmodel import CostModel, kernel_features
from ..ir import NestorError
from .model_quality import pretraining_samples
from .ms_strategy import runner_result

NEUTRAL = 0.5            # a score before training: the mean of the random ones
_MAX_LOG = 20.0          # scores are capped at e**20 (a task's first margins may sit far above another's)
_CACHE_LIMIT = 100_000   # feature rows kept by module hash (a tuning proposes many duplicates)


@derived_object
class NestorCostModel(ms.cost_model.PyCostModel):
    """One model for all the tasks of a tuning (MetaSchedule's task scheduler shares it), each
    task a ranking group. `model`: a Nestor CostModel to start from; `path`: load one saved by
    `save`; `pretrained`: records databases of Nestor's tunings (or saved Nestor cost models)
    to pretrain on, as `nestor tune --pretrained` does: then even the first round is ranked."""

    def __init__(self, model: CostModel | None = None, path: str | None = None, seed: int = 0,
                 pretrained: str | Sequence[str] | None = None):
        super().__init__()
        self.model = CostModel.load(path) if path else model or CostModel(seed=seed)
        if pretrained:
            self.model.pretrain_features(*pretraining_samples(pretrained))
        self.rng = np.random.default_rng(seed)
        self.rows: dict[int, np.ndarray | None] = {}  # module hash -> feature row (None: cannot featurize)
        self.failed: set[str] = set()                 # tasks warned about
        self._calibrate()

    # MetaSchedule's interface

    def load(self, path: str) -> None:
        machine = self.model.machine
        self.model = CostModel.load(path, machine)
        self._calibrate()

    def save(self, path: str) -> None:
        self.model.save(path)

    def update(self, context, candidates, results) -> None:
        x, ok = self.features(context, candidates)
        secs = np.array([runner_result(r).fastest or np.nan for r in results])  # Nestor's tuner learns the same
        keep = ok & np.isfinite(secs)  # a failed build or run teaches nothing about speed
        if keep.any():
            self.model.update_features(x[keep], secs[keep], [_group(context)] * int(keep.sum()))
            self._calibrate()

    def predict(self, context, candidates) -> np.ndarray:
        if not candidates:
            return np.zeros(0)
        if not self.model.trained:
            return self.rng.uniform(0, 1, len(candidates))
        x, ok = self.features(context, candidates)
        if not ok.any():  # a task Nestor cannot featurize at all: searched as if untrained
            return self.rng.uniform(0, 1, len(candidates))
        group = _group(context)
        best, neutral = self.best.get(group, self.best_any), self.neutral.get(group, NEUTRAL)
        scores = np.full(len(candidates), neutral)
        # the task's own model too, as Nestor's tuner ranks a task's candidates
        scores[ok] = np.exp(np.minimum(self.slope * (self.model.predict_features(x[ok], group) - best), _MAX_LOG))
        return scores

    # features

    def features(self, context, candidates) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows of the candidates (zeros where it cannot featurize) and which it could."""
        self.model.machine = machine_params(context.target)
        rows = [self._row(c.sch.mod, context) for c in candidates]
        ok = np.array([r is not None for r in rows], dtype=bool)
        width = next((len(r) for r in rows if r is not None), 0)
        x = np.zeros((len(rows), width), np.float32)
        for i, r in enumerate(rows):
            if r is not None:
                x[i] = r
        return x, ok

    def _row(self, mod: tvm.IRModule, context) -> np.ndarray | None:
        key = tvm_ffi.structural_hash(mod)
        if key not in self.rows:
            if len(self.rows) >= _CACHE_LIMIT:
                self.rows.clear()
            self.rows[key] = self._featurized(mod, context)
        return self.rows[key]

    def _featurized(self, mod: tvm.IRModule, context) -> np.ndarray | None:
        try:
            kernel = kernel_from_primfunc(mod["main"], str(context.task_name or "main"))
            return np.asarray(kernel_features(kernel, self.model.machine), np.float32)
        except (NestorError, ValueError, KeyError, TypeError, AttributeError) as err:
            task = str(context.task_name)
            if task not in self.failed:
                self.failed.add(task)
                warnings.warn(f"Nestor's cost model cannot featurize candidates of task {task} ({err}); "
                              f"they score neutral")
            return None

    # scores

    def _calibrate(self) -> None:
        """The slope and offsets turning margins into predicted throughput ratios: per group, the
        best measured sample's margin (`best`) and the median sample's score (`neutral`)."""
        self.slope, self.best, self.best_any, self.neutral = 1.0, {}, 0.0, {}
        if not self.model.trained:
            return
        x, secs, groups = self.model.training_data()
        margins = self.model.predict_features(x, groups)
        labels = np.log(secs)
        dm, dl = [], []
        for g in np.unique(groups):
            m, t = margins[groups == g], labels[groups == g]
            dm.append(m - m.mean())
            dl.append(t.mean() - t)  # faster: higher
            self.best[str(g)] = float(m[np.argmin(t)])
        dm, dl = np.concatenate(dm), np.concatenate(dl)
        fit = float(dm @ dl) / float(dm @ dm) if float(dm @ dm) > 0 else 0.0
        self.slope = fit if fit > 0 else 1.0  # a model that ranks against its data: margins as they are
        self.best_any = max(self.best.values())
        for g in np.unique(groups):
            m = margins[groups == g]
            self.neutral[str(g)] = float(np.exp(self.slope * (np.median(m) - self.best[str(g)])))


def _group(context) -> str:
    """A task's ranking group: its workload."""
    return f"ms-{tvm_ffi.structural_hash(context.mod):x}"
