"""Nestor inside TVM: MetaSchedule's tuning flows with Nestor's search, TVM compiling the result.

    import nestor.tvm
    nestor.tvm.install()   # or: with nestor.tvm.installed(): ...
    mod = relax.get_pipeline("static_shape_tuning", target=target, total_trials=64)(mod)

`install` makes MetaSchedule's Relax tuning (relax.transform.MetaScheduleTuneIRMod, which the
static_shape_tuning pipeline builds, and the global `tvm.s_tir.meta_schedule.tune_relax` the C++
pass calls) search with Nestor, and
puts Nestor's kernels in place wherever MetaSchedule's records are applied (the pipeline's
MetaScheduleApplyDatabase, `compile_relax`, the zero pipeline under a database). Without
installing, pass `**nestor.tvm.tuning(work_dir)` to `ms.tune_tir` / `tune_relax`: its database
gives Nestor's kernel to `compile_tir`; `compile_relax` needs `install` (or the pass `apply`).
To keep MetaSchedule's own search and rank its candidates with Nestor's cost model instead,
pass `cost_model=nestor.tvm.cost_model()` to `ms.tune_tir` / `tune_relax`, or
`install(search="metaschedule")` for the pipelines. Either way candidates are built and timed by
Nestor's measurement workers (`measurement()`: persistent processes, caches flushed, a crashing
candidate failing alone), or with `measure="tvm"` by MetaSchedule's LocalBuilder and LocalRunner.

Why a pass and not a trace: a MetaSchedule record is a trace of schedule primitives replayed on
the workload; Nestor's schedules are its own passes, handed to MetaSchedule as lowered modules
whose trace is empty, so replaying their records gives the unscheduled workload back. The pass
takes the kernels from Nestor's records, keyed by the imported kernel, whatever the trace.
"""
from __future__ import annotations

import contextlib
import time

import tvm
import tvm_ffi
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.relax_integration import _tune_relax as _ms_tune_relax  # what the global was

from .autotune.measure import BUILD_TIMEOUT
from .autotune.ms_apply import apply_nestor
from .autotune.ms_constants import constant_arguments
from .autotune.ms_cost_model import NestorCostModel
from .autotune.ms_database import MARK, NestorDatabase
from .autotune.ms_measure import close_measurement, measurement
from .autotune.ms_strategy import NestorSearch
from .ir.errors import NestorError

__all__ = ["MARK", "NestorCostModel", "NestorDatabase", "NestorSearch", "apply", "close_measurement", "cost_model",
           "install", "installed", "measurement", "tuning", "uninstall"]

_TUNE_RELAX = "tvm.s_tir.meta_schedule.tune_relax"
_ms_apply_database = relax.transform.MetaScheduleApplyDatabase
_ms_tune_irmod = relax.transform.MetaScheduleTuneIRMod
_options: dict | None = None   # tune_relax arguments while installed; None: not installed
_SEARCHES = ("nestor", "metaschedule")   # install's choices: whose search proposes the candidates
_MEASURES = ("nestor", "tvm")            # whose builder and runner measure them
TIMED_BATCH = 16               # candidates per batch under a time budget (MetaSchedule's default: 64)


def tuning(work_dir: str, seed: int = 0, time_budget: float | None = None, measure: str = "nestor",
           constant_args: dict | None = None) -> dict:
    """The arguments that make `ms.tune_tir` / `tune_relax` tune with Nestor: its strategy, its
    database (Nestor's records in work_dir) and its builder and runner (`measure="tvm"`:
    MetaSchedule's LocalBuilder and LocalRunner). MetaSchedule's design spaces stay: Nestor
    ignores them, and a task it cannot import is searched in them by MetaSchedule's own search
    (with MetaSchedule's random cost model: its XGBModel would be retrained on every batch).
    `time_budget` (seconds from now) ends the tuning however many trials are left; it also makes
    the batches small, so that MetaSchedule's first round, one batch per task, reaches every task
    early in the budget. The builder's and runner's processes stop with the tuning's last
    reference to them, or with `close_measurement(args)`. `constant_args` (the Relax tuning's
    own, from its module): task name -> which of its arguments are constants, whose weight
    stages compiling folds and measuring leaves out."""
    deadline = _deadline(time_budget)
    # MetaSchedule's cost model ranks nothing of Nestor's search (only a task Nestor cannot import,
    # searched by MetaSchedule's): its XGBModel, retrained after every batch (10 s and more on a
    # busy 2-core machine), would hold up the tuning for nothing.
    args = {"strategy": NestorSearch(work_dir, seed=seed, deadline=deadline, constant_args=constant_args),
            "database": NestorDatabase(work_dir), "cost_model": "random", **_measurement(measure, deadline)}
    if time_budget is not None:
        args["num_trials_per_iter"] = TIMED_BATCH
    return args


def _measurement(measure: str, deadline: float | None = None) -> dict:
    """The builder and runner arguments of `measure`, whose builds and runs stop at `deadline`."""
    _check_choice("measure", measure, _MEASURES)
    if measure == "tvm":  # LocalBuilder's default timeout is shorter than its first import of TVM's intrinsics
        return {"builder": ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT), "runner": ms.runner.LocalRunner()}
    return measurement(deadline=deadline)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise NestorError(f"nestor.tvm: {name} must be one of {', '.join(choices)}, not {value!r}")


