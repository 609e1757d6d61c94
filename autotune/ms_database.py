"""MetaSchedule's view of Nestor's records: a database whose best schedule of a workload is the
kernel Nestor found for it.

A MetaSchedule tuning record is a trace replayed on the workload; Nestor's candidates reach
MetaSchedule as modules already lowered, so their records hold an empty trace, and replaying it
gives back the unscheduled workload. The kernels themselves live in Nestor's records (keyed by
the imported kernel's structural hash and the target): `query_schedule` and `query_ir_module`
answer from them (compile_tir, and the Relax pass of ms_apply.py), everything else is the
inner MetaSchedule database's.
"""
from __future__ import annotations

import os

import tvm
from tvm import s_tir, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import SBlock, SBlockRealize, Schedule
from tvm.s_tir import meta_schedule as ms

from ..codegen import machine_params, to_primfunc
from ..codegen.tir_import import TIRImportError, identifier, kernel_from_primfunc
from ..ir import canonical, structural_hash
from ..passes import Schedule as NestorSchedule
from ..passes import canonical_loops, inline_copies
from .records import Records
from .space import untuned_schedule
from .tune import target_key

RECORDS_FILE = "nestor_records.sqlite"   # Nestor's records inside a MetaSchedule work_dir
MARK = "nestor.schedule"                 # attribute of a PrimFunc Nestor scheduled: its steps


def imported(workload: tirx.PrimFunc, name: str | None = None):
    """The workload as the Nestor kernel tuned and compiled in its place: imported
    (codegen.tir_import, TIRImportError where it cannot be), the copies TVM's fusion
    materializes inlined (passes.inline_copies)."""
    return inline_copies(kernel_from_primfunc(workload, name))


def records_path(work_dir: str) -> str:
    os.makedirs(work_dir, exist_ok=True)
    return os.path.join(work_dir, RECORDS_FILE)


def lowered(kernel, workload: tirx.PrimFunc | None, schedule: NestorSchedule | None = None) -> tirx.PrimFunc:
    """A scheduled kernel as a PrimFunc that takes the workload's arguments (MetaSchedule's
    runner and Relax's call_tir pass them in the workload's order), or without a workload the
    kernel's own (inputs, then outputs), marked as Nestor's. Its loops sit in a root block, as a
    scheduled TIR function's do: Relax's passes after tuning (RewriteDataflowReshape's pattern
    check) refuse a function without one."""
    func = to_primfunc(kernel)
    params = func.params if workload is None else [func.params[i] for i in workload_order(kernel, workload)]
    func = tirx.PrimFunc(params, SBlockRealize([], True, SBlock([], [], [], "root", func.body)), func.ret_type,
                         func.attrs)
    func = func.with_attr("global_symbol", "main").with_attr(MARK, "" if schedule is None else schedule.to_json())
    return _partitioned(func.with_attr("tirx.is_scheduled", True))


def in_place_of(new: tirx.PrimFunc, old: tirx.PrimFunc, symbol: str | None = None) -> tirx.PrimFunc:
    """`new` (a Nestor PrimFunc) with `old`'s attributes, marked scheduled; its global symbol
    `old`'s, or `symbol` where given, and none where `old` has none."""
    attrs = dict(old.attrs or {})
    if "global_symbol" in attrs and symbol is not None:
        attrs["global_symbol"] = symbol
    func = new if "global_symbol" in attrs else new.without_attr("global_symbol")
    return func.with_attrs({**attrs, MARK: new.attrs[MARK], "tirx.is_scheduled": True})


def workload_order(kernel, workload: tirx.PrimFunc) -> list[int]:
    """Where each of the workload's params is among the kernel's (inputs, then outputs: the
    importer's order), matched by name; the importer keeps the params' names, made identifiers."""
    names = [b.name for b in kernel.params]
    order = [names.index(identifier(p.name)) if identifier(p.name) in names else -1 for p in workload.params]
    want = [(tuple(int(d) for d in p.shape), canonical(str(p.dtype))) for p in workload.params]
    got = [(tuple(kernel.params[i].shape), kernel.params[i].dtype) for i in order if i >= 0]
    if sorted(order) != list(range(len(names))) or want != got:
        raise TIRImportError(f"{kernel.name}: parameters {[b.name for b in kernel.params]} do not match the "
                             f"workload's {[p.name for p in workload.params]}")
    return order


