"""Nestor's tuner against TVM's MetaSchedule, kernel by kernel, at an equal trial budget.

For each kernel of autotune.kernel_suite: tune with Nestor (records in a temporary database)
and with MetaSchedule (`tune_tir` on the same computation as a tensor expression), check both
outputs against ONNX Runtime's, then time Nestor's best, MetaSchedule's best, ONNX Runtime (2
threads) and, for matmuls, NumPy, interleaved in this process. The last line reads
`geomean speedup vs MetaSchedule: <X>`.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np

from .bench import interleaved_medians, ort_session
from .ir.errors import NestorError


def _tune_nestor(kernel, trials: int, records_path: str):
    """The best schedule found in `trials` measurements (None: none measured), and the seconds taken."""
    from .autotune.budget import Budget
    from .autotune.tune import tune_kernels
    start = time.perf_counter()
    (task,) = tune_kernels({"k": kernel}, Budget(trials), records_path=records_path, show_progress=True)
    return task.schedule, time.perf_counter() - start


def _tune_metaschedule(prim_func, trials: int, workdir: str, target):
    import tvm
    from tvm.s_tir import meta_schedule as ms
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    mod = tvm.IRModule({"main": prim_func})
    start = time.perf_counter()
    database = ms.tune_tir(mod, target, os.path.join(workdir, "ms"), max_trials_global=trials,
                           num_trials_per_iter=min(64, trials))
    seconds = time.perf_counter() - start
    sch = ms.tir_integration.compile_tir(database, mod, target)
    if sch is None:
        raise NestorError("MetaSchedule found no valid schedule")
    return tvm.compile(sch.mod, target=target)["main"], seconds


def bench_kernels(names: list[str] | None = None, trials: int = 256, repeat: int = 20,
                  records: str | None = None, out=print) -> float:
    """`records`: keep Nestor's measurements in this database (it resumes from what is there, so
    use a new file for a fair count of trials); by default they go to a temporary one."""
    import tvm
    from .api import import_onnx
    from .autotune.kernel_suite import SUITE
    from .autotune.search import kernel_flops
    from .codegen import build, host_target
    names = names or list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise NestorError(f"unknown kernel(s) {unknown}; choose from {', '.join(SUITE)}")
    target, dev = host_target(), tvm.cpu()
    rows, speedups = [], []
    for name in names:
        suite = SUITE[name]
        model = suite.onnx_model()
        (node,) = [n for n in import_onnx(model).nodes if n.kernel is not None]
        xs = suite.random_inputs()
        feeds = {n: x for (n, _), x in zip(suite.inputs, xs)}
        session = ort_session(model)
        want = session.run(None, feeds)[0]
        with tempfile.TemporaryDirectory() as workdir:
            out(f"-- {name}: tuning with Nestor ({trials} trials)")
            schedule, nestor_s = _tune_nestor(node.kernel, trials,
                                              records or os.path.join(workdir, "nestor.sqlite"))
            out(f"-- {name}: tuning with MetaSchedule ({trials} trials)")
            ms_fn, ms_s = _tune_metaschedule(suite.prim_func(), trials, workdir, target)
        best = schedule.apply(node.kernel) if schedule else node.kernel
        nestor_fn = build([best], target).get(best.name)
        args = [tvm.runtime.tensor(x, dev) for x in xs]
        y_nestor = tvm.runtime.tensor(np.zeros(suite.output, np.float32), dev)
        y_ms = tvm.runtime.tensor(np.zeros(suite.output, np.float32), dev)
        nestor_fn(*args, y_nestor)
        ms_fn(*args, y_ms)
        scale = float(np.max(np.abs(want))) or 1.0
        for who, y in (("Nestor", y_nestor), ("MetaSchedule", y_ms)):
            err = float(np.max(np.abs(y.numpy() - want))) / scale
            if err > 1e-3:
                raise NestorError(f"{name}: {who}'s output differs from ONNX Runtime's (max rel err {err:.1e})")
        fns = [lambda: nestor_fn(*args, y_nestor), lambda: ms_fn(*args, y_ms), lambda: session.run(None, feeds)]
        if suite.numpy_matmul:
            fns.append(lambda: np.matmul(*xs))
        times = interleaved_medians(fns, repeat)
        t_nestor, t_ms, t_ort = times[:3]
        t_np = times[3] if suite.numpy_matmul else None
        gflops = kernel_flops(node.kernel) / t_nestor / 1e9
        speedups.append(t_ms / t_nestor)
        rows.append((name, t_nestor, t_ms, speedups[-1], nestor_s, ms_s, t_ort, t_np, gflops))
        _print_table(rows[-1:], out)
    _print_table(rows, out)
    geomean = float(np.exp(np.mean(np.log(speedups))))
    out(f"geomean speedup vs MetaSchedule: {geomean:.2f}")
    return geomean


def _print_table(rows, out) -> None:
    out(f"{'kernel':<14} {'nestor ms':>10} {'ms ms':>9} {'speedup':>7} {'tune s':>7} {'ms tune s':>9} "
        f"{'ort ms':>8} {'% of ort':>8} {'numpy ms':>8} {'GFLOP/s':>8}")
    for name, tn, tm, sp, ns, mss, to, tnp, gf in rows:
        numpy_col = f"{tnp * 1e3:>8.3f}" if tnp else f"{'-':>8}"
        out(f"{name:<14} {tn * 1e3:>10.3f} {tm * 1e3:>9.3f} {sp:>7.2f} {ns:>7.0f} {mss:>9.0f} "
            f"{to * 1e3:>8.3f} {to / tn * 100:>7.0f}% {numpy_col} {gf:>8.1f}")
