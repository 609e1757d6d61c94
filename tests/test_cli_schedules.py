"""Schedules from the CLI and the API: `nestor passes`, schedule files and pipeline strings."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor.api import import_onnx, scheduler
from nestor.autotune.space import Sketch, untuned_schedule
from nestor.codegen import cuda_target, host_target, machine_params
from nestor.cli import main
from nestor.ir import print_kernel, structural_hash
from nestor.passes import default_schedule
from nestor.passes.model_schedule import ModelSchedule, ModelScheduleError, load_model_schedule
from nestor.passes.registry import BUILTINS
from tests.test_passes import _onnx

WEIGHT = np.random.default_rng(0).standard_normal((32, 48)).astype(np.float32)


def matmul_relu_model() -> onnx.ModelProto:
    """x[16, 32] @ W -> Relu -> Relu: nodes mm, act1, act2 (kernels matmul, relu, relu; the
    two relus are structurally equal, so one kernel). Every intermediate is also an output, so
    fusion leaves the three nodes apart."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="act1"),
             helper.make_node("Relu", ["r"], ["y"], name="act2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 32])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [16, 48]) for n in "yhr"],
                              [numpy_helper.from_array(WEIGHT, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(matmul_relu_model(), str(path))
    return str(path)


def schedule_file(tmp_path, content) -> str:
    path = tmp_path / "sched.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


GOOD = {"kernels": {"mm": "split(i0, 4); parallel(i0_o)",
                    "act1": [{"pass": "vectorize", "params": {"loop": "i1"}}]}}


def test_passes_lists_every_builtin(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in BUILTINS:
        assert f"\n  {name}(" in out
    assert "split(loop: str, factor: int)" in out


def test_compile_with_schedule_file_matches_default(tmp_path, model, capsys):
    sched = schedule_file(tmp_path, GOOD)
    out = str(tmp_path / "mlp.nestor")
    assert main(["compile", model, "--schedule", sched, "-o", out]) == 0
    x = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    got = nestor.load(out).run({"x": x})[0]
    np.testing.assert_allclose(got, nestor.compile(model).run({"x": x})[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, np.maximum(x @ WEIGHT, 0), rtol=1e-4, atol=1e-4)
    via_api = nestor.compile(model, schedule=load_model_schedule(sched)).run({"x": x})[0]
    np.testing.assert_allclose(via_api, got, rtol=1e-6)


def test_ir_prints_scheduled_nests(tmp_path, model, capsys):
    assert main(["ir", model, "--schedule", schedule_file(tmp_path, GOOD), "--node", "mm"]) == 0
    out = capsys.readouterr().out
    assert "# node 'mm'" in out and "for i0_o in 0..4 parallel" in out and "act1" not in out
    assert main(["ir", model, "--schedule", "vectorize(i1)", "--node", "act2"]) == 0
    assert "for i1 in 0..48 vectorized" in capsys.readouterr().out
    for plain in ("none", "default", "basic"):
        assert main(["ir", model, "--schedule", plain]) == 0
        assert capsys.readouterr().out.count("# node ") == 3


def test_untuned_default_is_the_rules_first_seed_on_a_cpu_and_basic_on_a_gpu():
    graph = import_onnx(matmul_relu_model())
    mm = next(n.kernel for n in graph.nodes if n.name == "mm")
    sketch = Sketch.of(mm, machine_params(host_target()))
    seeded = sketch.realize(sketch.rule_decisions()[0])[1]
    assert scheduler("default", graph)(mm) == seeded != scheduler("basic", graph)(mm)
    assert "cache_write" in str(sketch.schedule(sketch.rule_decisions()[0]))  # a register tile
    assert scheduler("basic", graph)(mm) == default_schedule(mm, machine_params(host_target()))
    gpu = machine_params(cuda_target())
    assert scheduler("default", graph, target=cuda_target())(mm) == default_schedule(mm, gpu)
    # where an output reduces a handful of elements or none, the basic schedule
    relu = next(n.kernel for n in graph.nodes if n.name == "act1")
    lrn = _onnx("LRN", {"X": [1, 8, 6, 6]}, [1, 8, 6, 6], size=5)
    for kernel in (relu, lrn):
        assert untuned_schedule(kernel, machine_params(host_target())) == scheduler("basic", graph)(kernel)


def test_selectors_by_kernel_name_and_hash():
    graph = import_onnx(matmul_relu_model())
    kernels = {n.name: n.kernel for n in graph.nodes}
    prefix = structural_hash(kernels["mm"])[:8]
    sched = ModelSchedule.from_data({"kernels": {prefix: "parallel(i0)", "relu": "vectorize(i1)"}}, "s.json")
    apply = sched.scheduler_for(graph)
    assert "for i0 in 0..16 parallel" in print_kernel(apply(kernels["mm"]))
    assert "vectorized" in print_kernel(apply(kernels["act2"]))  # kernel name `relu` covers both
    # a node name beats a kernel name; an empty list leaves the kernel unscheduled
    sched = ModelSchedule.from_data({"kernels": {"relu": "vectorize(i1)", "act2": []}}, "s.json")
    assert "vectorized" not in print_kernel(sched.scheduler_for(graph)(kernels["act1"]))
    # a bare pipeline string applies to every kernel
    sched = ModelSchedule.from_data("parallel(i0)", "s.json").scheduler_for(graph)
    assert all("parallel" in print_kernel(sched(k)) for k in kernels.values())


def test_structurally_equal_nodes_must_agree():
    graph = import_onnx(matmul_relu_model())
    sched = ModelSchedule.from_data({"kernels": {"act1": "vectorize(i1)", "act2": "parallel(i0)"}}, "s.json")
    with pytest.raises(ModelScheduleError, match="structurally equal"):
        sched.scheduler_for(graph)


@pytest.mark.parametrize("content, expected", [
    ({"kernels": {"nope": []}}, "selector 'nope' matches no kernel; node names: mm, act1, act2; "
                                "kernel names: matmul, relu"),
    ({"kernels": {"mm": "split(i9, 4)"}}, "sched.json: node 'mm': split(i9, 4): loop i9: no such loop"),
    ({"kernels": {"mm": [{"pass": "spilt", "params": {}}]}}, "kernels['mm']: unknown pass 'spilt'"),
    ({"kernel": {}}, "expected {\"kernels\""),
    ('{"kernels": ', "sched.json' is not valid JSON"),
])
def test_schedule_file_errors_are_one_line(tmp_path, model, capsys, content, expected):
    assert main(["compile", model, "--schedule", schedule_file(tmp_path, content)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nestor: error: ") and err.count("\n") == 1, err
    assert expected in err


def test_missing_schedule_file(model, capsys):
    assert main(["ir", model, "--schedule", "no_such.json"]) == 1
    assert "schedule file 'no_such.json' does not exist" in capsys.readouterr().err
