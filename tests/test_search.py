"""The tuner: finds a schedule faster than the default that computes the same thing, records every
measurement (errors included) and resumes from them, and `nestor compile --records` uses the best."""
import numpy as np

import nestor
from nestor.autotune import tune
from nestor.autotune.budget import RERANK_TOP, Budget
from nestor.autotune.measure import MeasureResult, Measurer
from nestor.autotune.records import Records
from nestor.autotune.search import Tuner
from nestor.autotune.task_scheduler import TaskScheduler, kernel_tasks
from nestor.autotune.tune import target_key, tune_kernels
from nestor.codegen import run_kernel
from nestor.api import scheduler
from nestor.ir import For, structural_hash, walk_stmts
from nestor.ir.machine import AVX512
from nestor.passes import Schedule, canonical_loops, default_schedule
from tests.test_passes import _onnx, inputs


def small_matmul():
    return _onnx("MatMul", {"X": [64, 96], "W": [96, 128]}, [64, 128])


def test_search_beats_the_default_schedule_and_stays_correct(tmp_path):
    kernel = small_matmul()
    with Measurer(canonical_loops(kernel)) as measurer:
        default_time = measurer.measure([default_schedule(canonical_loops(kernel))])[0]
    path = str(tmp_path / "r.sqlite")
    (task,) = tune_kernels({"mm": kernel}, Budget(32), path, show_progress=False, batch=8)
    assert default_time.ok and task.schedule is not None and task.trials == 32
    assert task.best < default_time.median, (task.best, default_time.median)
    with Records(path) as db:
        assert db.count(task.hash, target_key()) == 32
    best = task.schedule.apply(kernel)
    x = inputs(kernel)
    np.testing.assert_allclose(run_kernel(best, x)[0], x[0] @ x[1], rtol=1e-4, atol=1e-4)


class FlakyMeasurer:
    """Every third candidate crashes: the tuner must record it and go on."""

    def __init__(self):
        self.calls = 0

    def switch(self, kernel, constants=()):
        pass

    def measure(self, kernels):
        out = []
        for _ in kernels:
            self.calls += 1
            if self.calls % 3 == 0:
                out.append(MeasureResult(None, (), "crashed (signal 11)", 0.0))
            else:
                t = 1e-3 / self.calls
                out.append(MeasureResult(t, (t, t, t), None, 0.0))
        return out


def tune_alone(kernel, measurer, records, trials: int):
    """Tune one kernel with the task scheduler, without a cost model; returns its task."""
    (task,) = kernel_tasks({"mm": kernel})
    TaskScheduler([task], measurer, records, None, "test-target", AVX512, batch=4).tune(Budget(trials))
    return task


def test_errors_are_recorded_and_tuning_resumes_from_the_records(tmp_path):
    kernel = small_matmul()
    path = tmp_path / "r.sqlite"
    first = tune_alone(kernel, FlakyMeasurer(), Records(path), 12)
    assert first.trials == 12 and first.errors == 4 and first.tuner.stored == 0
    records = Records(path)
    task = structural_hash(kernel)
    assert records.count(task, "test-target") == 12
    assert len([r for r in records.records(task, "test-target") if r.error == "crashed (signal 11)"]) == 4

    again = Tuner(kernel, FlakyMeasurer(), Records(path), None, "test-target", AVX512, batch=4)
    assert again.stored == 12 and again.best_seconds == first.best
    second = tune_alone(kernel, FlakyMeasurer(), Records(path), 8)
    assert second.trials == 8 and second.tuner.stored == 12
    schedules = [r.schedule for r in Records(path).records(task, "test-target")]
    assert len(schedules) == 20 and len(set(schedules)) == 20  # nothing measured twice


class MeasuringWith:
    """Stands in for tune.py's Measurer class: hands out `measurer`, and keeps the target given."""

    def __init__(self, measurer):
        self.measurer, self.target = measurer, None

    def __call__(self, reference, target=None, time_left=None):
        self.target = target
        return self

    def __enter__(self):
        return self.measurer

    def __exit__(self, *exc):
        return False


def test_tune_kernels_runs_the_task_scheduler_whose_last_trials_measure_the_fastest_again(
        tmp_path, monkeypatch, capsys):
    import tvm
    from tests.test_task_scheduler import DriftingMeasurer
    kernel = small_matmul()
    # a few first times lucky (one in 4: some among the fastest re-measured), the second true
    measurer = DriftingMeasurer(slow_after=10 ** 9, lucky_one_in=4)
    measuring = MeasuringWith(measurer)
    monkeypatch.setattr(tune, "Measurer", measuring)
    path = str(tmp_path / "r.sqlite")
    (task,) = tune_kernels({"mm": kernel}, Budget(80), path, batch=8)
    progress = capsys.readouterr().err
    assert isinstance(measuring.target, tvm.target.Target)  # converted once, at the edge
    assert "[tune]" in progress and "80/80 trials" in progress and "re-rank 1/1" in progress
    again = [times for times in measurer.times.values() if len(times) == 2]
    assert task.trials == 80 and RERANK_TOP <= len(again) <= 2 * RERANK_TOP
    assert any(first != second for first, second in again)  # a lucky time among the fastest
    assert task.best == min(times[-1] for times in measurer.times.values())
    with Records(path) as db:
        assert db.count(task.hash, target_key()) == 80
        assert db.best(structural_hash(kernel), target_key()).schedule == task.schedule.to_json()


