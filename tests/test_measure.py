"""Measurement: good candidates get times; wrong, crashing, hanging and unbuildable ones get errors,
and the candidate after each still measures."""
import os
import re
import statistics
import time

import numpy as np
import pytest

from nestor.autotune import measure
from nestor.autotune.rules.tiling import MultiLevelTiling
from nestor.autotune.measure import MIN_REPEAT, SINGLE_RUN, Measurer, MeasureResult, _mismatch, runs_per_repeat
from nestor.ir import parse_kernel
from nestor.ir.errors import NestorError
from nestor.passes import parse_pipeline

SIG = "(A: f32[64, 64], B: f32[64, 64]) -> (C: f32[64, 64])"
MATMUL = parse_kernel(f"""
kernel mm{SIG} {{
  for i in 0..64 {{ for j in 0..64 {{ C[i, j] = 0.0 }} }}
  for i in 0..64 {{ for j in 0..64 {{ for k in 0..64 reduce {{ C[i, j] += A[i, k] * B[k, j] }} }} }}
}}""")
GOOD = parse_pipeline("split(i3, 16); reorder(i2, i3_o, r0, i3_i); vectorize(i3_i)").apply(MATMUL)
BAD = {
    # same signature, another computation
    "wrong": (f"kernel w{SIG} {{ for i in 0..64 {{ for j in 0..64 {{ C[i, j] = A[i, j] + B[i, j] }} }} }}",
              r"wrong result: max abs err \d.* at C\[\d+, \d+\]"),
    # stores ~1.6 GB past C: unmapped memory, the runner dies of SIGSEGV
    "crash": (f"kernel c{SIG} {{ for i in 0..64 {{ for j in 0..64 {{ C[i * 100000, j] = A[i, j] }} }} }}",
              r"crashed \(signal 11, SIGSEGV\)"),
    # 4e13 iterations
    "hang": (f"kernel h{SIG} {{ for a in 0..1000000 {{ for b in 0..10000000 {{ for i in 0..4 {{"
             f" C[i, 0] += A[i, 0] }} }} }} }}", r"timeout after 2 s"),
    # TVM rejects an index constant beyond int32
    "unbuildable": (f"kernel u{SIG} {{ for i in 0..64 {{ for j in 0..64 {{ C[i * 100000000, j] = A[i, j] }} }} }}",
                    r"build failed: \w+: .*int32"),
}


@pytest.fixture(scope="module")
def measurer():
    with Measurer(MATMUL, repeats=3, timeout=2.0) as m:
        yield m


def assert_timed(r: MeasureResult, repeats=3):
    assert r.ok and r.error is None, r.error
    assert len(r.repeats) == repeats and all(t > 0 for t in r.repeats)
    assert r.median == statistics.median(r.repeats)
    assert 0 < r.build_seconds < 60


def test_good_candidates_get_times(measurer):
    results = measurer.measure([GOOD, MATMUL])
    for r in results:
        assert_timed(r)
    # the vectorized schedule beats the naive nest: the times mean something (min: robust to
    # preemption on a shared machine)
    assert min(results[0].repeats) < min(results[1].repeats)


@pytest.mark.parametrize("kind", BAD)
def test_bad_candidate_is_an_error_and_the_next_still_measures(measurer, kind):
    text, error = BAD[kind]
    bad, good = measurer.measure([parse_kernel(text), GOOD])
    assert not bad.ok and bad.median is None and bad.repeats == ()
    assert re.fullmatch(error, bad.error), bad.error
    assert_timed(good)


def test_mixed_batch_keeps_order(measurer):
    kernels = [GOOD, parse_kernel(BAD["crash"][0]), parse_kernel(BAD["wrong"][0]), GOOD,
               parse_kernel(BAD["unbuildable"][0]), GOOD]
    results = measurer.measure(kernels)
    assert [r.ok for r in results] == [True, False, False, True, False, True]
    assert [r.error.split(" ")[0] for r in results if not r.ok] == ["crashed", "wrong", "build"]


