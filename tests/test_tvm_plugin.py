"""Nestor inside TVM (nestor.tvm): MetaSchedule's entry points tune with Nestor's search, and the
kernel TVM compiles is Nestor's (its PrimFunc carries nestor.tvm.MARK) and computes the model.

A few trials each, measured in this process (tests/ms_inprocess.py); the first MetaSchedule
tuning of a process imports TVM's tensor intrinsics (~15 s on a busy 2-core machine)."""
import logging

import numpy as np
import pytest
import tvm
from tvm import relax, te, tirx, topi
from tvm.s_tir import meta_schedule as ms

import nestor.tvm
from nestor.autotune.ms_database import records_path
from nestor.autotune.records import Records
from nestor.codegen import host_target
from nestor.ir.errors import NestorError

from .ms_inprocess import InProcessBuilder, InProcessRunner
from .test_tir_import import _conv_relu_matmul_model

MEASURE = {"builder": InProcessBuilder(), "runner": InProcessRunner()}


def _unnamed_log_handlers_dropped():
    """MetaSchedule configures its logger anew at each tuning from the handlers it has, by name;
    pytest's capture handlers on it have none, and the second tuning of a session fails
    formatting the name None: drop them (called in the test, where pytest has added them)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in [h for h in logger.handlers if h.get_name() is None]:
        logger.removeHandler(handler)


def _nestors(mod: tvm.IRModule) -> dict[str, bool]:
    """Each PrimFunc of the module: is it Nestor's?"""
    return {gv.name_hint: bool(f.attrs and nestor.tvm.MARK in f.attrs)
            for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


@pytest.fixture(scope="module")
def model():
    """The conv + relu + matmul model, its input and ONNX Runtime's output."""
    import onnxruntime as ort
    onnx_model = _conv_relu_matmul_model()
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    want = ort.InferenceSession(onnx_model.SerializeToString()).run(None, {"x": x})[0]
    return onnx_model, x, want


def _relax(onnx_model) -> tvm.IRModule:
    import tvm.relax.frontend.onnx  # noqa: F401 (registers relax.frontend.onnx)
    return relax.frontend.onnx.from_onnx(onnx_model)


def _check_runs(executable, x, want) -> None:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)


def test_tune_tir_with_nestors_strategy_compiles_nestors_kernel(tmp_path):
    m, k, n = 24, 16, 20
    a, b = te.placeholder((m, k), name="A"), te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    workload, work_dir, target = te.create_prim_func([a, b, c]), str(tmp_path), host_target()
    _unnamed_log_handlers_dropped()
    db = ms.tune_tir(workload, target, work_dir, max_trials_global=4, num_trials_per_iter=2,
                     **{**nestor.tvm.tuning(work_dir), **MEASURE})
    with Records(records_path(work_dir)) as records:
        assert records.count() == 4  # MetaSchedule's runner timed them; Nestor's records hold them
    func = ms.tir_integration.compile_tir(db, workload, target).mod["main"]
    assert nestor.tvm.MARK in func.attrs
    exe = tvm.compile(func, target)
    x, y = np.random.rand(m, k).astype("float32"), np.random.rand(k, n).astype("float32")
    out = tvm.runtime.tensor(np.zeros((m, n), "float32"))
    exe["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y), out)
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-5)


def test_tune_relax_then_compile_relax_gives_nestors_kernels(tmp_path, model):
    onnx_model, x, want = model
    work_dir, target = str(tmp_path), host_target()
    _unnamed_log_handlers_dropped()
    mod = relax.get_pipeline("zero")(_relax(onnx_model))  # MetaSchedule finds its tasks after it
    db = ms.relax_integration.tune_relax(mod, {}, target, work_dir, 6, max_trials_per_task=2,
                                         **{**nestor.tvm.tuning(work_dir), **MEASURE})
    with nestor.tvm.installed():
        with target, db:  # the zero pipeline applies the database in context, as compile_relax does
            assert all(_nestors(relax.get_pipeline("zero")(_relax(onnx_model))).values())
        _check_runs(ms.relax_integration.compile_relax(db, mod, target, None), x, want)
    assert relax.transform.MetaScheduleApplyDatabase is nestor.tvm._ms_apply_database  # uninstalled
    assert relax.transform.MetaScheduleTuneIRMod is nestor.tvm._ms_tune_irmod


def test_static_shape_tuning_pipeline_tunes_with_nestor_once_installed(tmp_path, model):
    onnx_model, x, want = model
    target = host_target()
    _unnamed_log_handlers_dropped()
    with nestor.tvm.installed(**MEASURE):
        tuned = relax.get_pipeline("static_shape_tuning", target=target, total_trials=6, max_trials_per_task=2,
                                   work_dir=str(tmp_path))(_relax(onnx_model))
    found = _nestors(tuned)
    assert len(found) >= 3 and all(found.values()), found
    _check_runs(tvm.compile(tuned, target), x, want)


