"""TIR PrimFuncs (te.create_prim_func, MetaSchedule's Relax tasks) imported as Nestor kernels:
each built by Nestor must compute what TVM's build of the PrimFunc computes."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm import s_tir, te, topi

from nestor.codegen.tir_import import TIRImportError, kernel_from_primfunc
from nestor.ir import ModelError, parse_kernel, print_kernel

from .tir_harness import check_import, relax_tasks


def _matmul(m=24, k=16, n=20):
    a, b = te.placeholder((m, k), name="A"), te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), "k")
    return a, b, te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")


def test_matmul():
    kernel = check_import(te.create_prim_func(list(_matmul())))
    assert [b.name for b in kernel.inputs] == ["A", "B"] and [b.name for b in kernel.outputs] == ["C"]
    assert parse_kernel(print_kernel(kernel)) == kernel


def test_padded_strided_conv2d():
    x, w = te.placeholder((1, 3, 15, 15), name="X"), te.placeholder((8, 3, 3, 3), name="W")
    y = topi.nn.conv2d_nchw(x, w, stride=2, padding=1, dilation=1)
    kernel = check_import(te.create_prim_func([x, w, y]), "conv")
    assert "pad_temp" in print_kernel(kernel)  # the padded input is a stage of the kernel


def test_softmax():
    x = te.placeholder((4, 33), name="X")
    check_import(te.create_prim_func([x, topi.nn.softmax(x, axis=-1)]))


def test_layer_norm():
    x, g, b = (te.placeholder(s, name=n) for s, n in (((6, 40), "X"), ((40,), "G"), ((40,), "Beta")))
    check_import(te.create_prim_func([x, g, b, topi.nn.layer_norm(x, g, b, axis=[1], epsilon=1e-5)]))


def test_fused_elementwise_chain():
    a, b = te.placeholder((3, 17), name="A"), te.placeholder((17,), name="B")
    s = te.compute(a.shape, lambda i, j: a[i, j] * 2.0 + b[j], name="S")
    r = topi.nn.relu(s)
    out = te.compute(a.shape, lambda i, j: te.exp(r[i, j]) - te.sigmoid(s[i, j]), name="Out")
    check_import(te.create_prim_func([a, b, out]))


def test_scheduled_primfunc_with_split_tail_and_reduce_loop_outside():
    """A split that does not divide (a predicate) and the reduce loop moved above spatial loops:
    the init runs before the reduce loop, over those spatial loops, under the predicate."""
    sch = s_tir.Schedule(te.create_prim_func(list(_matmul(m=10, k=8, n=5))))
    i, j, k = sch.get_loops(sch.get_sblock("C"))
    io, ii = sch.split(i, [None, 4])
    sch.reorder(io, k, ii, j)
    sch.parallel(io)
    check_import(sch.mod["main"])


def test_decomposed_reduction_is_still_a_reduction():
    """decompose_reduction makes the init a block of its own; the update stays a `+=` store."""
    sch = s_tir.Schedule(te.create_prim_func(list(_matmul())))
    block = sch.get_sblock("C")
    sch.decompose_reduction(block, sch.get_loops(block)[-1])
    kernel = check_import(sch.mod["main"])
    assert "C[i, j] += " in print_kernel(kernel)


def _conv_relu_matmul_model():
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    m = numpy_helper.from_array(rng.standard_normal((4 * 8 * 8, 10)).astype(np.float32), "M")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "M"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              initializer=[w, m])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_relax_tasks_of_a_small_model():
    tasks = relax_tasks(_conv_relu_matmul_model())
    assert len(tasks) >= 3
    for name, func in tasks:
        check_import(func, name)


def test_unsupported_block_is_one_line_error_naming_it():
    x = te.placeholder((2, 5), name="X")
    func = te.create_prim_func([x, topi.argmax(x, axis=1)])  # a two-value reduction with lets
    with pytest.raises(TIRImportError, match=r"block 'X_red_temp'") as err:
        kernel_from_primfunc(func, "argmax")
    assert isinstance(err.value, ModelError) and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet50", "bert_layer"])
def test_every_task_of_model_imports_and_matches(model):
    from nestor.bench import example_model
    tasks = relax_tasks(example_model(model))
    for name, func in tasks:
        check_import(func, name, rtol=1e-4, atol=1e-4)


def test_cpu_sketch_schedules_imported_kernels():
    """The tuner's space takes imported kernels: sampled schedules keep their results."""
    import random

    from nestor.autotune.space import Sketch
    from nestor.codegen import host_target, machine_params, run_kernel

    from .tir_harness import random_inputs
    for name, func in relax_tasks(_conv_relu_matmul_model()):
        kernel = kernel_from_primfunc(func, name)
        sketch = Sketch.of(kernel, machine_params(host_target()), strict=True)
        args = random_inputs(kernel)
        want = run_kernel(kernel, args)
        rng = random.Random(0)
        for _ in range(2):
            schedule, scheduled = sketch.realize(sketch.sample(rng))
            for got, w in zip(run_kernel(scheduled, args), want):
                np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4, err_msg=str(schedule))


@pytest.mark.slow
def test_short_tune_of_an_imported_task(tmp_path):
    from nestor.autotune.budget import Budget
    from nestor.autotune.tune import tune_kernels
    from nestor.bench import example_model
    name, func = next(t for t in relax_tasks(example_model("bert_layer")) if t[0] == "fused_matmul_add")
    (task,) = tune_kernels({name: kernel_from_primfunc(func, name)}, Budget(8),
                           records_path=str(tmp_path / "records.sqlite"), show_progress=False)
    assert task.trials == 8 and task.errors == 0 and task.best is not None