def test_other_signature_is_an_error(measurer):
    (r,) = measurer.measure([parse_kernel(
        "kernel s(A: f32[64, 64]) -> (C: f32[64, 64]) { for i in 0..64 { for j in 0..64 { C[i, j] = A[i, j] } } }")])
    assert r.error == "parameters differ from the reference kernel's"


def test_unwritten_output_is_wrong(measurer):
    # writes only half of C: the rest must not pass with what an earlier candidate left there
    half = parse_pipeline("split(i3, 32)").apply(MATMUL)
    text = f"""kernel half{SIG} {{
      for i in 0..32 {{ for j in 0..64 {{ C[i, j] = 0.0 }} }}
      for i in 0..32 {{ for j in 0..64 {{ for k in 0..64 reduce {{ C[i, j] += A[i, k] * B[k, j] }} }} }}
    }}"""
    r_good, r_half = measurer.measure([half, parse_kernel(text)])
    assert r_good.ok
    assert r_half.error.startswith("wrong result: max abs err inf at C[32, ")


def test_reference_that_fails_raises():
    with pytest.raises(NestorError, match="reference kernel u fails: build failed"):
        Measurer(parse_kernel(BAD["unbuildable"][0]), build_workers=1)


def test_close_stops_workers():
    m = Measurer(MATMUL, build_workers=1)
    procs = [w.proc for w in m._builders + m._runners]
    directory = m._dir
    m.close()
    assert all(p.poll() is not None for p in procs)
    assert not os.path.exists(directory)
    m.close()  # twice is fine


def test_mismatch_tolerance():
    rng = np.random.default_rng(0)
    want = rng.standard_normal((8, 8)).astype("float32")
    # rounding noise of a reordered sum, even on elements near zero, passes
    noisy = want + np.float32(1e-6) * rng.standard_normal((8, 8)).astype("float32")
    noisy[0, 0], want[0, 0] = 3e-6, 0.0
    assert _mismatch([noisy], [want], ["Y"], 1e-4, 1e-5) is None
    wrong = want.copy()
    wrong[2, 5] += 3.0
    assert _mismatch([wrong], [want], ["Y"], 1e-4, 1e-5) == "wrong result: max abs err 3 at Y[2, 5]"
    nan = want.copy()
    nan[1, 1] = np.nan
    assert "inf at Y[1, 1]" in _mismatch([nan], [want], ["Y"], 1e-4, 1e-5)
    assert _mismatch([nan], [nan], ["Y"], 1e-4, 1e-5) is None  # NaN where the reference has NaN
    ints = np.arange(6).reshape(2, 3)
    assert _mismatch([ints + (ints == 4)], [ints], ["I"], 1e-4, 1e-5) == "wrong result: max abs err 1 at I[1, 1]"


def test_switch_moves_the_workers_to_another_kernel_and_back():
    add = parse_kernel("kernel add(X: f32[32], Y: f32[32]) -> (Z: f32[32]) { for i in 0..32 { Z[i] = X[i] + Y[i] } }")
    sub = parse_kernel("kernel sub(X: f32[32], Y: f32[32]) -> (Z: f32[32]) { for i in 0..32 { Z[i] = X[i] - Y[i] } }")
    with Measurer(MATMUL, repeats=2, timeout=5.0) as m:
        m.switch(add)
        good, wrong, other = m.measure([add, sub, GOOD])
        assert good.ok and re.match(r"wrong result", wrong.error)  # checked against add's output
        assert other.error == "parameters differ from the reference kernel's"
        m.switch(MATMUL)  # back: its reference is kept, not recomputed
        good, wrong = m.measure([GOOD, parse_kernel(BAD["wrong"][0])])
        assert good.ok and re.match(r"wrong result", wrong.error)