def test_tasks_no_tuning_reached_get_nestors_default_schedule(tmp_path, model):
    """Installed, a pipeline that tunes nothing still compiles Nestor's kernels: each task Nestor
    imports gets its default schedule (TVM would compile the plain loops on a CPU)."""
    onnx_model, x, want = model
    target = host_target()
    with nestor.tvm.installed(**MEASURE):
        untuned = relax.get_pipeline("static_shape_tuning", target=target, total_trials=0,
                                     work_dir=str(tmp_path))(_relax(onnx_model))
    found = _nestors(untuned)
    assert len(found) >= 3 and all(found.values()), found
    assert not (tmp_path / "nestor_records.sqlite").exists()   # nothing tuned, no records file made
    _check_runs(tvm.compile(untuned, target), x, want)


@pytest.mark.parametrize("budget, trials", [(0, 0), (600, 4)])
def test_a_time_budget_ends_nestors_tuning_whatever_trials_are_left(tmp_path, budget, trials):
    """Past the budget no task is given more candidates; within it the trials are the limit."""
    m, k, n = 8, 8, 8
    a, b = te.placeholder((m, k), name="A"), te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    work_dir = str(tmp_path)
    _unnamed_log_handlers_dropped()
    ms.tune_tir(te.create_prim_func([a, b, c]), host_target(), work_dir, max_trials_global=4,
                **{**nestor.tvm.tuning(work_dir, time_budget=budget), **MEASURE})
    with Records(records_path(work_dir)) as records:
        assert records.count() == trials


@pytest.mark.parametrize("budget", [float("nan"), -1.0])
def test_a_bad_time_budget_is_refused_before_any_tuning(budget):
    with pytest.raises(NestorError, match="time budget"):
        nestor.tvm.install(time_budget=budget)
    assert relax.transform.MetaScheduleTuneIRMod is nestor.tvm._ms_tune_irmod  # nothing installed


def test_a_task_nestor_cannot_import_is_searched_by_metaschedule(tmp_path):
    x = te.placeholder((2, 5), name="X")
    workload, work_dir, target = te.create_prim_func([x, topi.argmax(x, axis=1)]), str(tmp_path), host_target()
    _unnamed_log_handlers_dropped()
    with pytest.warns(UserWarning, match="MetaSchedule searches it"):
        db = ms.tune_tir(workload, target, work_dir, max_trials_global=2, num_trials_per_iter=2,
                         **{**nestor.tvm.tuning(work_dir), **MEASURE})
    assert db.get_all_tuning_records()
    with Records(records_path(work_dir)) as records:
        assert records.count() == 0
    sch = ms.tir_integration.compile_tir(db, workload, target)  # MetaSchedule's, if any
    assert sch is None or nestor.tvm.MARK not in (sch.mod["main"].attrs or {})


@pytest.mark.parametrize("name", ["A", "gpu_0/data_0"])   # (ResNet-50's ONNX input: no identifier)
def test_nestors_primfunc_takes_the_workloads_arguments_even_with_the_output_first(name):
    from nestor.autotune.ms_database import lowered
    from nestor.codegen.tir_import import kernel_from_primfunc
    a, b = te.placeholder((3, 4), name=name), te.placeholder((4,), name="B")
    c = te.compute((3, 4), lambda i, j: a[i, j] * 2.0 - b[j], name="C")
    workload = te.create_prim_func([c, a, b])  # the importer's kernel: A, B -> C
    exe = tvm.compile(lowered(kernel_from_primfunc(workload), workload), host_target())
    x, y = np.random.rand(3, 4).astype("float32"), np.random.rand(4).astype("float32")
    out = tvm.runtime.tensor(np.zeros((3, 4), "float32"))
    exe["main"](out, tvm.runtime.tensor(x), tvm.runtime.tensor(y))
    np.testing.assert_allclose(out.numpy(), x * 2 - y, rtol=1e-6)


def test_a_weight_stage_of_nestors_kernel_runs_once_at_compile_time(model):
    """A Nestor kernel that packs its weight, called with a Relax constant: compiling runs the
    pack on the constant, and the kernel left takes the packed weight (same results)."""
    from nestor.autotune.ms_constants import fold_constant_stages
    from nestor.autotune.ms_database import imported, in_place_of, lowered
    from nestor.passes import Schedule, canonical_loops
    onnx_model, x, want = model
    target = host_target()
    with target:
        mod = relax.get_pipeline("zero")(_relax(onnx_model))
    name = next(gv.name_hint for gv in mod.functions if "conv" in gv.name_hint)
    workload = mod[name]
    kernel = canonical_loops(imported(workload))
    weight = kernel.inputs[1]
    pack = Schedule.from_json(f'[{{"pass": "pack", "params": {{"buffer": "{weight.name}", "dim": 0, "factor": 2, '
                              f'"order": [0, 2, 3, 4, 1]}}}}]')
    mod[mod.get_global_var(name)] = in_place_of(lowered(pack.apply(kernel), workload, pack), workload)
    folded = fold_constant_stages(mod, {name}, {name: workload}, target)
    assert name not in [gv.name_hint for gv in folded.functions]
    packed = folded[f"{name}_weights_folded"]
    assert [tuple(int(d) for d in p.shape) for p in packed.params][1] == (2, 3, 3, 3, 2)   # no weight, its packed form
    _check_runs(tvm.compile(folded, target), x, want)
