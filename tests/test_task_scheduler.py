"""Model tuning: tasks are the distinct kernels (ResNet-50's repeated blocks collapse), the
scheduler spends trials where the model's latency is, a task that cannot be measured is reported
and the rest go on, and a tuned model compiles from its records, saves, reloads and matches ONNX
Runtime."""
import dataclasses
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor import zoo
from nestor.autotune.budget import Budget
from nestor.autotune.measure import MeasureResult
from nestor.autotune.records import Records
from nestor.autotune.task_scheduler import TaskScheduler, extract_tasks, task_table
from nestor.autotune.tune import target_key, tune_graph
from nestor.passes import Schedule
from nestor.ir import structural_hash
from nestor.ir.errors import NestorError
from nestor.ir.machine import AVX512


def make_scheduler(tasks, measurer, records=None, batch=16):
    """A task scheduler with no cost model, its records (if any) under the key "t"."""
    return TaskScheduler(tasks, measurer, records, None, "t", AVX512, batch=batch, seed=0)


def test_resnet50_repeated_blocks_are_one_task_each():
    graph = nestor.import_onnx(zoo.light_model("resnet50"))
    calls = [n for n in graph.nodes if n.kernel is not None]
    tasks = extract_tasks(graph)
    assert len({structural_hash(n.kernel) for n in calls}) == len(tasks)
    assert sum(t.calls for t in tasks) == len(calls)
    assert len(tasks) <= len(calls) / 2  # 16 bottleneck blocks share a handful of shapes
    assert max(t.calls for t in tasks) >= 3
    convs = [t for t in tasks if t.kernel.name.startswith("conv")]
    assert convs and all(t.constants[:2] == (1, 2) for t in convs)  # weights and biases: constants


def mlp(sizes, seed=0) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMul ... : kernels of very different cost."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for n, (k, m) in enumerate(zip(sizes, sizes[1:])):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, m)).astype(np.float32) * 0.1, f"W{n}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{n}"], [f"h{n}"], name=f"mm{n}"))
        nodes.append(helper.make_node("Relu", [f"h{n}"], [f"y{n}"], name=f"relu{n}"))
        prev = f"y{n}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, sizes[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [32, sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class FakeMeasurer:
    """Times proportional to each task's flops (so the big task dominates the model), improving
    slowly with the number of candidates measured; `broken` tasks cannot be switched to."""

    def __init__(self, broken=()):
        self.broken, self.kernel, self.count = set(broken), None, 0

    def switch(self, kernel, constants=()):
        if structural_hash(kernel) in self.broken:
            raise NestorError(f"measure: the reference kernel {kernel.name} fails: run failed: boom")
        self.kernel = kernel

    def measure(self, kernels):
        from nestor.autotune.search import kernel_flops
        out = []
        for _ in kernels:
            self.count += 1
            t = kernel_flops(self.kernel) * 1e-9 * (1 + 1 / self.count)
            out.append(MeasureResult(t, (t,), None, 0.0))
        return out


def test_scheduler_spends_trials_where_the_latency_is():
    graph = nestor.import_onnx(mlp([512, 512, 8]))  # mm0: 32×512×512 (+relu), mm1: 32×512×8
    tasks = extract_tasks(graph)
    assert len(tasks) == 2
    scheduler = make_scheduler(tasks, FakeMeasurer(), batch=4)
    scheduler.tune(Budget(80))
    big, small = sorted(tasks, key=lambda t: -t.flops)
    assert big.trials + small.trials == 80 and small.trials >= 4  # everyone gets a warm-up round
    assert big.trials >= 3 * small.trials, (big.trials, small.trials)
    assert scheduler.latency() == pytest.approx(big.best + small.best)
    lines = []
    task_table(tasks, out=lines.append)
    assert lines[1].split()[0] == big.name  # heaviest first


def test_warm_up_goes_to_the_heaviest_tasks_first_and_light_ones_get_a_small_batch():
    graph = nestor.import_onnx(mlp([8, 8, 2048]))  # mm0: 32×8×8 (0.4% of the arithmetic), mm1: 32×8×2048
    light, heavy = extract_tasks(graph)
    scheduler = make_scheduler([light, heavy], FakeMeasurer(), batch=16)
    scheduler.tune(Budget(2))  # room for one warm-up round (2 trials at least)
    assert heavy.trials == 2 and light.trials == 0
    light, heavy = extract_tasks(graph)
    make_scheduler([light, heavy], FakeMeasurer(), batch=16).tune(Budget(200))
    # a budget with room for full warm-ups: the batch for the heavy one, a few for the light one
    assert heavy.history[0][0] == 16 and light.history[0][0] == 4


