"""MetaSchedule's own cost model scored beside Nestor's: its features (PerStoreFeature, read off
each schedule's TIR) and its XGBModel, trained and judged on the same records in the same folds
as autotune.model_quality trains and judges Nestor's model. What the peers' model makes of the
same measurements is the yardstick for Nestor's score on them."""
from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.cost_model.xgb_model import XGBConfig

from ..codegen import as_target, is_gpu
from ..codegen.tir import to_primfunc
from ..ir import Kernel


def metaschedule_scores(kernels: list[Kernel], seconds: np.ndarray, groups: np.ndarray, fold: np.ndarray,
                        targets: list[str], seed: int = 0) -> np.ndarray:
    """Out-of-fold scores (higher: faster) of MetaSchedule's XGBModel for each scheduled kernel:
    for each fold a fresh model learns every other fold of every task (a task one workload, as
    MetaSchedule's tuner groups its model's data) from `seconds`, and scores the held-out fold.
    `targets`: the target key each kernel was measured on."""
    candidates, contexts = [], {}
    for kernel, group, key in zip(kernels, groups, targets):
        target = as_target(key)
        func = to_primfunc(kernel, gpu=is_gpu(target)).with_attr("global_symbol", "main")
        mod = tvm.IRModule({"main": func})
        candidates.append(ms.MeasureCandidate(tvm.s_tir.Schedule(mod), ms.arg_info.ArgInfo.from_prim_func(func)))
        if group not in contexts:
            contexts[group] = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                                             search_strategy="evolutionary", task_name=str(group))
    tasks = list(contexts)
    scores = np.zeros(len(candidates))
    quiet = logging.getLogger("tvm.s_tir.meta_schedule")
    level = quiet.level
    quiet.setLevel(logging.ERROR)   # its XGBModel logs every update
    try:
        for f in np.unique(fold):
            config = XGBConfig(seed=seed)
            model = ms.cost_model.XGBModel(config=config, num_warmup_samples=0, verbose_eval=10**9)
            for t in tasks:
                train = np.flatnonzero((groups == t) & (fold != f))
                model.update(contexts[t], [candidates[i] for i in train],
                             [ms.runner.RunnerResult([float(seconds[i])], None) for i in train])
            for t in tasks:
                held = np.flatnonzero((groups == t) & (fold == f))
                if len(held):
                    scores[held] = model.predict(contexts[t], [candidates[i] for i in held])
    finally:
        quiet.setLevel(level)
    return scores