def _deadline(time_budget: float | None) -> float | None:
    if time_budget is None:
        return None
    if not time_budget >= 0:  # NaN too
        raise NestorError(f"nestor.tvm: the time budget must be a number of seconds >= 0, not {time_budget}")
    return time.monotonic() + time_budget


def cost_model(path: str | None = None, seed: int = 0, pretrained=None) -> NestorCostModel:
    """Nestor's features and XGBoost ranking model as MetaSchedule's cost model, for its own
    evolutionary search: `ms.tune_tir(..., cost_model=nestor.tvm.cost_model())`. `path`: start
    from a model saved by its `save` (MetaSchedule's CostModel.save); `pretrained`: Nestor's
    records databases (or saved cost models) to pretrain on, one path or several."""
    return NestorCostModel(path=path, seed=seed, pretrained=pretrained)


def apply(work_dir: str | None = None, database=None) -> tvm.transform.Pass:
    """The Relax pass putting Nestor's tuned kernels in place (from `database`, default the one
    in context, else from Nestor's records in `work_dir`)."""
    return apply_nestor(work_dir, database)


def install(time_budget: float | None = None, search: str = "nestor", measure: str = "nestor", **options) -> None:
    """From now on MetaSchedule's Relax tuning searches with Nestor (`options`: more arguments
    of ms.relax_integration.tune_relax, e.g. builder, runner, seed) and Nestor's kernels are
    compiled wherever MetaSchedule's records are applied. With `time_budget` (seconds), each
    tuning (one per pipeline run) stops after that long, whatever its trials. With
    `search="metaschedule"`, MetaSchedule's own evolutionary search and records stay and only
    its cost model is Nestor's (`cost_model()`, or the `cost_model` option). Candidates are
    measured by Nestor's builder and runner (ms_measure), or with `measure="tvm"` by
    MetaSchedule's LocalBuilder and LocalRunner; a builder or runner option replaces either.
    Undone by `uninstall`."""
    global _options
    _deadline(time_budget)  # a bad budget fails here, not in the middle of a pipeline
    _check_choice("search", search, _SEARCHES)
    _check_choice("measure", measure, _MEASURES)
    if search == "metaschedule" and time_budget is not None:
        raise NestorError("nestor.tvm: a time budget bounds Nestor's search only (search='nestor')")
    _options = {**options, "time_budget": time_budget, "search": search, "measure": measure}
    relax.transform.MetaScheduleTuneIRMod = _tune_irmod
    relax.transform.MetaScheduleApplyDatabase = _apply_database


def uninstall() -> None:
    """MetaSchedule's own tuning and database application again."""
    global _options
    _options = None
    relax.transform.MetaScheduleTuneIRMod = _ms_tune_irmod
    relax.transform.MetaScheduleApplyDatabase = _ms_apply_database


@contextlib.contextmanager
def installed(time_budget: float | None = None, search: str = "nestor", measure: str = "nestor", **options):
    """`install` for the duration of a with block."""
    install(time_budget, search, measure, **options)
    try:
        yield
    finally:
        uninstall()


def _tune_relax(mod, params, target, work_dir, max_trials_global, max_trials_per_task=None, op_names=None):
    """The global MetaScheduleTuneIRMod calls: Nestor's search while installed, else MetaSchedule's."""
    if _options is None:
        return _ms_tune_relax(mod, params, target, work_dir, max_trials_global, max_trials_per_task, op_names)
    options = dict(_options)
    seed, time_budget, measure = options.get("seed") or 0, options.pop("time_budget"), options.pop("measure")
    if options.pop("search") == "metaschedule":
        nestor_args = {"cost_model": options.pop("cost_model", None) or cost_model(seed=seed),
                       **_measurement(measure)}
    else:
        nestor_args = tuning(work_dir, seed, time_budget, measure, constant_arguments(mod))
    try:
        ms.relax_integration.tune_relax(
            mod, params, target, work_dir, int(max_trials_global),
            None if max_trials_per_task is None else int(max_trials_per_task), op_names,
            **{**nestor_args, **options})
    finally:
        close_measurement(nestor_args)
    return mod  # MetaScheduleTuneIRMod passes its input on: the kernels go in at apply


def _tune_irmod(params, work_dir, max_trials_global, max_trials_per_task=None, op_names=None):
    """MetaScheduleTuneIRMod as the pipelines build it (looked up at each call, unlike the global)."""

    @tvm.transform.module_pass(opt_level=0, name="NestorTuneIRMod")
    def run(mod, _ctx):
        target = tvm.target.Target.current(allow_none=False)
        return _tune_relax(mod, params, target, work_dir, max_trials_global, max_trials_per_task, op_names)
    return run


def _apply_database(work_dir=None, enable_warning=False):
    """MetaScheduleApplyDatabase, Nestor's kernels put in place first."""
    return tvm.transform.Sequential([apply_nestor(work_dir), _ms_apply_database(work_dir, enable_warning)],
                                    name="NestorThenMetaScheduleApplyDatabase")


# Registered at import, once, for callers of the C++ MetaScheduleTuneIRMod pass (the pipelines'
# Python attribute is replaced while installed): it looks the global up at its first call and
# keeps what it found for the life of the process (a later registration goes unseen), so
# install and uninstall switch what this one function does instead.
tvm_ffi.register_global_func(_TUNE_RELAX, _tune_relax, override=True)
