"""The tuner: finds a schedule faster than the default that computes the same thing, records every
measurement (errors included) and resumes from them, and `nestor compile --records` uses the best."""
import numpy as np
import pytest

import nestor
from nestor.autotune.measure import MeasureResult, Measurer
from nestor.autotune.records import Records
from nestor.autotune.search import Tuner
from nestor.autotune.tune import target_key, tune_kernels
from nestor.codegen import run_kernel
from nestor.costmodel import CostModel
from nestor.api import scheduler
from nestor.ir import For, structural_hash, walk_stmts
from nestor.passes import Schedule, canonical_loops, default_schedule
from tests.test_passes import _onnx, inputs


def small_matmul():
    return _onnx("MatMul", {"X": [64, 96], "W": [96, 128]}, [64, 128])


def test_search_beats_the_default_schedule_and_stays_correct(tmp_path):
    kernel = small_matmul()
    with Measurer(canonical_loops(kernel)) as measurer:
        default_time = measurer.measure([default_schedule(canonical_loops(kernel))])[0]
        tuner = Tuner(kernel, measurer, Records(tmp_path / "r.sqlite"), CostModel(), target_key(), batch=8)
        result = tuner.tune(32)
    assert default_time.ok and result.best is not None and result.trials == 32
    assert result.best_seconds < default_time.median, (result.best_seconds, default_time.median)
    best = result.best.apply(kernel)
    x = inputs(kernel)
    np.testing.assert_allclose(run_kernel(best, x)[0], x[0] @ x[1], rtol=1e-4, atol=1e-4)


class FlakyMeasurer:
    """Every third candidate crashes: the tuner must record it and go on."""

    def __init__(self):
        self.calls = 0

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


def test_errors_are_recorded_and_tuning_resumes_from_the_records(tmp_path):
    kernel = small_matmul()
    path = tmp_path / "r.sqlite"
    first = Tuner(kernel, FlakyMeasurer(), Records(path), None, "test-target", batch=4).tune(12)
    assert first.trials == 12 and first.errors == 4 and first.stored == 0
    records = Records(path)
    task = structural_hash(kernel)
    assert records.count(task, "test-target") == 12
    assert len([r for r in records.records(task, "test-target") if r.error == "crashed (signal 11)"]) == 4

    again = Tuner(kernel, FlakyMeasurer(), Records(path), None, "test-target", batch=4)
    assert again.stored == 12 and again.best_seconds == first.best_seconds
    second = again.tune(8)
    assert second.trials == 8
    schedules = [r.schedule for r in Records(path).records(task, "test-target")]
    assert len(schedules) == 20 and len(set(schedules)) == 20  # nothing measured twice


def test_the_last_trials_of_a_tuning_measure_the_fastest_schedules_again(tmp_path):
    from nestor.autotune.search import RERANK_TOP
    from tests.test_task_scheduler import DriftingMeasurer
    kernel = small_matmul()
    measurer = DriftingMeasurer(slow_after=10 ** 9)  # a few first times lucky, the second true
    with Records(tmp_path / "r.sqlite") as db:
        result = Tuner(kernel, measurer, db, None, "t", batch=8).tune(80)
        again = [times for times in measurer.times.values() if len(times) == 2]
        assert result.trials == 80 and RERANK_TOP <= len(again) <= 2 * RERANK_TOP
        assert any(first != second for first, second in again)  # a lucky time among the fastest
        assert result.best_seconds == min(times[-1] for times in measurer.times.values())
        assert db.best(structural_hash(kernel), "t").schedule == result.best.to_json()


class TrainedModel:
    """A cost model that ranks by a fixed random score: the tuner fills whole pools."""
    trained = True

    def predict(self, kernels):
        return np.random.default_rng(len(kernels)).random(len(kernels))

    def update(self, *args):
        pass


def test_a_round_realizes_no_decision_twice_and_keeps_what_it_did_not_measure(monkeypatch):
    """Realizing a candidate is most of a round's cost: a decision realized once is never
    realized again (its schedule is known), and up to half of the next round's pool is the
    last pool's candidates not measured, not realized anew."""
    from nestor.autotune import search
    kernel = small_matmul()
    tuner = Tuner(kernel, FlakyMeasurer(), None, TrainedModel(), "test-target", batch=4)
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
    results = tune_kernels({"a": a, "b": b}, 4, str(tmp_path / "r.sqlite"), show_progress=False)
    assert results["a"] is results["b"] and results["a"].trials == 4