# B's stage reads only B (a weight, when B is a model constant) and is slow: 64×64×50000 max ops
SLOW_STAGE = parse_kernel(f"""
kernel s{SIG} {{
  alloc T: f32[64, 64] global {{
    for a in 0..64 {{ for b in 0..64 {{ T[a, b] = -inf; for z in 0..50000 reduce {{ T[a, b] max= B[a, b] }} }} }}
    for i in 0..64 {{ for j in 0..64 {{ C[i, j] = 0.0; for k in 0..64 reduce {{ C[i, j] += A[i, k] * T[k, j] }} }} }}
  }}
}}""")


def test_stages_of_constant_inputs_run_once_outside_the_timing():
    """As in the compiled model, where a weight's packing runs at compile time."""
    with Measurer(MATMUL, repeats=3, timeout=20.0) as m:
        (with_stage,) = m.measure([SLOW_STAGE])
        m.switch(MATMUL, constants=(1,))  # B is a constant of the model
        (hoisted,) = m.measure([SLOW_STAGE])
        m.switch(MATMUL, constants=(0,))  # A is: nothing to hoist (the stage reads B)
        (not_hoisted,) = m.measure([SLOW_STAGE])
    for r in (with_stage, hoisted, not_hoisted):
        assert_timed(r)  # and checked correct against the reference
    # the stage (~200 M max operations, which LLVM vectorizes) costs ~20-50x the matmul here
    assert hoisted.median * 5 < min(with_stage.median, not_hoisted.median), (hoisted, with_stage)


def test_a_kernel_of_a_fifth_of_a_millisecond_is_timed_one_run_a_repeat():
    # every timed run must find its weights flushed, as in a model; short kernels batch runs
    # so that a repeat outlasts the timer's resolution
    assert runs_per_repeat(SINGLE_RUN) == 1 and runs_per_repeat(0.7e-3) == 1
    half = SINGLE_RUN / 2
    assert 1 < runs_per_repeat(half) and abs(runs_per_repeat(half) * half - MIN_REPEAT) <= half
    assert 1000 <= runs_per_repeat(1e-6) <= 1001


class LocalRule(MultiLevelTiling):
    name = "local tiling"


def test_a_pool_realized_in_the_builders_is_the_pool_realized_here(measurer):
    import random
    from nestor.autotune.realize import realize_pool
    from nestor.autotune.space import Candidate, Sketch
    from nestor.ir.machine import AVX2
    from nestor.passes import canonical_loops
    sketch = Sketch.of(canonical_loops(MATMUL), AVX2)
    rng = random.Random(0)
    pool = [sketch.sample(rng) for _ in range(7)]  # dealt 4 and 3 to two builders
    schedules, rows = measurer.realize(sketch, pool, AVX2)
    here, want = realize_pool(sketch, pool, AVX2)
    assert [s.to_json() for s in schedules] == [s.to_json() for s in here]
    np.testing.assert_array_equal(rows, want)
    assert len(set(map(str, schedules))) > 1
    # a candidate no rule of the sketch realizes: the caller realizes the pool itself
    assert measurer.realize(sketch, pool[:2] + [Candidate("no such rule", None)], AVX2) is None
    # a rule the workers cannot import (this test module is not on their path): the same, and
    # the workers live on
    pids = [w.proc.pid for w in measurer._builders]
    local = Sketch.of(canonical_loops(MATMUL), AVX2, rules=(LocalRule(),))
    assert measurer.realize(local, [local.sample(rng) for _ in range(4)], AVX2) is None
    assert measurer.realize(sketch, pool, AVX2)[1].shape == rows.shape
    assert [w.proc.pid for w in measurer._builders] == pids


def test_a_batch_builds_on_every_core_up_to_a_batch(monkeypatch):
    # builds and timings take turns, so builders need not leave cores to the timing
    import nestor.codegen
    for cores, want in ((2, 2), (8, 8), (64, measure.MAX_BUILDERS)):
        monkeypatch.setattr(nestor.codegen, "host_cores", lambda: cores)
        assert measure.default_builders() == want