def test_warm_up_rounds_shrink_so_a_short_budget_reaches_every_task():
    graph = nestor.import_onnx(mlp([64, 72, 80, 88, 96, 104, 112]))  # 6 matmuls of different shapes
    tasks = extract_tasks(graph)
    assert len(tasks) == 6
    make_scheduler(tasks, FakeMeasurer(), batch=16).tune(Budget(40))
    # half the budget (20 trials) shared by the warm-ups: 3-4 each, never the batch of 16
    assert {t.history[0][0] for t in tasks} <= {3, 4} and sum(t.trials for t in tasks) == 40
    tasks = extract_tasks(graph)
    make_scheduler(tasks, FakeMeasurer(), batch=16).tune(Budget(12))
    # too short for half of it to give each 2: each still gets its floor (default, first rule tile)
    assert [t.trials for t in tasks] == [2] * 6


class DriftingMeasurer(FakeMeasurer):
    """Each schedule has a true time (drawn from its text); measured the first time, a few are
    lucky (timed 30% faster: a quiet moment of a shared machine), and the machine slows down by 3%
    from the `slow_after`-th measurement on."""

    def __init__(self, slow_after: int, lucky_one_in: int = 20):
        super().__init__()
        self.slow_after, self.count, self.lucky_one_in = slow_after, 0, lucky_one_in
        self.times = {}  # kernel text -> times given

    def measure(self, kernels):
        out = []
        for k in kernels:
            self.count += 1
            times = self.times.setdefault(str(k), [])
            draw = zlib.crc32(str(k).encode())
            true = 1e-3 * (1 + draw % 1000 / 1000)
            lucky = not times and draw % self.lucky_one_in == 0
            t = true * (0.7 if lucky else 1) * (1.03 if self.count > self.slow_after else 1)
            times.append(t)
            out.append(MeasureResult(t, (t,), None, 0.0))
        return out


def test_the_last_share_of_the_budget_measures_each_tasks_fastest_schedules_again(tmp_path):
    from nestor.autotune.budget import RERANK_SHARE, RERANK_TOP
    graph = nestor.import_onnx(mlp([64, 96, 32]))
    trials = int(4 * RERANK_TOP / RERANK_SHARE)  # the share kept: room for two batches per task
    for slow_after in (trials, trials - 4 * RERANK_TOP):  # the machine as fast when re-ranking, or slower
        tasks = extract_tasks(graph)
        measurer = DriftingMeasurer(slow_after)
        with Records(tmp_path / f"r{slow_after}.sqlite") as db:
            make_scheduler(tasks, measurer, db, batch=8).tune(Budget(trials))
            for task in tasks:
                records = db.records(task.hash, "t")
                times = {key: [r.median for r in records if r.schedule == key] for key in task.tuner.times}
                again = {key: ts for key, ts in times.items() if len(ts) == 2}
                assert RERANK_TOP <= len(again) <= 2 * RERANK_TOP
                began = min(max(r.id for r in records if r.schedule == key) for key in again)
                before = sorted((key for key in times if min(r.id for r in records if r.schedule == key) < began),
                                key=lambda key: times[key][0])
                assert set(before[:RERANK_TOP]) <= set(again)  # the fastest by their first times
                winner = db.best(task.hash, "t")
                # measured again, or first measured after the re-ranking began (the rest of the budget)
                assert winner.schedule in again or winner.schedule not in before
                assert winner.median == min(ts[-1] for ts in times.values()) == pytest.approx(task.best)
                assert task.tuner.best.to_json() == winner.schedule  # compile takes the tuner's best


def test_a_task_that_cannot_be_measured_is_reported_and_the_rest_go_on():
    graph = nestor.import_onnx(mlp([64, 64, 64, 8]))
    tasks = extract_tasks(graph)
    broken = tasks[0].hash
    make_scheduler(tasks, FakeMeasurer(broken={broken}), batch=4).tune(Budget(24))
    failed = [t for t in tasks if t.failed]
    assert [t.hash for t in failed] == [broken] and "boom" in failed[0].failed
    assert all(t.trials > 0 for t in tasks if not t.failed)
    lines = []
    task_table(tasks, out=lines.append)
    assert any("failed" in line and "boom" in line for line in lines)


