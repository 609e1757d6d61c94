"""Each pass: what it makes, when it refuses, and the registry that finds passes by name."""
import functools
import importlib.metadata
from dataclasses import dataclass

import numpy as np
import pytest
from onnx import TensorProto, helper

import nestor
from nestor.codegen import run_kernel
from nestor.ir import For, Kernel, parse_kernel, print_kernel, verify, walk_stmts
from nestor.passes import (Bind, parse_pipeline, Fuse, Parallel, Pass, PassNotFound, Reorder, ScheduleError, Split, Tile,
                           Unroll, Vectorize, canonical_loops, get_pass, list_passes, plugin_errors)
from nestor.passes import registry


# small kernels, shared with test_schedule: from the frontend (tiny ONNX models) and by hand

def _onnx(op, ins, out, **attrs):
    node = helper.make_node(op, list(ins), ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in ins.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (node,) = nestor.import_onnx(model).nodes
    return node.kernel


# Perfect nests with repeated loop names across the two nests (i, j in both).
MATMUL_PERFECT = """
kernel mm(A: f32[6, 10], B: f32[10, 12]) -> (C: f32[6, 12]) {
  for i in 0..6 { for j in 0..12 { C[i, j] = 0.0 } }
  for i in 0..6 { for j in 0..12 { for k in 0..10 reduce { C[i, j] += A[i, k] * B[k, j] } } }
}
"""
ELEMENTWISE = """
kernel ew(X: f32[4, 5, 8], Y: f32[8]) -> (Z: f32[4, 5, 8]) {
  for a in 0..4 { for b in 0..5 { for c in 0..8 { Z[a, b, c] = max(X[a, b, c] * Y[c] + 1.0, 0.0) } } }
}
"""


@functools.cache
def kernels():
    return {
        "matmul": _onnx("MatMul", {"X": [6, 10], "W": [10, 12]}, [6, 12]),
        "conv": _onnx("Conv", {"X": [1, 2, 6, 6], "W": [3, 2, 3, 3]}, [1, 3, 6, 6], pads=[1, 1, 1, 1]),
        "maxpool": _onnx("MaxPool", {"X": [1, 2, 6, 7]}, [1, 2, 3, 3], kernel_shape=[2, 2], strides=[2, 2]),
        "softmax": _onnx("Softmax", {"X": [3, 10]}, [3, 10], axis=-1),
        "mm_perfect": parse_kernel(MATMUL_PERFECT),
        "elementwise": parse_kernel(ELEMENTWISE),
    }


def inputs(kernel, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(b.shape).astype(b.dtype) for b in kernel.inputs]


def loops(kernel):
    return [(s.var, s.extent, s.kind) for s in walk_stmts(kernel.body) if isinstance(s, For)]


def same_results(a, b, rtol=1e-5):
    args = inputs(a)
    for x, y in zip(run_kernel(a, args), run_kernel(b, args)):
        np.testing.assert_allclose(y, x, rtol=rtol, atol=1e-5)


def checked(kernel):
    verify(kernel)
    assert parse_kernel(print_kernel(kernel)) == kernel
    return kernel


# what the passes make

def test_split_names_and_guard():
    k = kernels()["matmul"]
    out = checked(Split("i1", 5).apply(k))
    assert loops(out)[1:3] == [("i1_o", 3, "serial"), ("i1_i", 5, "serial")]
    assert "if i1_o * 5 + i1_i < 12" in print_kernel(out)
    assert "if" not in print_kernel(checked(Split("i1", 4).apply(k)))  # 4 divides 12: no guard
    same_results(k, out)


def test_split_names_stay_unique():
    k = Split("i1", 4).apply(kernels()["matmul"])
    out = checked(Split("i1_o", 3).apply(Split("i1_i", 2).apply(k)))
    names = [v for v, _, _ in loops(out)]
    assert len(names) == len(set(names))
    assert {"i1_o_o", "i1_o_i", "i1_i_o", "i1_i_i"} <= set(names)


def test_tile_orders_levels_and_handles_remainders():
    k = kernels()["matmul"]
    out = checked(Tile(("i0", "i1"), ((4,), (8,))).apply(k))
    assert [v for v, _, _ in loops(out)] == ["i0_o", "i1_o", "i0_i", "i1_i", "r0"]
    same_results(k, out)
    three = checked(Tile(("i0", "i1"), ((2,), (2, 3))).apply(k))
    assert [v for v, _, _ in loops(three)][:5] == ["i0_o", "i1_o", "i0_i", "i1_i0", "i1_i1"]
    same_results(k, three)


def test_split_by_one_then_reorder_is_legal():
    # i0 = i0_o * 1 + i0_i with i0_i of one iteration: the store index still tells iterations apart
    k = kernels()["matmul"]
    out = checked(parse_pipeline("split(i0, 1); reorder(i1, i0_o, i0_i)").apply(k))
    assert [v for v, _, _ in loops(out)][:3] == ["i1", "i0_o", "i0_i"]
    same_results(k, out)


def test_reorder_reduction_loops_and_spatial_inside_reduction():
    k = canonical_loops(kernels()["mm_perfect"])  # loops i0 i1 | i2 i3 r0
    out = checked(Reorder(("i2", "r0", "i3")).apply(k))
    assert [v for v, _, _ in loops(out)][2:] == ["i2", "r0", "i3"]
    same_results(k, out)
    conv = canonical_loops(kernels()["conv"])
    out = checked(Reorder(("r2", "r0", "r1")).apply(conv))
    same_results(conv, out, rtol=1e-4)


def test_fuse_rewrites_indices():
    k = kernels()["elementwise"]
    out = checked(Fuse("a", "b").apply(k))
    assert loops(out)[0] == ("a_b", 20, "serial")
    assert "Z[a_b // 5, a_b % 5, c]" in print_kernel(out)
    same_results(k, out)
    # a fused loop still parallelizes: (f // 5, f % 5) determines f
    same_results(k, checked(Parallel("a_b").apply(out)))


def test_annotations():
    k = kernels()["elementwise"]
    out = checked(Unroll("b").apply(Vectorize("c").apply(Parallel("a").apply(k))))
    assert [kind for _, _, kind in loops(out)] == ["parallel", "unrolled", "vectorized"]
    same_results(k, out)
    gpu = checked(Bind("b", "threadIdx.x").apply(Bind("a", "blockIdx.x").apply(k)))
    assert [kind for _, _, kind in loops(gpu)][:2] == ["blockIdx.x", "threadIdx.x"]


def test_vectorize_under_a_split_guard():
    k = kernels()["elementwise"]
    out = checked(Vectorize("c_i").apply(Split("c", 3).apply(k)))
    same_results(k, out)


# refusals: illegal steps raise ScheduleError naming the step, the loop and the reason

HAZARDS = """
kernel hazards(X: f32[8, 8]) -> (Y: f32[16], S: f32[8], P: f32[9]) {
  for i in 0..8 { for j in 0..8 { Y[i + j] = X[i, j] } }
  for a in 0..8 { for b in 0..8 { S[b] = S[b] * 0.5 + X[a, b] } }
  P[0] = 0.0
  for c in 0..8 { P[c + 1] = P[c] + X[c, 0] }
}
"""


@pytest.mark.parametrize("step,loop,reason", [
    (Reorder(("j", "i")), "i", "may be the same element"),          # Y[i + j]: last writer changes
    (Parallel("i"), "i", "not independent"),
    (Reorder(("b", "a")), None, None),                              # legal: each S[b] keeps its a-order
    (Parallel("a"), "a", "not independent"),                        # S[b] written by every a
    (Parallel("b"), None, None),
    (Parallel("c"), "c", "different indices"),                      # P[c + 1] = P[c] + ...: a recurrence
    (Vectorize("c"), "c", "different indices"),
    (Fuse("j", "i"), "j", "name the outer loop first"),
    (Split("i", 9), "i", "at most the extent"),
    (Split("i", 0), "i", "positive"),
    (Split("q", 2), "q", "no such loop"),
    (Reorder(("i", "b")), "b", "perfectly nested"),
    (Vectorize("i"), "i", "not innermost"),
    (Bind("b", "warp.x"), "b", "unknown GPU axis"),
])
def test_hazards(step, loop, reason):
    k = parse_kernel(HAZARDS)
    if reason is None:
        checked(step.apply(k))
        return
    with pytest.raises(ScheduleError) as info:
        step.apply(k)
    assert info.value.loop == loop and reason in info.value.reason
    assert str(info.value).startswith(f"{step}: loop {loop}:")


def test_axis_and_annotation_rules():
    k = kernels()["matmul"]
    with pytest.raises(ScheduleError, match="reduce loop; only spatial"):
        Parallel("r0").apply(k)
    with pytest.raises(ScheduleError, match="only loops of one axis kind fuse"):
        Fuse("i2", "r0").apply(Reorder(("i2", "r0", "i3")).apply(canonical_loops(kernels()["mm_perfect"])))
    with pytest.raises(ScheduleError, match="already parallel"):
        Split("i0", 2).apply(Parallel("i0").apply(k))
    with pytest.raises(ScheduleError, match="loop i0 around or inside it is already parallel"):
        Parallel("i1").apply(Parallel("i0").apply(k))
    with pytest.raises(ScheduleError, match="exceeds 64"):
        Unroll("i").apply(parse_kernel("kernel u() -> (Y: f32[100]) { for i in 0..100 { Y[i] = 1.0 } }"))
    with pytest.raises(ScheduleError, match="perfectly nested"):  # init store sits between i1 and r0
        Reorder(("r0", "i1")).apply(k)


def test_repeated_names_need_an_occurrence():
    k = kernels()["mm_perfect"]
    with pytest.raises(ScheduleError, match=r"2 loops are named i; say which with i#0..i#1"):
        Split("i", 2).apply(k)
    out = checked(Split("i#1", 2).apply(k))
    assert [v for v, _, _ in loops(out)] == ["i", "j", "i_o", "i_i", "j", "k"]
    with pytest.raises(ScheduleError, match="numbered #0..#1"):
        Split("i#2", 2).apply(k)


def test_passes_do_not_mutate_and_spaces_are_legal():
    for k in kernels().values():
        k = canonical_loops(k)
        before = print_kernel(k)
        for cls in list_passes().values():
            for step in cls.schedule_space(k):
                checked(step.apply(k))
        assert print_kernel(k) == before


def test_schedule_spaces_offer_what_they_promise():
    k = kernels()["elementwise"]
    assert {str(s) for s in Split.schedule_space(k) if s.loop == "c"} == {"split(c, 2)", "split(c, 4)"}
    assert [str(s) for s in Vectorize.schedule_space(k)] == ["vectorize(c)"]
    assert len(Reorder.schedule_space(k)) == 1 + 5 + 1  # (a b), (a b c), (b c)
    mm = kernels()["matmul"]
    assert not Vectorize.schedule_space(mm)  # innermost is a reduction
    assert "parallel(r0)" not in {str(s) for s in Parallel.schedule_space(mm)}


# registry and plugins

@dataclass(frozen=True)
class Touch(Pass):
    """A plugin pass for the tests: checks that a loop exists, changes nothing."""
    name = "touch"
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        if self.loop not in {v for v, _, _ in loops(kernel)}:
            raise self.fail(self.loop, "no such loop")
        return kernel


@pytest.fixture
def plugins(monkeypatch):
    group = registry.GROUP
    eps = [importlib.metadata.EntryPoint("touch", "tests.test_passes:Touch", group),
           importlib.metadata.EntryPoint("broken", "no_such_module_for_nestor:Thing", group),
           importlib.metadata.EntryPoint("clash", "nestor.passes:Split", group)]
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group=None: eps)
    registry._plugins.cache_clear()
    yield
    registry._plugins.cache_clear()


