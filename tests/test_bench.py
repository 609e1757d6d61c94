"""The benchmarks' target argument: the CPU tables as they were, the GPU path chosen by the
target (tuners, competitor, timer), and one-line errors where PyTorch or the GPU is missing.
GPU-marked tests run a tiny kernel bench and a tiny model bench on CUDA."""
import sys
import time
from types import SimpleNamespace

import pytest

import nestor
import nestor.codegen
from nestor import bench, bench_kernels as bk
from nestor.autotune.kernel_suite import SUITE
from nestor.codegen import as_target
from nestor.ir.errors import NestorError


class _Stop(Exception):
    pass


def _fake_torch():
    flags = SimpleNamespace(allow_tf32=True)
    return SimpleNamespace(backends=SimpleNamespace(cuda=SimpleNamespace(matmul=flags), cudnn=SimpleNamespace(allow_tf32=True)))


def test_missing_torch_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(NestorError) as err:
        bench.import_torch("onnx2torch")
    assert "\n" not in str(err.value) and str(err.value).endswith("pip install torch")
    monkeypatch.setitem(sys.modules, "torch", _fake_torch())
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    with pytest.raises(NestorError, match=r"needs onnx2torch: pip install onnx2torch$"):
        bench.import_torch("onnx2torch")


def test_import_torch_turns_tf32_off(monkeypatch):
    fake = _fake_torch()
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert bench.import_torch() == (fake,)
    assert not fake.backends.cuda.matmul.allow_tf32 and not fake.backends.cudnn.allow_tf32