def _partitioned(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The guarded last tile of a non-dividing split peeled off now, as codegen.build has TVM do
    (its loop partitioning of constant loops): MetaSchedule's builder and Relax's build run that
    pass with the default configuration, which leaves the guard in the vector loop and
    scalarizes it (a 127x64x251 matmul tile: 3.3 ms against 0.17 ms)."""
    with tvm.transform.PassContext(config={"s_tir.LoopPartition": {"partition_const_loop": True}}):
        return s_tir.transform.LoopPartition()(tvm.IRModule({"main": func}))["main"]


class NestorKernels:
    """Workload -> the PrimFunc of Nestor's fastest recorded schedule for it (None if none), or of
    Nestor's default schedule (`default`, for a workload nothing was recorded for). `path`: the
    records file (None: no records)."""

    def __init__(self, path: str | None):
        self.records = Records(path) if path is not None else None
        self._found: dict = {}

    def best(self, mod: tvm.IRModule, target) -> tirx.PrimFunc | None:
        func, kernel = _imported(mod)
        if kernel is None or self.records is None:
            return None
        key = (structural_hash(kernel), target_key(target))
        best = self.records.best(*key)
        if best is None:
            return None
        if (key, best.id) not in self._found:
            schedule = NestorSchedule.from_json(best.schedule)
            self._found[(key, best.id)] = _lowered_or_none(schedule.apply(canonical_loops(kernel)), func, schedule)
        return self._found[(key, best.id)]

    def default(self, mod: tvm.IRModule, target) -> tirx.PrimFunc | None:
        """Nestor's untuned default schedule of the workload (marked with an empty schedule), far
        faster than an unscheduled PrimFunc, which TVM compiles as its plain loops on a CPU."""
        func, kernel = _imported(mod)
        if kernel is None:
            return None
        key = (structural_hash(kernel), target_key(target), "default")
        if key not in self._found:
            self._found[key] = _lowered_or_none(untuned_schedule(kernel, machine_params(target)), func)
        return self._found[key]


def _imported(mod: tvm.IRModule):
    """(the workload's PrimFunc, it as a Nestor kernel), the kernel None where Nestor cannot
    import it or it is Nestor's already."""
    func = next(iter(mod.functions.values()))  # a workload holds one function
    if not isinstance(func, tirx.PrimFunc) or (func.attrs and MARK in func.attrs):
        return func, None
    try:
        return func, imported(func)
    except TIRImportError:
        return func, None


def _lowered_or_none(kernel, workload: tirx.PrimFunc, schedule: NestorSchedule | None = None):
    try:
        return lowered(kernel, workload, schedule)
    except TIRImportError:  # params Nestor cannot match to the workload's: TVM's schedule
        return None


@derived_object
class NestorDatabase(ms.database.PyDatabase):
    """`inner` (default: MetaSchedule's JSON database in `work_dir`, else in memory) stores the
    workloads and records MetaSchedule commits; Nestor's records in `work_dir` (or `records`)
    give the schedules compiled."""

    def __init__(self, work_dir: str | None = None, records: str | None = None, inner: ms.Database | None = None,
                 module_equality: str = "structural"):
        super().__init__()
        if records is None and work_dir is None:
            raise ValueError("NestorDatabase needs a work_dir or a records path")
        self.records_path = records or records_path(work_dir)
        if inner is None:
            inner = (ms.database.JSONDatabase(work_dir=work_dir, module_equality=module_equality) if work_dir
                     else ms.database.MemoryDatabase(module_equality=module_equality))
        self.inner = inner
        self.kernels = NestorKernels(self.records_path)

    def has_workload(self, mod):
        return self.inner.has_workload(mod)

    def commit_workload(self, mod):
        return self.inner.commit_workload(mod)

    def commit_tuning_record(self, record):
        self.inner.commit_tuning_record(record)

    def get_top_k(self, workload, top_k):
        return self.inner.get_top_k(workload, top_k)

    def get_all_tuning_records(self):
        return self.inner.get_all_tuning_records()

    def query_tuning_record(self, mod, target, workload_name=None):
        return self.inner.query_tuning_record(mod, target, workload_name)

    def query_schedule(self, mod, target, workload_name=None):
        found = self.query_ir_module(mod, target, workload_name)
        return None if found is None else Schedule(found)

    def query_ir_module(self, mod, target, workload_name=None):
        """Nestor's best kernel; else MetaSchedule's record (a task MetaSchedule searched); else
        Nestor's default schedule (a task no tuning reached)."""
        func = self.kernels.best(mod, target)
        if func is None:
            found = self.inner.query_ir_module(mod, target, workload_name)
            if found is not None:
                return found
            func = self.kernels.default(mod, target)
        return None if func is None else tvm.IRModule({"main": func})

    def __len__(self):
        return len(self.inner)