def test_builtins_are_registered():
    passes = list_passes()
    assert {"split", "tile", "reorder", "fuse", "parallel", "vectorize", "unroll", "bind"} <= set(passes)
    assert passes["split"].parameters() == {"loop": str, "factor": int}
    with pytest.raises(PassNotFound, match="unknown pass .splt.; known passes: bind, cache_read"):
        get_pass("splt")


def test_plugins_load_and_broken_ones_are_isolated(plugins):
    with pytest.warns(UserWarning) as caught:
        passes = list_passes()
    assert sorted(str(w.message).split()[2] for w in caught) == ["'broken'", "'clash'"]
    assert passes["touch"] is Touch and passes["split"] is Split
    errors = plugin_errors()
    assert "ModuleNotFoundError" in errors["broken"] and "already taken" in errors["clash"]
    with pytest.raises(PassNotFound, match=r"pass plugin 'broken' \(no_such_module_for_nestor:Thing"):
        get_pass("broken")
    from nestor.passes import parse_pipeline
    k = kernels()["elementwise"]
    assert parse_pipeline("touch(i0); split(i0, 2)").apply(k) == Split("i0", 2).apply(canonical_loops(k))


TILED_MATMUL = """
kernel mm(A: f32[16, 24], B: f32[24, 32]) -> (Out: f32[16, 32]) {
  for i0 in 0..16 { for i1 in 0..32 {
    Out[i0, i1] = 0.0
    for r0 in 0..24 reduce { Out[i0, i1] += A[i0, r0] * B[r0, i1] }
  } }
}
"""