def test_workers_do_not_import_from_the_working_directory(tmp_path, monkeypatch):
    """A `nestor` or `tvm` package in the directory a user tunes from is not what the measurement
    processes run (they start with -P: no working directory on their import path)."""
    for name in ("nestor", "tvm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise SystemExit('imported from the working directory')\n")
    monkeypatch.chdir(tmp_path)
    with Measurer(MATMUL, repeats=1) as m:
        (r,) = m.measure([GOOD])
    assert_timed(r, repeats=1)


def test_workers_do_not_run_a_tvm_module_of_the_working_directory(tmp_path, monkeypatch):
    """Not even where the working directory is on the parent's path (`python -m` puts it first)."""
    import tvm  # noqa: F401  (the parent's own import, before the directory joins its path)
    (tmp_path / "tvm.py").write_text("import os\nopen(os.path.join(os.getcwd(), 'ran'), 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with Measurer(MATMUL, repeats=1, build_workers=1) as m:
        (r,) = m.measure([GOOD])
    assert_timed(r, repeats=1)
    assert not (tmp_path / "ran").exists()


def test_stale_measurement_directories_of_dead_processes_are_removed(tmp_path, monkeypatch):
    import subprocess
    import sys
    from nestor.autotune.measure import DIR_PREFIX, remove_stale_directories
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{DIR_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{DIR_PREFIX}x1y2z3"  # not a name Nestor gives
    for d in (dead, live, other):
        d.mkdir()
        (d / "candidate1.so").write_bytes(b"x" * 100)
    remove_stale_directories()
    assert not dead.exists() and live.exists() and other.exists()


def test_stale_directories_named_without_a_pid_are_removed_unless_in_use(tmp_path, monkeypatch):
    """An older Nestor named them DIR_PREFIX + 8 random characters. One unchanged for an hour
    that no process uses is removed; one whose files a live process holds open (an older tuner's
    worker logging there), or one changed lately, is kept."""
    import subprocess
    import sys
    from nestor.autotune.measure import DIR_PREFIX, PIDLESS_IDLE, remove_stale_directories
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    idle, held, busy = (tmp_path / f"{DIR_PREFIX}{name}" for name in ("k2j4x_ab", "q9w8e7r6", "zz_y1x2w"))
    for d in (idle, held, busy):
        d.mkdir()
        (d / "candidate1.so").write_bytes(b"x" * 100)
    with open(held / "runner.log", "ab") as log:  # as an older Measurer started its workers
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=log, stderr=log)
    try:
        then = time.time() - PIDLESS_IDLE - 60
        for d in (idle, held):
            os.utime(d, (then, then))
        remove_stale_directories()
        assert not idle.exists() and held.exists() and busy.exists()
    finally:
        worker.kill()
        worker.wait()
    remove_stale_directories()  # its worker gone
    assert not held.exists() and busy.exists()


def test_a_hanging_build_ends_with_the_time_budget(monkeypatch):
    """A build that hangs is cut when the budget runs out, not at its own BUILD_TIMEOUT; the cut
    candidates are not recorded (a later run measures them)."""
    import time
    from nestor.autotune import Budget
    from nestor.autotune.tune import tune_kernels
    from nestor.autotune.measure import BUILD_DELAY_ENV, BUILD_TIMEOUT
    monkeypatch.setenv(BUILD_DELAY_ENV, "600")
    budget = Budget(seconds=3)
    start = time.monotonic()
    (task,) = tune_kernels({"mm": MATMUL}, budget, show_progress=False)
    assert budget.elapsed < 3 + 3
    assert time.monotonic() - start < BUILD_TIMEOUT / 2  # the workers' start included
    assert task.best is None and task.trials >= 1 and task.errors == 0