def test_bench_models_on_cuda_without_torch_fails_before_tuning(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr("nestor.autotune.tune.tune_graph", lambda *a, **k: pytest.fail("tuned"))
    with pytest.raises(NestorError, match="pip install torch") as err:
        bench.bench_models(["squeezenet"], time_budget=1, records=str(tmp_path / "r.sqlite"), target="cuda",
                           out=lambda line: None)
    assert "\n" not in str(err.value)


def test_bench_on_cuda_without_a_gpu_says_so_before_tuning(monkeypatch):
    monkeypatch.setattr(nestor.codegen, "gpu_present", lambda: False)
    monkeypatch.setattr(bk, "_tune_nestor", lambda *a: pytest.fail("tuned"))
    with pytest.raises(NestorError, match="no NVIDIA GPU is present here"):
        bk.bench_kernels(["softmax"], trials=1, target="cuda", out=lambda line: None)
    monkeypatch.setattr(bench, "import_torch", lambda *extra: (None,) * (1 + len(extra)))
    with pytest.raises(NestorError, match="no NVIDIA GPU is present here"):
        bench.bench_models(["squeezenet"], target="cuda", out=lambda line: None)


def _tuners_targets(monkeypatch, target, lines, seeds=None, run=None):
    """The targets the two tuners of bench_kernels receive (the bench stops after MetaSchedule);
    `seeds` receives their random seeds; `run` starts the bench (default: bench_kernels)."""
    seen = {}
    seeds = {} if seeds is None else seeds

    def nestor_tuner(kernel, trials, records, target, seed):
        seen["nestor"], seeds["nestor"] = target, seed
        return None, 0.0

    def ms_tuner(prim_func, trials, workdir, target, seed):
        seen["metaschedule"], seeds["metaschedule"] = target, seed
        raise _Stop
    monkeypatch.setattr(bk, "_tune_nestor", nestor_tuner)
    monkeypatch.setattr(bk, "_tune_metaschedule", ms_tuner)
    with pytest.raises(_Stop):
        (run or (lambda: bk.bench_kernels(["softmax"], trials=1, target=target, out=lines.append)))()
    return seen


def test_bench_seed_reaches_both_tuners(monkeypatch):
    from nestor.cli import main
    seeds = {}
    _tuners_targets(monkeypatch, None, [], seeds, lambda: main(["bench", "kernels", "--kernels", "softmax",
                                                                "--trials", "1", "--seed", "7"]))
    assert seeds == {"nestor": 7, "metaschedule": 7}
    _tuners_targets(monkeypatch, None, [], seeds)
    assert seeds == {"nestor": 0, "metaschedule": 0}   # the default: reproducible, not MetaSchedule's random


def test_bench_kernels_tunes_both_for_the_target_given(monkeypatch):
    lines = []
    assert {t.kind.name for t in _tuners_targets(monkeypatch, None, lines).values()} == {"llvm"}
    assert not any("PyTorch" in line for line in lines)  # the CPU table has no PyTorch column
    monkeypatch.setattr(nestor.codegen, "gpu_present", lambda: True)
    monkeypatch.setitem(sys.modules, "torch", None)
    lines = []
    seen = _tuners_targets(monkeypatch, "cuda", lines)
    assert {t.kind.name for t in seen.values()} == {"cuda"}
    assert lines[0] == "-- no PyTorch column: the GPU benchmark compares with PyTorch and needs torch: pip install torch"


def test_metaschedule_cuda_target_gets_the_limits_its_rules_read():
    t = bk.metaschedule_target(as_target({"kind": "cuda", "arch": "sm_80", "max_shared_memory_per_block": 1024}))
    assert (t.attrs["arch"], int(t.attrs["max_threads_per_block"]), int(t.attrs["thread_warp_size"])) == ("sm_80", 1024, 32)
    assert int(t.attrs["max_shared_memory_per_block"]) == 1024  # the target's own value wins
    assert t.host is not None and t.host.kind.name == "llvm"
    cpu = as_target("cpu")
    assert bk.metaschedule_target(cpu) is cpu


def test_torch_op_is_the_suite_kernels_op():
    F = SimpleNamespace(conv2d=lambda *a, **k: ("conv2d", k), layer_norm=lambda x, shape, g, b, eps: ("ln", eps))
    torch = SimpleNamespace(matmul="matmul", softmax=lambda x, axis: ("softmax", axis),
                            nn=SimpleNamespace(functional=F))
    op = lambda name: bk.torch_op(SUITE[name].node(), torch)
    assert op("matmul512") == "matmul" and op("batch_matmul") == "matmul"
    assert op("conv7x7_stem")(None, None) == ("conv2d", {"stride": (2, 2), "padding": (3, 3), "dilation": (1, 1),
                                                          "groups": 1})
    assert op("depthwise3x3")(None, None)[1]["groups"] == 32
    assert op("softmax")(None) == ("softmax", -1)
    assert op("layernorm")(None, SimpleNamespace(shape=(768,)), None) == ("ln", pytest.approx(1e-5))


def test_gpu_timer_times_each_callable_per_call():
    slow, fast = lambda: time.sleep(2e-3), lambda: None
    t_slow, t_fast = bench.gpu_interleaved_medians([slow, fast], [lambda: None] * 2, repeat=3)
    assert 1.5e-3 < t_slow < 20e-3 and t_fast < 1e-4


@pytest.mark.gpu
def test_kernel_bench_on_cuda_times_nestor_metaschedule_and_torch(tmp_path):
    lines = []
    bk.bench_kernels(["matmul512"], trials=8, repeat=3, records=str(tmp_path / "k.sqlite"), target="cuda",
                     out=lines.append)
    row = next(line for line in lines[::-1] if line.startswith("matmul512"))
    assert all(float(x.rstrip("%")) > 0 for x in row.split()[1:])  # the torch column too (PyTorch is there)
    assert lines[-1].startswith("geomean speedup vs MetaSchedule: ")
    assert (tmp_path / "k.sqlite.ms" / "matmul512").is_dir()  # MetaSchedule resumes from here


@pytest.mark.gpu
def test_model_bench_on_cuda_times_nestor_beside_torch():
    pytest.importorskip("onnx2torch")
    lines = []  # (squeezenet's Dropout-7 is one op onnx2torch lacks: its row would say so)
    bench.bench_models(["bert_layer"], repeat=3, target="cuda", out=lines.append)
    row = next(line for line in lines if line.startswith("bert_layer"))
    assert float(row.split()[-1]) < 1e-3  # max rel err of Nestor's outputs against PyTorch's
    assert lines[-1].startswith("geomean latency ratio vs PyTorch: ")


def test_cpu_kernel_table_keeps_its_columns():
    lines = []
    bk._print_table([("softmax", 1e-4, 2e-4, 2.0, 3, 4, 5e-5, None, 12.0)], lines.append)
    assert lines == ["kernel          nestor ms     ms ms speedup  tune s ms tune s   ort ms % of ort numpy ms  GFLOP/s",
                     "softmax             0.100     0.200    2.00       3         4    0.050      50%        -     12.0"]


def test_inference_dropouts_become_identities_for_the_torch_competitor():
    from onnx import TensorProto, checker, helper
    from nestor.bench import inference_dropouts_as_identity
    from nestor.zoo import light_model
    model = light_model("squeezenet")
    assert any(n.op_type == "Dropout" for n in model.graph.node)
    plain = inference_dropouts_as_identity(model)
    assert not any(n.op_type == "Dropout" for n in plain.graph.node)
    assert any(n.op_type == "Dropout" for n in model.graph.node)  # the original is left alone
    checker.check_model(plain)
    # a Dropout whose mask is read stays
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    masked = helper.make_model(helper.make_graph(
        [helper.make_node("Dropout", ["x"], ["y", "m"]), helper.make_node("Cast", ["m"], ["z"], to=1)],
        "g", [vi("x")], [vi("y"), vi("z")]), opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op_type for n in inference_dropouts_as_identity(masked).graph.node] == ["Dropout", "Cast"]


def test_the_wider_zoo_is_its_own_table_with_the_held_out_models_last():
    from nestor.bench import HELD_OUT, MODELS, SEEN, UNSEEN, example_model
    assert not set(SEEN) & set(UNSEEN) and MODELS == SEEN + UNSEEN
    assert UNSEEN[-len(HELD_OUT):] == HELD_OUT and len(UNSEEN) >= 9
    for name in UNSEEN:
        assert example_model(name).graph.node  # every name builds


def test_kernel_bench_tuning_resumes_up_to_the_trials_in_all(tmp_path):
    from nestor.api import import_onnx
    from nestor.autotune.records import Records
    (node,) = [n for n in import_onnx(SUITE["softmax"].onnx_model()).nodes if n.kernel is not None]
    records = str(tmp_path / "k.sqlite")
    first, _ = bk._tune_nestor(node.kernel, 4, records, as_target("cpu"))
    with Records(records) as r:
        done = r.count()
    again, _ = bk._tune_nestor(node.kernel, 4, records, as_target("cpu"))  # nothing left to measure
    with Records(records) as r:
        assert r.count() == done >= 4
    assert again is not None and again.to_json() == first.to_json()


def test_metaschedule_measurements_are_counted_from_its_database(tmp_path):
    assert bk._metaschedule_count(str(tmp_path)) == 0
    (tmp_path / "database_tuning_record.json").write_text('[1]\n[2]\n\n[3]\n')
    assert bk._metaschedule_count(str(tmp_path)) == 3


def test_kernel_bench_without_metaschedule_times_nestor_against_the_library(monkeypatch):
    monkeypatch.setattr(bk, "_tune_metaschedule", lambda *a: pytest.fail("MetaSchedule tuned"))
    lines = []
    share = bk.bench_kernels(["softmax"], trials=2, repeat=3, out=lines.append, metaschedule=False)
    row = lines[-2].split()
    assert row[0] == "softmax" and row[2:4] == ["-", "-"] and row[5] == "-"  # no MetaSchedule columns
    assert float(row[7].rstrip("%")) == pytest.approx(100 * share, abs=1)  # % of ONNX Runtime
    assert lines[-1] == f"geomean share of ONNX Runtime's speed: {share:.0%}"


def _saturated_classifier():
    """Gemm with large seeded weights, then Softmax: outputs of exact 0s and a 1, as the seeded
    ImageNet models give."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 100)).astype(np.float32) * 30, "W")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["prob"])],
        "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 100])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bench_models_checks_the_logits_and_fails_on_a_wrong_kernel(monkeypatch):
    """Saturated softmax outputs hide any error; the benchmark compares the logits before them,
    and a model whose logits are 1% off fails it."""
    import numpy as np
    monkeypatch.setattr(bench, "example_model", lambda name: _saturated_classifier())
    monkeypatch.setattr(bench, "interleaved_medians", lambda fns, repeat: [1e-3 for _ in fns])
    lines = []
    bench.bench_models(["squeezenet"], repeat=1, out=lines.append)
    row = next(line for line in lines if line.startswith("squeezenet"))
    assert float(row.split()[-1]) < 1e-5   # the err column: the logits checked, and right

    run = nestor.codegen.CompiledModel.run

    def wrong(self, inputs):   # a kernel 1% off: the logits change, the saturated softmax does not
        prob, logits = run(self, inputs)
        logits = logits * 1.01
        e = np.exp(logits - logits.max())
        return [e / e.sum(), logits]
    x = {"x": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    compiled = nestor.compile(bench.with_logits(_saturated_classifier()))
    right, off = run(compiled, x), wrong(compiled, x)
    assert right[0].max() == 1.0 and bench.output_error(off[:1], right[:1]) < 1e-20   # hidden in the softmax
    monkeypatch.setattr(nestor.codegen.CompiledModel, "run", wrong)
    with pytest.raises(NestorError, match=r"outputs differ from ONNX Runtime's by more than 0.001 .*: squeezenet"):
        bench.bench_models(["squeezenet"], repeat=1, out=lines.append)


def test_with_logits_adds_the_softmax_input_as_an_output():
    model = bench.with_logits(_saturated_classifier())
    assert [o.name for o in model.graph.output] == ["prob", "logits"]
    assert bench.output_error([[1.0, 2.0]], [[1.0, 2.0]]) == 0
    assert bench.output_error([[1.0, 2.02]], [[1.0, 2.0]]) == pytest.approx(0.01)


def test_kernel_bench_via_tvm_tunes_through_tune_tir_and_times_it_beside_nestors_own(tmp_path):
    """The third side: Nestor's strategy inside ms.tune_tir, its database in <records>.tvm/."""
    from tests.test_tvm_plugin import _unnamed_log_handlers_dropped
    _unnamed_log_handlers_dropped()
    lines = []
    records = str(tmp_path / "k.sqlite")
    bk.bench_kernels(["softmax"], trials=2, repeat=3, records=records, out=lines.append, metaschedule=False,
                     via_tvm=True)
    from nestor.autotune.records import Records
    from nestor.autotune.ms_database import records_path
    with Records(records_path(str(tmp_path / "k.sqlite.tvm" / "softmax"))) as via:
        assert via.count() == 2   # measured through MetaSchedule's flow, kept in Nestor's records there
    (row,) = [line for line in lines if line.startswith("softmax") and len(line.split()) == 5]
    t_tvm, vs_ms, vs_own = row.split()[1:4]
    assert float(t_tvm) > 0 and vs_ms == "-" and float(vs_own) > 0
    assert lines[-2].startswith("Nestor through ms.tune_tir: its time / Nestor's own tuning's ")


def test_onnx_runtime_gets_as_many_threads_as_nestor(monkeypatch):
    # A fixed 2 gave ONNX Runtime 2 of a 16-core machine's cores while Nestor's pool took all 16.
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y]))
    monkeypatch.setattr(bench, "host_cores", lambda: 5)
    assert bench.ort_session(model).get_session_options().intra_op_num_threads == 5
    assert bench.ort_session(model, threads=1).get_session_options().intra_op_num_threads == 1
