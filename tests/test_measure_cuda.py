"""Measurement and tuning for an NVIDIA GPU. Without a GPU: CUDA candidates build in the builder
processes, the reference output is computed on the CPU, the tuning path runs up to the
measurement with the GPU's machine, rules and records key, and a Measurer for CUDA says in one
line that there is no GPU. With one (marked `gpu`): good candidates get times, and wrong,
faulting and hanging ones get errors while the next candidate still measures."""
import os
import re

import numpy as np
import pytest

from nestor.autotune.budget import Budget
from nestor.autotune.measure import FLUSH_GPU, Measurer, MeasureResult, _register_l2_flush, _Worker
from nestor.autotune.records import Records
from nestor.autotune.rules import CUDA_RULES
from nestor.autotune.task_scheduler import TaskScheduler, kernel_tasks
from nestor.autotune.tune import best_kernels, target_key, tune_kernels
from nestor.codegen import as_target, build, gpu_present, host_target, machine_params, run_kernel
from nestor.costmodel import CostModel
from nestor.ir import parse_kernel
from nestor.ir.errors import NestorError
from nestor.passes import canonical_loops, parse_pipeline

from .test_measure import MATMUL, SIG

CUDA = as_target("cuda")
MM = canonical_loops(MATMUL)
# the simplest GPU schedule (autotune/rules/gpu.py BindSpatial): each nest's spatial loops fused,
# split into blocks of 128 threads, bound
GOOD = parse_pipeline("fuse(i0, i1); split(i0_i1, 128); bind(i0_i1_o, blockIdx.x); bind(i0_i1_i, threadIdx.x);"
                      "fuse(i2, i3); split(i2_i3, 128); bind(i2_i3_o, blockIdx.x); bind(i2_i3_i, threadIdx.x)").apply(MM)


def bound(body: str, name: str = "g") -> str:
    """A kernel of MATMUL's signature whose (b, t) loops are bound to blocks and threads."""
    return f"kernel {name}{SIG} {{ for b in 0..64 blockIdx.x {{ for t in 0..64 threadIdx.x {{ {body} }} }} }}"


BAD = {
    "wrong": (bound("C[b, t] = A[b, t] + B[b, t]"), r"wrong result: max abs err \d.* at C\[\d+, \d+\]"),
    # every thread ~7.7 GB past C (the index still int32): an illegal address, which poisons
    # the runner's CUDA context
    "fault": (bound("C[b + 30000000, t] = A[b, t]"), r"run failed: .*"),
    # 1e11 additions a thread
    "hang": (bound("for a in 0..1000000 reduce { for z in 0..100000 reduce { C[b, t] += A[b, t] } }"),
             r"timeout after 5 s"),
}


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((64, 64)).astype("float32") for _ in range(2)]


# ---- without a GPU ----

def test_cuda_candidate_builds_in_a_builder_process_and_the_reference_runs_on_the_cpu(tmp_path):
    w = _Worker("builder", {"target": str(CUDA), "host": str(CUDA.host)}, str(tmp_path / "builder.log"))
    try:
        w.start()
        w.ready()
        w.submit(([GOOD], str(tmp_path / "good.so")))
        good = w.reply()
        assert "error" not in good and good["seconds"] > 0
        assert os.path.getsize(tmp_path / "good.so") > 0
        # the same program unscheduled binds no GPU threads: no CUDA kernel can be built of it
        w.submit(([MM], str(tmp_path / "mm.so")))
        assert re.match(r"build failed: \w+", w.reply()["error"])
        # the reference, for any target, runs on the host CPU
        np.savez(tmp_path / "inputs.npz", *inputs())
        w.submit({"reference": MM, "inputs": str(tmp_path / "inputs.npz"), "save": str(tmp_path / "ref.npz")})
        assert "error" not in w.reply()
        with np.load(tmp_path / "ref.npz") as f:
            a, b = inputs()
            np.testing.assert_allclose(f["arr_0"], a @ b, rtol=1e-4, atol=1e-4)
    finally:
        w.stop()