class TrainedModel:
    """A cost model that ranks by a fixed random score: the tuner fills whole pools."""
    trained = True

    def predict_features(self, rows, group=None):
        return np.random.default_rng(len(rows)).random(len(rows))

    def update(self, *args):
        pass

    def update_features(self, *args):
        pass


def test_a_round_realizes_no_decision_twice_and_keeps_what_it_did_not_measure(monkeypatch):
    """Realizing a candidate is most of a round's cost: a decision realized once is never
    realized again (its schedule is known), and up to half of the next round's pool is the
    last pool's candidates not measured, not realized anew."""
    from nestor.autotune import search
    kernel = small_matmul()
    tuner = Tuner(kernel, FlakyMeasurer(), None, TrainedModel(), "test-target", AVX512, batch=4)
    realized, pools = [], []
    realize, candidates = type(tuner.sketch).realize, tuner._candidates
    monkeypatch.setattr(type(tuner.sketch), "realize", lambda sk, d: realized.append(repr(d)) or realize(sk, d))

    def pooled():
        pool = candidates()
        pools.append({c[1].to_json() for c in pool})
        return pool
    tuner._candidates = pooled
    for _ in range(3):
        tuner.round()
    assert len(realized) == len(set(realized)) > 0
    size = search.POOL_PER_TRIAL * 4
    assert all(len(p) <= size for p in pools) and len(pools[0]) > size // 2
    kept = (pools[0] & pools[1]) - tuner.seen
    assert 0 < len(kept) <= size // 2


def test_compile_uses_the_best_stored_schedule(tmp_path):
    model_kernel = small_matmul()
    path = str(tmp_path / "r.sqlite")
    with Records(path) as records:
        records.add_task(structural_hash(model_kernel), "", 0.0)
        fast = Schedule.from_json('[{"pass": "split", "params": {"loop": "i1", "factor": 8}}, '
                                  '{"pass": "parallel", "params": {"loop": "i0"}}]')
        records.add(structural_hash(model_kernel), target_key(), fast.to_json(), 1e-6, [1e-6])
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [64, 96]),
                               helper.make_tensor_value_info("W", TensorProto.FLOAT, [96, 128])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [64, 128])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    graph = nestor.import_onnx(model)
    scheduled = scheduler("none", graph, records=path)(graph.nodes[0].kernel)
    assert {(s.var, s.kind) for s in walk_stmts(scheduled.body) if isinstance(s, For)} >= {("i0", "parallel"), ("i1_o", "serial")}
    other = _onnx("MatMul", {"X": [8, 8], "W": [8, 8]}, [8, 8])  # never tuned: the base schedule
    assert scheduler("none", graph, records=path)(other) == other
    compiled = nestor.compile(model, records=path)
    x, w = np.ones((64, 96), np.float32), np.ones((96, 128), np.float32)
    np.testing.assert_allclose(compiled.run([x, w])[0], x @ w)


def test_tune_kernels_shares_equal_kernels(tmp_path):
    a, b = small_matmul(), small_matmul()
    (task,) = tune_kernels({"a": a, "b": b}, Budget(4), str(tmp_path / "r.sqlite"), show_progress=False)
    assert task.nodes == ["a", "b"] and task.trials == 4


def test_the_model_learns_the_measured_kernels_features_from_the_pool_rows():
    """learn() takes each measured candidate's features from the pool that offered it (computed
    when it was realized), the default schedule's computed then: the same rows as featurizing the
    measured kernels again."""
    from nestor.costmodel import CostModel, features

    class Measured:
        def __init__(self):
            self.batches = []

        def measure(self, kernels):
            self.batches.append(kernels)
            return [MeasureResult(1e-3 * (n + 1), (1e-3 * (n + 1),), None, 0.0) for n in range(len(kernels))]

    model, measurer = CostModel(machine=AVX512), Measured()
    learnt = []
    update = model.update_features
    model.update_features = lambda x, secs, groups: learnt.append(x) or update(x, secs, groups)
    tuner = Tuner(small_matmul(), measurer, None, model, "test-target", AVX512, batch=4)
    for _ in range(3):
        tuner.round()
    assert len(learnt) == len(measurer.batches) == 3
    for x, kernels in zip(learnt, measurer.batches):  # the first holds the default schedule
        np.testing.assert_array_equal(x, features(kernels, AVX512))
