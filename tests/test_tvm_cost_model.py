"""Nestor's cost model inside MetaSchedule's evolutionary search (nestor.tvm.cost_model): it
featurizes MetaSchedule's scheduled candidates, learns from runner results and ranks.

Candidates are MetaSchedule's own: its design spaces of a matmul, their decisions sampled
anew and its postprocessors applied, as its evolutionary search hands them over. Where a
test needs times it uses a known truth (faster with a wider vector loop), not the noisy
clock. The first TuneContext of a process imports TVM's tensor intrinsics (tens of seconds on
a busy 2-core machine); the fixture pays it once."""
import numpy as np
import pytest
import tvm
from tvm import relax, te, topi
from tvm.ir.utils import derived_object
from tvm.s_tir import Schedule, Trace
from tvm.s_tir import meta_schedule as ms

import nestor.tvm
from nestor.autotune.ms_cost_model import NestorCostModel
from nestor.codegen import host_target
from nestor.codegen.tir_import import kernel_from_primfunc
from nestor.costmodel import pairwise_accuracy
from nestor.ir import For, walk_stmts

from .test_tir_import import _conv_relu_matmul_model
from .test_tvm_plugin import MEASURE, _check_runs, _nestors, _relax, _unnamed_log_handlers_dropped


def _matmul(n: int = 64) -> tvm.tirx.PrimFunc:
    a, b = te.placeholder((n, n), name="A"), te.placeholder((n, n), name="B")
    r = te.reduce_axis((0, n), "k")
    return te.create_prim_func([a, b, te.compute((n, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")])


@pytest.fixture(scope="module")
def task():
    """A matmul's TuneContext and 40 distinct candidates from its design spaces."""
    mod = tvm.IRModule({"main": _matmul()})
    context = ms.TuneContext(mod, target=host_target(), space_generator="post-order-apply", task_name="mm",
                             rand_state=0)
    spaces = context.generate_design_space()
    found = {}
    for seed in range(1, 200):
        sch = Schedule(mod, seed=seed)
        Trace(spaces[seed % len(spaces)].trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
        if all(p.apply(sch) for p in context.space_generator.postprocs):
            found.setdefault(str(sch.mod), sch)
        if len(found) == 40:
            break
    return context, [ms.MeasureCandidate(s, ms.arg_info.ArgInfo.from_entry_func(s.mod)) for s in found.values()]


def _truth(candidate) -> float:
    """Seconds of a made-up machine on which a wider innermost vector loop is faster."""
    kernel = kernel_from_primfunc(candidate.sch.mod["main"])
    widths = [s.extent for s in walk_stmts(kernel.body) if isinstance(s, For) and s.kind == "vectorized"]
    return 1e-3 / (1 + min(widths, default=0))


def _results(seconds):
    return [ms.runner.RunnerResult([s, s * 1.01], None) for s in seconds]


def test_the_model_learns_to_rank_candidates_it_has_not_seen(task):
    context, candidates = task
    train, held_out = candidates[:24], candidates[24:]
    model = nestor.tvm.cost_model()
    first = model.predict(context, held_out)
    assert first.shape == (len(held_out),) and np.all((first >= 0) & (first <= 1))  # random until trained
    model.update(context, train, _results([_truth(c) for c in train]))
    truth = [_truth(c) for c in held_out]
    assert len(set(truth)) > 1
    scores = model.predict(context, held_out)
    assert scores.shape == (len(held_out),) and np.all(np.isfinite(scores)) and np.all(scores > 0)
    assert pairwise_accuracy(scores, truth, np.zeros(len(truth))) > 0.7  # random: 0.5
    fastest_seen = model.predict(context, [min(train, key=_truth)])[0]
    assert fastest_seen == pytest.approx(1.0, rel=0.05)  # a score reads as best measured time / predicted


def test_a_task_is_ranked_with_its_own_model_too_as_nestors_tuner_ranks_it(task):
    context, candidates = task
    model = NestorCostModel()
    model.update(context, candidates[:24], _results([_truth(c) for c in candidates[:24]]))
    (group,) = model.model._tasks  # 24 samples of one task: it has a model of its own
    x, _ = model.features(context, candidates[24:])
    own = model.model.predict_features(x, group)
    assert not np.allclose(own, model.model.predict_features(x))  # the task's model adds something
    np.testing.assert_allclose(np.log(model.predict(context, candidates[24:])),
                               model.slope * (own - model.best[group]), rtol=1e-5)


def test_a_model_pretrained_on_a_saved_one_ranks_from_the_first_round(task, tmp_path):
    context, candidates = task
    donor = NestorCostModel()
    donor.update(context, candidates[:24], _results([_truth(c) for c in candidates[:24]]))
    donor.save(str(tmp_path / "donor.npz"))
    model = nestor.tvm.cost_model(pretrained=str(tmp_path / "donor.npz"))
    assert model.model.samples == 24
    truth = [_truth(c) for c in candidates[24:]]
    assert pairwise_accuracy(model.predict(context, candidates[24:]), truth, np.zeros(len(truth))) > 0.7


def test_failed_candidates_teach_nothing(task):
    context, candidates = task
    model = NestorCostModel()
    model.update(context, candidates[:4], [ms.runner.RunnerResult(None, "build failed")] * 4)
    assert model.model.samples == 0 and not model.model.trained


def test_save_and_load_give_the_same_scores(task, tmp_path):
    context, candidates = task
    model = NestorCostModel()
    model.update(context, candidates[:16], _results([_truth(c) for c in candidates[:16]]))
    path = str(tmp_path / "model.npz")
    model.save(path)
    again = NestorCostModel()
    again.load(path)
    np.testing.assert_allclose(again.predict(context, candidates[16:]), model.predict(context, candidates[16:]))
    np.testing.assert_allclose(nestor.tvm.cost_model(path).predict(context, candidates[16:]),
                               model.predict(context, candidates[16:]))


def test_a_candidate_nestor_cannot_featurize_scores_neutral(task):
    context, candidates = task
    x = te.placeholder((2, 5), name="X")
    argmax = te.create_prim_func([x, topi.argmax(x, axis=1)])  # Nestor's importer refuses it
    bad = ms.MeasureCandidate(Schedule(tvm.IRModule({"main": argmax})), ms.arg_info.ArgInfo.from_prim_func(argmax))
    model = NestorCostModel()
    with pytest.warns(UserWarning, match="cannot featurize candidates of task mm"):
        model.update(context, [bad] + candidates[:15], _results([1e-6] + [_truth(c) for c in candidates[:15]]))
    assert model.model.samples == 15  # the unfeaturizable one was left out
    scores = model.predict(context, [bad] + candidates[16:20])
    np.testing.assert_allclose(scores[1:], model.predict(context, candidates[16:20]))
    # neither chosen nor shunned: scored as the median measured candidate
    assert scores[0] == pytest.approx(np.median(model.predict(context, candidates[:15])))
    alone = model.predict(context, [bad] * 3)  # nothing to rank by: at random, as before training
    assert len(set(alone)) == 3 and np.all((alone >= 0) & (alone <= 1))


@derived_object
class _Recording(NestorCostModel._cls):
    """Nestor's cost model, keeping what MetaSchedule's search asked and got."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def predict(self, context, candidates):
        scores = super().predict(context, candidates)
        self.calls.append((len(candidates), scores, self.model.trained))
        return scores


def test_metaschedules_evolutionary_search_ranks_with_nestors_model(tmp_path, task):
    _unnamed_log_handlers_dropped()
    model = _Recording()
    search = ms.search_strategy.EvolutionarySearch(population_size=16, init_min_unmeasured=16, genetic_num_iters=1)
    workload, target = _matmul(32), host_target()
    db = ms.tune_tir(workload, target, str(tmp_path), max_trials_global=8, num_trials_per_iter=4, strategy=search,
                     cost_model=model, **MEASURE)
    assert model.model.samples == 8  # it learnt from MetaSchedule's runner, every candidate featurized
    trained = [(n, s) for n, s, was_trained in model.calls if was_trained]
    assert trained, "the second round ranks with the trained model"
    for n, scores in trained:
        assert scores.shape == (n,) and np.all(np.isfinite(scores)) and np.all(scores > 0)
    sch = ms.tir_integration.compile_tir(db, workload, target)
    exe = tvm.compile(sch.mod, target)
    x, y = np.random.rand(32, 32).astype("float32"), np.random.rand(32, 32).astype("float32")
    out = tvm.runtime.tensor(np.zeros((32, 32), "float32"))
    exe["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y), out)
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-5)


def test_installed_with_metaschedules_search_the_pipeline_ranks_with_nestors_model(tmp_path):
    import onnxruntime as ort
    _unnamed_log_handlers_dropped()
    onnx_model = _conv_relu_matmul_model()
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    want = ort.InferenceSession(onnx_model.SerializeToString()).run(None, {"x": x})[0]
    model, target = _Recording(), host_target()
    search = ms.search_strategy.EvolutionarySearch(population_size=16, init_min_unmeasured=16, genetic_num_iters=1)
    with nestor.tvm.installed(search="metaschedule", cost_model=model, strategy=search, **MEASURE):
        tuned = relax.get_pipeline("static_shape_tuning", target=target, total_trials=6, max_trials_per_task=2,
                                   work_dir=str(tmp_path))(_relax(onnx_model))
    assert model.model.samples > 0 and model.calls  # MetaSchedule's search asked Nestor's model
    assert not any(_nestors(tuned).values())        # the kernels are MetaSchedule's
    _check_runs(tvm.compile(tuned, target), x, want)


def test_install_refuses_an_unknown_search():
    with pytest.raises(nestor.NestorError, match="search must be one of nestor, metaschedule"):
        nestor.tvm.install(search="random")
    assert relax.transform.MetaScheduleTuneIRMod is nestor.tvm._ms_tune_irmod  # nothing installed