def test_tuned_model_compiles_from_records_saves_reloads_and_matches_onnxruntime(tmp_path):
    model = mlp([64, 96, 32])
    graph = nestor.import_onnx(model)
    records = str(tmp_path / "r.sqlite")
    tasks = tune_graph(graph, Budget(12), records_path=records, show_progress=False)
    assert sum(t.trials for t in tasks) == 12 and all(t.best for t in tasks)
    with Records(records) as db:
        assert db.count() == 12
    compiled = nestor.compile(model, records=records)
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(compiled.run({"x": x})[0], want[0], rtol=1e-4, atol=1e-5)
    compiled.save(tmp_path / "m.nestor")
    again = nestor.load(tmp_path / "m.nestor")
    np.testing.assert_array_equal(again.run({"x": x})[0], compiled.run({"x": x})[0])
    # tuning again resumes: the stored measurements are not repeated
    tune_graph(graph, Budget(4), records_path=records, show_progress=False)
    with Records(records) as db:
        assert db.count() == 16 and len({(r.task, r.schedule) for r in db.records()}) == 16


class RecordingMeasurer(FakeMeasurer):
    """Remembers the kernels measured for each task."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def measure(self, kernels):
        self.seen.setdefault(structural_hash(self.kernel), []).extend(kernels)
        return super().measure(kernels)


def test_similar_tasks_start_from_each_others_best_decisions():
    graph = nestor.import_onnx(mlp([64, 96, 48]))  # two matmul+relu kernels of different shapes
    first, second = extract_tasks(graph)
    measurer = RecordingMeasurer()
    scheduler = make_scheduler([first, second], measurer, batch=6)
    scheduler.tune(Budget(24))  # two warm-up rounds of 6 (half the budget), the first task's first
    seeds = second.tuner.seeds
    assert len(seeds) == 2  # the first task's two best, adopted
    assert all(any(seed == second.tuner.sketch.adopt(d) for _, d in first.tuner.measured) for seed in seeds)
    measured = {str(k) for k in measurer.seen[second.hash][:second.history[0][0]]}
    wanted = {str(second.tuner.sketch.realize(d)[1]) for d in seeds}
    assert wanted <= measured, "the adopted decisions are measured in the first round"


def test_adopt_fits_decisions_to_another_sketch():
    from nestor.autotune.space import Candidate, Sketch
    small = Sketch.of(nestor.import_onnx(mlp([64, 8, 8])).nodes[0].kernel)    # 32×8 output
    large = Sketch.of(nestor.import_onnx(mlp([64, 96, 8])).nodes[0].kernel)   # 32×96 output
    from nestor.autotune.rules.tiling import TileDecisions
    d = Candidate("tiling", dataclasses.replace(TileDecisions.plain(2), factors=(16, 64), order=1, fuse=2,
                                                unroll=4, cache_read=("B", 1)))
    assert large.adopt(d).decisions.order == 1  # two outer loops: their order carries over
    fitted = small.adopt(large.adopt(d))
    # the 8 columns are all in the tile: one outer loop left, nothing to order
    assert fitted.decisions.factors[1] <= 8 and fitted.decisions.order == 0 and fitted.decisions.unroll == 4
    small.realize(fitted)  # a valid decision set for the small kernel
    deeper = Candidate("tiling", dataclasses.replace(d.decisions, factors=(4,)))
    assert small.adopt(deeper) is None  # nests of another depth do not transfer


def test_kernels_never_tuned_borrow_the_schedule_of_the_nearest_tuned_similar_kernel(tmp_path):
    from nestor.autotune.tune import best_schedules
    records = str(tmp_path / "r.sqlite")
    tuned = nestor.import_onnx(mlp([64, 96]))           # matmul+relu 32×64×96
    untuned = nestor.import_onnx(mlp([64, 128, 48]))    # two more of them, other shapes
    tune_graph(tuned, Budget(8), records_path=records, show_progress=False)
    with Records(records) as db:
        (task,) = db.tasks()
        want = Schedule.from_json(db.best(task, target_key()).schedule)
    lookup = best_schedules(records)
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    first = next(n.kernel for n in untuned.nodes if n.kernel is not None)
    assert lookup(first) == want   # the same loops with larger extents: every step applies
    assert best_schedules(records, similar=False)(first) is None
    model = mlp([64, 128, 48])
    compiled = nestor.compile(model, records=records)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(compiled.run({"x": x})[0], ref[0], rtol=1e-4, atol=1e-4)
