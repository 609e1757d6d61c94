"""Nestor as MetaSchedule's search strategy: MetaSchedule's task scheduler, builder and runner
measure what Nestor's search proposes.

Each task's workload is imported as a Nestor kernel (codegen.tir_import); a batch is what
search.Tuner proposes (its sketch, mutations and cost model), each candidate handed over as a
lowered PrimFunc taking the workload's arguments; the runner's times come back to the tuner,
which learns from them and stores them in Nestor's records, from which NestorDatabase answers.
A workload Nestor cannot import is searched by MetaSchedule's own evolutionary search.
"""
from __future__ import annotations

import statistics
import time
import warnings

from tvm.ir.utils import derived_object
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms

from ..codegen import machine_params
from ..codegen.tir_import import TIRImportError
from ..costmodel import CostModel
from .measure import MeasureResult
from ..codegen.constant_stages import hoist_constant_stages
from .ms_constants import constant_inputs
from .ms_database import imported, lowered, records_path, workload_order
from .records import Records
from .search import Tuner
from .tune import target_key


@derived_object
class NestorSearch(ms.search_strategy.PySearchStrategy):
    """The strategy of each task (MetaSchedule clones it per task: the clones share the cost
    model and the records file). `work_dir` (or `records`) locates Nestor's records; pair it
    with NestorDatabase of the same work_dir, which compiles what they hold. Past `deadline` (a
    time.monotonic() value) no task is given more candidates. `constant_args`: task name -> the
    positions of its workload's arguments that are constants at every call
    (ms_constants.constant_arguments); its candidates are timed without the stages compiling folds."""

    def __init__(self, work_dir: str | None = None, records: str | None = None, model: CostModel | None = None,
                 seed: int = 0, deadline: float | None = None, constant_args: dict | None = None):
        super().__init__()
        if records is None and work_dir is None:
            raise ValueError("NestorSearch needs a work_dir or a records path")
        self.records_path = records or records_path(work_dir)
        self.work_dir, self.seed, self.deadline = work_dir, seed, deadline
        self.constant_args = constant_args or {}   # task name -> its workload's arguments that are constants
        self.constants: set[int] = set()   # of the kernel's inputs: its workload's constant arguments
        self.model = model
        self.tuner: Tuner | None = None
        self.fallback = None     # MetaSchedule's search, for a workload Nestor cannot import
        self.left = 0
        self.pending: list = []  # the batch being measured: Tuner.propose's tuples

    def _initialize_with_tune_context(self, context) -> None:
        workload = context.mod["main"]
        try:
            kernel = imported(workload, context.task_name)
            workload_order(kernel, workload)  # its params can be passed as the workload's
        except TIRImportError as err:
            warnings.warn(f"Nestor cannot import task {context.task_name} ({err}); MetaSchedule searches it")
            self.fallback = ms.search_strategy.EvolutionarySearch()
            self.fallback._initialize_with_tune_context(context)
            return
        machine = machine_params(context.target)
        if self.model is None:
            self.model = CostModel(seed=self.seed, machine=machine)
        self.workload = workload
        self.constants = constant_inputs(kernel, workload, self.constant_args.get(context.task_name, ()))
        self.tuner = Tuner(kernel, None, Records(self.records_path), self.model, target_key(context.target), machine,
                           seed=self.seed)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        if self.fallback is not None:
            return self.fallback.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        self.left, self.per_iter = int(max_trials), int(num_trials_per_iter)

    def post_tuning(self) -> None:
        if self.fallback is not None:
            self.fallback.post_tuning()

    def generate_measure_candidates(self):
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return None
        if self.fallback is not None:
            return self.fallback.generate_measure_candidates()
        if self.left <= 0:
            return None
        self.tuner.batch = min(self.per_iter, self.left)
        self.pending = self.tuner.propose()[:self.tuner.batch]
        if not self.pending:
            return None  # the space is exhausted
        self.left -= len(self.pending)
        return [self._candidate(schedule, kernel) for _, schedule, kernel in self.pending]

    def _candidate(self, schedule, kernel) -> ms.MeasureCandidate:
        """The candidate as MetaSchedule measures it: without the stages that compiling folds
        (ms_constants.py), which take the folded constants as arguments."""
        main, stages, _ = hoist_constant_stages(kernel, self.constants)
        func = lowered(main, None, schedule) if stages else lowered(kernel, self.workload, schedule)
        return ms.MeasureCandidate(Schedule(func), ms.arg_info.ArgInfo.from_prim_func(func))

    def notify_runner_results(self, measure_candidates, results) -> None:
        if self.fallback is not None:
            return self.fallback.notify_runner_results(measure_candidates, results)
        self.tuner.learn(self.pending, [runner_result(r) for r in results])
        self.pending = []

    def clone(self):
        return NestorSearch(self.work_dir, self.records_path, self.model, self.seed, self.deadline,
                            self.constant_args)


def runner_result(r) -> MeasureResult:
    """A MetaSchedule RunnerResult as Nestor's measurement."""
    if r.error_msg or not r.run_secs:
        return MeasureResult(None, error=str(r.error_msg or "no times"))
    secs = tuple(float(s.value if hasattr(s, "value") else s) for s in r.run_secs)
    return MeasureResult(statistics.median(secs), secs)
