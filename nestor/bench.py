"""Side-by-side benchmarks against ONNX Runtime (same process, interleaved runs, medians)."""
from __future__ import annotations

import os
import time

import numpy as np

from .ir.errors import NestorError
from .zoo import LIGHT_MODELS, encoder_block, light_model

MODELS = LIGHT_MODELS + ("bert_layer",)


def example_model(name: str):
    return encoder_block() if name == "bert_layer" else light_model(name)


def ort_session(model, threads: int = 2):
    try:
        import onnxruntime as ort
    except ImportError:
        raise NestorError("this benchmark needs onnxruntime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def interleaved_medians(fns: list, repeat: int, warmup: int = 2, block: int = 3,
                        pause: float = 0.2, wake: float = 0.02) -> list[float]:
    """Median seconds of each callable, timed in alternation so machine noise hits all alike.

    Runtimes' worker threads (TVM's pool, ONNX Runtime's, OpenBLAS's) spin for a while after a
    call; a competitor timed right after another would share the cores with those spinning
    threads. So each turn pauses (0.2 s: enough here for both to match their times measured
    alone), wakes its runtime and the cores with untimed calls for `wake` seconds (at least
    one call: a sub-millisecond kernel timed right after the pause ran 2-2.5x slower than in
    steady state here, which hid most of the difference between fast competitors), then times
    `block` calls; turns alternate until every callable has `repeat` timings.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    while len(times[0]) < repeat:
        for t, fn in zip(times, fns):
            time.sleep(pause)
            woken = time.perf_counter()
            fn()
            while time.perf_counter() - woken < wake:
                fn()
            for _ in range(min(block, repeat - len(t))):
                start = time.perf_counter()
                fn()
                t.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def bench_models(names: list[str] | None = None, repeat: int = 20, schedule: str = "default",
                 time_budget: float | None = None, records: str | None = None, out=print) -> float:
    """With `time_budget` (seconds per model), each model is first tuned (task scheduler) into
    `records` (default: a temporary database per run). Each model is compiled from the best
    schedules in `records` when given (without a budget: re-time what an earlier run tuned)."""
    import tempfile
    from .api import compile as nestor_compile, import_onnx
    names = names or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise NestorError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if records and not time_budget and not os.path.exists(records):
        raise NestorError(f"{records}: no such records file (without --time-budget, bench models "
                          f"compiles from the records of an earlier run)")
    workdir = tempfile.TemporaryDirectory() if time_budget and not records else None
    records = records or (f"{workdir.name}/records.sqlite" if workdir else None)
    out(f"{'model':<14} {'tune s':>7} {'compile s':>9} {'nestor ms':>10} {'ort ms':>9} {'ratio':>7} {'max rel err':>11}")
    ratios = []
    for name in names:
        model = example_model(name)
        tune_s = 0.0
        if time_budget:
            from .autotune.budget import Budget
            from .autotune.tune import tune_graph
            start = time.perf_counter()
            tune_graph(import_onnx(model), Budget(seconds=time_budget), records_path=records)
            tune_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = nestor_compile(model, schedule=schedule, records=records)
        compile_s = time.perf_counter() - start
        inputs = compiled.random_inputs()
        session = ort_session(model)
        want = session.run(None, inputs)
        got = compiled.run(inputs)
        err = max(float(np.max(np.abs(g - w)) / (np.max(np.abs(w)) + 1e-30)) for g, w in zip(got, want))
        t_nestor, t_ort = interleaved_medians(
            [lambda: compiled.run(inputs), lambda: session.run(None, inputs)], repeat)
        ratios.append(t_nestor / t_ort)
        out(f"{name:<14} {tune_s:>7.0f} {compile_s:>9.1f} {t_nestor * 1e3:>10.2f} {t_ort * 1e3:>9.2f} "
            f"{ratios[-1]:>7.2f} {err:>11.1e}")
    geomean = float(np.exp(np.mean(np.log(ratios))))
    out(f"geomean latency ratio vs ONNX Runtime: {geomean:.2f}")
    return geomean
