"""A Relax pass that puts Nestor's tuned kernels in place of the PrimFuncs they were tuned for,
and Nestor's default schedule in place of those no tuning reached.

MetaSchedule's own MetaScheduleApplyDatabase replays a record's trace on the workload, and a
Nestor record has none (ms_database.py): this pass asks the database for the module instead
(`query_ir_module`, which NestorDatabase answers from Nestor's records), and takes it only where
it is Nestor's; a weight stage of its kernel then runs once, here, where the weight is a constant
(ms_constants.py). The new PrimFunc keeps the original's attributes and is marked scheduled, so
MetaSchedule's pass (and DLight) leave it alone after; the functions it does not replace are left
to them.
"""
from __future__ import annotations

import os

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from .ms_constants import fold_constant_stages
from .ms_database import MARK, NestorKernels, in_place_of, records_path


def apply_nestor(work_dir: str | None = None, database=None) -> tvm.transform.Pass:
    """Where Nestor tuned a PrimFunc of the module for the current target, its kernel. Nestor's
    kernels come from `database` (default: the one in context, as MetaSchedule's pass takes it),
    else from Nestor's records in `work_dir`."""

    @tvm.transform.module_pass(opt_level=0, name="NestorApplyDatabase")
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=True)
        db = database if database is not None else ms.Database.current()
        if target is None:
            return mod
        tuned = work_dir is not None and os.path.exists(records_path(work_dir))  # a reader creates no file
        kernels = None if db is not None else NestorKernels(records_path(work_dir) if tuned else None)
        searched = None if db is not None else _metaschedules_records(work_dir)
        out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
        workloads = {}   # name -> the PrimFunc a Nestor kernel replaced
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                continue
            workload = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
            if kernels is not None:
                found = kernels.best(workload, target)
                if found is None and (searched is None or searched.query_tuning_record(workload, target, gv.name_hint)
                                      is None):
                    found = kernels.default(workload, target)  # neither tuner reached it
            else:
                found = db.query_ir_module(workload, target, gv.name_hint)
                found = found["main"] if found is not None else None
            if found is not None and found.attrs and MARK in found.attrs:
                out[gv] = in_place_of(found, func)
                workloads[gv.name_hint] = func
        return fold_constant_stages(out, set(workloads), workloads, target)
    return run


def _metaschedules_records(work_dir: str | None):
    """MetaSchedule's JSON database in work_dir (the tasks its own search tuned), None if none."""
    if work_dir is None:
        return None
    files = [os.path.join(work_dir, f"database_{kind}.json") for kind in ("workload", "tuning_record")]
    if not all(os.path.exists(f) for f in files):
        return None
    return ms.database.JSONDatabase(*files, allow_missing=False)