def test_a_fused_loop_over_register_tiles_runs_in_parallel():
    """The fused outer loop reaches its tile only through f // 4 and f % 4 (its copy loops
    index Out[f // 4 * 4 + w0, f % 4 * 8 + w1]): the dependence test reads the pair it came
    from, so parallel (and a GPU block binding after a split) is legal, and results hold."""
    kernel = parse_kernel(TILED_MATMUL)
    tiled = parse_pipeline("split(i0, 4); split(i1, 8); reorder(i0_o, i1_o, i0_i, i1_i); cache_write(Out, i1_o); "
                           "fuse(i0_o, i1_o); parallel(i0_o_i1_o)").apply(kernel)
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(tiled, args)[0], args[0] @ args[1], rtol=1e-4, atol=1e-4)
    bound = parse_pipeline("fuse(i0, i1); split(i0_i1, 64); bind(i0_i1_o, blockIdx.x); "
                           "bind(i0_i1_i, threadIdx.x)").apply(kernel)
    assert {s.kind for s in walk_stmts(bound.body) if isinstance(s, For)} >= {"blockIdx.x", "threadIdx.x"}


def test_a_fused_loop_whose_iterations_share_an_element_stays_serial():
    # its low part (i1) does not reach the output: four iterations write each Out[f // 4]
    kernel = parse_kernel("""
kernel last(X: f32[8, 4]) -> (Out: f32[8]) {
  for i0 in 0..8 { for i1 in 0..4 { Out[i0] = X[i0, i1] } }
}""")
    with pytest.raises(ScheduleError, match="not independent"):
        parse_pipeline("fuse(i0, i1); parallel(i0_i1)").apply(kernel)
