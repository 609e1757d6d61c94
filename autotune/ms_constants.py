"""Nestor's weight stages run once, at compile time, in a TVM user's Relax module.

A Nestor schedule may begin by rewriting a weight into a better layout (the `pack` pass). In
Nestor's own compiler that stage runs once on the model's constant (codegen/constant_stages.py);
in a Relax module the kernel is a PrimFunc called with the weight, and the stage would run at
every call (ResNet-50's last 3x3 convolution: 2.45 ms a call with its 9.4 MB weight repacked,
1.13 ms without). So where every call of a Nestor kernel passes a Relax constant to the stage,
the stage is run on it here, the call passes the result instead, and the kernel without the
stage takes it; tuning times the kernel the same way, with the stage left out (ms_strategy).
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax, tirx
from tvm.relax import PyExprMutator, expr_functor

from ..codegen import host_target, machine_params, run_kernel
from ..codegen.constant_stages import ConstantStage, hoist_constant_stages
from ..ir import Kernel
from ..passes import Schedule as NestorSchedule
from ..passes import canonical_loops
from .space import untuned_schedule
from .ms_database import MARK, imported, in_place_of, lowered, workload_order

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def constant_arguments(mod: tvm.IRModule) -> dict[str, frozenset[int]]:
    """PrimFunc name -> the positions of its arguments that are Relax constants at every call."""
    found: dict[str, frozenset[int]] = {}
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _ConstantArguments(found).visit_expr(func)
    return found


@expr_functor.visitor
class _ConstantArguments(relax.PyExprVisitor):
    def __init__(self, found: dict):
        super().__init__()
        self.found = found

    def visit_call_(self, call: relax.Call) -> None:
        super().visit_call_(call)
        if call.op.same_as(_CALL_TIR):
            name = call.args[0].name_hint
            here = frozenset(i for i, a in enumerate(call.args[1].fields) if isinstance(a, tvm.ir.Constant))
            self.found[name] = self.found.get(name, here) & here


def constant_inputs(kernel: Kernel, workload: tirx.PrimFunc, constant_args) -> set[int]:
    """The kernel's input indices of the workload's arguments at positions `constant_args`."""
    order = workload_order(kernel, workload)
    return {order[i] for i in constant_args}


def fold_constant_stages(mod: tvm.IRModule, names: set[str], workloads: dict[str, tirx.PrimFunc], target) -> tvm.IRModule:
    """`mod` with the constant stages of Nestor's PrimFuncs `names` (`workloads`: the
    unscheduled functions they replaced, by name) run here and their calls rewritten."""
    constants = constant_arguments(mod)
    plans = {}
    for name in sorted(names):
        if not constants.get(name):
            continue
        func, workload = mod[name], workloads[name]
        kernel = imported(workload)
        order = workload_order(kernel, workload)
        main, stages, kept = hoist_constant_stages(_scheduled(func, kernel, target),
                                                   {order[i] for i in constants[name]})
        if stages:
            arg_of = {order[j]: j for j in range(len(order))}   # kernel input -> call argument
            plans[name] = _Plan(in_place_of(lowered(main, None, _schedule_of(func)), func, f"{name}_weights_folded"),
                                stages, [arg_of[i] for i in kept], arg_of)
    if not plans:
        return mod
    folder = _Folder(mod, plans)
    for name, plan in plans.items():   # (the builder gives the new GlobalVar its function's type)
        plan.callee = folder.builder_.add_func(plan.func, f"{name}_weights_folded")
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gv, folder.visit_expr(func))
    out = folder.builder_.get()
    return tvm.IRModule({gv: f for gv, f in out.functions_items() if gv.name_hint not in plans}, attrs=out.attrs)


@dataclass
class _Plan:
    func: tirx.PrimFunc           # the kernel without its constant stages
    stages: list[ConstantStage]   # their sources: the kernel's input indices
    kept: list[int]               # the call's arguments the new function still takes, before the folded ones
    arg_of: dict[int, int]        # the kernel's input index -> the call's argument position
    callee: relax.GlobalVar | None = None


def _scheduled(func: tirx.PrimFunc, kernel: Kernel, target) -> Kernel:
    """The Nestor kernel behind `func` (a PrimFunc marked by lowered): the steps in its mark
    applied to `kernel`, its workload imported (no steps: Nestor's default schedule)."""
    schedule = _schedule_of(func)
    if schedule is None:
        return untuned_schedule(kernel, machine_params(target))
    return schedule.apply(canonical_loops(kernel))


def _schedule_of(func: tirx.PrimFunc) -> NestorSchedule | None:
    steps = str(func.attrs[MARK])
    return NestorSchedule.from_json(steps) if steps else None


@expr_functor.mutator
class _Folder(PyExprMutator):
    """Each call of a planned PrimFunc: its constant stages run on the call's constants, the
    new callee called with the arguments it kept and their results."""

    def __init__(self, mod, plans: dict[str, _Plan]):
        super().__init__(mod)
        self.plans = plans

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not call.op.same_as(_CALL_TIR) or call.args[0].name_hint not in self.plans:
            return call
        plan = self.plans[call.args[0].name_hint]
        args = list(call.args[1].fields)
        folded = [relax.const(run_kernel(stage.kernel, [args[plan.arg_of[i]].value.numpy() for i in stage.sources],
                                         host_target())[0]) for stage in plan.stages]
        return relax.Call(call.op, [plan.callee, relax.Tuple([args[j] for j in plan.kept] + folded)],
                          call.attrs, call.ty_args, call.span)
