"""MetaSchedule's builder and runner on Nestor's measurement workers (autotune/ms_measure.py):
a tuning through them records times and compiles a correct kernel; a candidate that fails to
build, crashes or hangs gets its error, and the candidates beside and after it are measured."""
import numpy as np
import pytest
import tvm
from tvm import relax, te
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms

import nestor.tvm
from nestor.autotune.measure import REPEATS
from nestor.autotune.ms_measure import Workers, close_measurement, measurement
from nestor.codegen import host_target
from nestor.ir.errors import NestorError

from .test_tvm_plugin import _unnamed_log_handlers_dropped


def _matmul(m=16, k=12, n=20):
    a, b = te.placeholder((m, k), name="A"), te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return te.create_prim_func([a, b, c])


def _check_matmul(func, target, m=16, k=12, n=20):
    x, y = np.random.rand(m, k).astype("float32"), np.random.rand(k, n).astype("float32")
    out = tvm.runtime.tensor(np.zeros((m, n), "float32"))
    tvm.compile(func, target)["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y), out)
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-5)


@pytest.mark.parametrize("search", [
    "nestor",
    # MetaSchedule's own search imports its tensor intrinsics (a minute on a busy 2-core machine)
    pytest.param("metaschedule", marks=pytest.mark.slow)])
def test_tune_tir_measures_with_nestors_builder_and_runner(tmp_path, search):
    workload, work_dir, target = _matmul(), str(tmp_path), host_target()
    _unnamed_log_handlers_dropped()
    if search == "nestor":
        args = nestor.tvm.tuning(work_dir)          # Nestor's builder and runner by default
    else:
        args = measurement()                          # MetaSchedule's own search and database
    try:
        db = ms.tune_tir(workload, target, work_dir, max_trials_global=4, num_trials_per_iter=2, **args)
    finally:
        close_measurement(args)
    assert args["builder"].workers.target is None   # closed: its processes stopped
    records = db.get_all_tuning_records()
    assert len(records) == 4
    for record in records:
        secs = [float(s) for s in record.run_secs]
        assert len(secs) == REPEATS and all(0 < s < 1 for s in secs)
    _check_matmul(ms.tir_integration.compile_tir(db, workload, target).mod["main"], target)


def _fails_to_build():
    a = te.placeholder((8,), name="A")
    sch = Schedule(te.create_prim_func([a, te.compute((8,), lambda i: a[i] * 2.0, name="C")]))
    (i,) = sch.get_loops(sch.get_sblock("C"))
    sch.bind(i, "threadIdx.x")  # a GPU thread on the CPU
    return sch.mod


def _crashes():
    a = te.placeholder((8,), name="A")
    return tvm.IRModule({"main": te.create_prim_func([a, te.compute((8,), lambda i: a[i * 200_000_000], name="C")])})


def _hangs():
    return tvm.IRModule({"main": tvm.script.from_source("""
@T.prim_func
def main(A: T.Buffer((8,), "float32"), C: T.Buffer((8,), "float32")):
    while A[0] == A[0]:  # the inputs are never NaN
        C[0] = C[0] + A[0]
""")})


def _measured(builder, runner, mods, target):
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in mods])
    inputs = [ms.runner.RunnerInput(b.artifact_path, "llvm", ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
              for b, mod in zip(built, mods) if b.error_msg is None]
    results = iter(f.result() for f in runner.run(inputs))
    return [(b.error_msg, None) if b.error_msg else (None, next(results)) for b in built]


def test_a_candidate_that_fails_to_build_crashes_or_hangs_fails_alone():
    target, good = host_target(), tvm.IRModule({"main": _matmul()})
    args = measurement(timeout=3.0)
    try:
        bad_build, ok, crash, hang, ok_after = _measured(
            args["builder"], args["runner"], [_fails_to_build(), good, _crashes(), _hangs(), good], target)
        assert bad_build[0].startswith("build failed: ")
        assert "crashed (signal" in crash[1].error_msg
        assert hang[1].error_msg == "timeout after 3 s"
        for build_error, result in (ok, ok_after):
            assert build_error is None and result.error_msg is None and len(result.run_secs) == REPEATS
        # the next batch goes to the replaced runner
        ((build_error, result),) = _measured(args["builder"], args["runner"], [good], target)
        assert result.error_msg is None and all(float(s) > 0 for s in result.run_secs)
    finally:
        close_measurement(args)


def test_an_unknown_measure_is_refused(tmp_path):
    with pytest.raises(NestorError, match="measure must be one of nestor, tvm, not 'remote'"):
        nestor.tvm.install(measure="remote")
    assert relax.transform.MetaScheduleTuneIRMod is nestor.tvm._ms_tune_irmod  # nothing installed
    with pytest.raises(NestorError, match="measure must be one of nestor, tvm, not 'remote'"):
        nestor.tvm.tuning(str(tmp_path), measure="remote")