def test_the_l2_flush_registers_and_runs_as_a_timing_preprocessor():
    # on the CPU here (its device has no L2 size: the default is used); the runner does this on CUDA
    import tvm
    dev = tvm.cpu()
    assert _register_l2_flush(dev) == FLUSH_GPU
    module = build([MM], host_target()).module
    a, b = (tvm.runtime.tensor(x, dev) for x in inputs())
    c = tvm.runtime.tensor(np.zeros((64, 64), "float32"), dev)
    timer = module.time_evaluator("mm", dev, number=1, repeat=2, f_preproc=FLUSH_GPU)
    assert len(timer(a, b, c).results) == 2


@pytest.mark.skipif(gpu_present(), reason="a GPU is present")
def test_measuring_for_cuda_without_a_gpu_is_one_clear_error(tmp_path):
    with pytest.raises(NestorError) as err:
        Measurer(MM, target="cuda")
    assert str(err.value) == "measure: no NVIDIA GPU here to time CUDA kernels on"
    with pytest.raises(NestorError, match="^measure: no NVIDIA GPU here"):
        tune_kernels({"mm": MATMUL}, Budget(4), records_path=str(tmp_path / "r.db"), target="cuda",
                     show_progress=False)


class BuildingMeasurer:
    """Builds every candidate for CUDA (raising if it cannot: a CPU schedule among them fails
    the test) and checks it on the CPU as the same program without its bindings; the times are
    made up."""

    def __init__(self):
        self.built = []

    def switch(self, kernel, constants=()):
        self.truth = run_kernel(kernel, inputs(), host_target())

    def measure(self, kernels):
        results = []
        for k in kernels:
            build([k], CUDA)
            self.built.append(k)
            for got, want in zip(run_kernel(k, inputs(), host_target()), self.truth):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            t = 1e-5 * (1 + len(self.built) % 3)
            results.append(MeasureResult(t, (t,)))
        return results


def test_tuning_for_cuda_up_to_the_measurement(tmp_path):
    machine = machine_params(CUDA)
    key = target_key(CUDA)
    assert '"kind":"cuda"' in key and "host" not in key  # a GPU's records do not depend on the host CPU
    measurer = BuildingMeasurer()
    tasks = kernel_tasks({"mm": MATMUL})
    with Records(tmp_path / "r.db") as records:
        TaskScheduler(tasks, measurer, records, CostModel(seed=0, machine=machine), key, machine,
                      batch=4).tune(Budget(8))
        (task,) = tasks
        assert task.tuner.sketch.rules and set(task.tuner.sketch.rules) <= {r.name for r in CUDA_RULES}
        stored = records.records(task.hash, key)
    assert task.trials == len(measurer.built) == len(stored) == 8 - task.errors and task.errors == 0
    best = best_kernels(str(tmp_path / "r.db"), "cuda")(MM)
    assert best is not None and best in measurer.built


# ---- on a GPU ----

@pytest.fixture(scope="module")
def gpu_measurer():
    with Measurer(MM, target="cuda", repeats=3, timeout=5.0) as m:
        yield m


def assert_timed(r: MeasureResult, repeats=3):
    assert r.ok, r.error
    assert len(r.repeats) == repeats and all(0 < t < 1 for t in r.repeats)


@pytest.mark.gpu
def test_good_gpu_candidates_get_times(gpu_measurer):
    threads_256 = parse_pipeline("fuse(i0, i1); split(i0_i1, 256); bind(i0_i1_o, blockIdx.x); "
                                 "bind(i0_i1_i, threadIdx.x); fuse(i2, i3); split(i2_i3, 256); "
                                 "bind(i2_i3_o, blockIdx.x); bind(i2_i3_i, threadIdx.x)").apply(MM)
    for r in gpu_measurer.measure([GOOD, threads_256]):
        assert_timed(r)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", BAD)
def test_bad_gpu_candidate_is_an_error_and_the_next_still_measures(gpu_measurer, kind):
    text, error = BAD[kind]
    bad, good = gpu_measurer.measure([parse_kernel(text), GOOD])
    assert not bad.ok and bad.median is None
    assert re.fullmatch(error, bad.error), bad.error
    assert_timed(good)


@pytest.mark.gpu
def test_a_short_cuda_tuning_run_records_a_correct_best_kernel(tmp_path):
    records = str(tmp_path / "r.db")
    (task,) = tune_kernels({"mm": MATMUL}, Budget(6), records_path=records, target="cuda", show_progress=False)
    assert task.best is not None and task.trials > 0
    best = best_kernels(records, "cuda")(MM)
    a, b = inputs()
    (got,) = run_kernel(best, [a, b], "cuda")
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)
