"""distribute, cache_write, cache_read and pack: what they make, that results are kept, when they
refuse; and the compile-time packing of constant weights."""
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor.codegen import run_kernel
from nestor.codegen.constant_stages import hoist_constant_stages
from nestor.ir import Allocate, Store, parse_kernel, walk_stmts
from nestor.passes import (CacheRead, CacheWrite, Distribute, Pack, ScheduleError, canonical_loops,
                           inline_copies, parse_pipeline)
from nestor.passes.region import simplify_divmod
from nestor.ir import Var
from tests.test_passes import _onnx, checked, inputs, kernels, same_results


def scheduled(kernel, text):
    return checked(parse_pipeline(text).apply(kernel))


def allocations(kernel):
    return {s.buffer.name: (s.buffer.shape, s.buffer.scope) for s in walk_stmts(kernel.body)
            if isinstance(s, Allocate)}


# the register-tile matmul of examples/manual_schedules.py, on sizes that do and do not divide
MATMUL_TILED = """split(i0, 4); split(i1, 8); reorder(i1_o, i0_o, i0_i, i1_i);
    cache_write(Out, i0_o); distribute(i0_i); reorder(r0, i0_i_1, i1_i_1); cache_read(B, i1_o);
    parallel(i1_o); unroll(i0_i); vectorize(i1_i); unroll(i0_i_1); vectorize(i1_i_1);
    unroll(Out_w0); vectorize(Out_w1); vectorize(B_c1)"""


@pytest.mark.parametrize("m, k, n", [(16, 24, 32), (6, 10, 12)])
def test_register_tiled_matmul_keeps_results(m, k, n):
    kernel = _onnx("MatMul", {"X": [m, k], "W": [k, n]}, [m, n])
    out = scheduled(kernel, MATMUL_TILED)
    assert allocations(out) == {"B_local": ((k, 8), "local"), "Out_local": ((4, 8), "local")}
    same_results(kernel, out)
    x, w = inputs(kernel)
    np.testing.assert_allclose(run_kernel(out, [x, w])[0], x @ w, rtol=1e-5, atol=1e-5)


def test_cache_write_without_an_initializing_store_copies_the_tile_in():
    # Out is first updated (+=) inside i0_o: the tile must start from Out's current values.
    kernel = kernels()["mm_perfect"]
    out = scheduled(kernel, "split(i2, 2); cache_write(C, i2_o)")
    text = str(out)
    assert any(isinstance(s, Store) and s.buffer.name == "C_local" and "C_r" in repr(s.indices)
               for s in walk_stmts(out.body)), text
    same_results(kernel, out)


# the conv of examples/manual_schedules.py: output channels in the vector lanes, so the local
# tile is laid out channels last (cache_write's order) and the weights are packed OIHW -> OIHW16o
CONV_CHANNELS_LAST = """split(i5, 4); split(i6, 2); split(i7, 3); reorder(i5_o, i6_o, i7_o, i6_i, i7_i, i5_i);
    cache_write(Out, i7_o, [0, 2, 3, 1]); distribute(i6_i); reorder(r0, r1, r2, i6_i_1, i7_i_1, i5_i_1);
    pack(W, 0, 4, [0, 2, 3, 4, 1]); parallel(i5_o); unroll(i6_i_1); unroll(i7_i_1); vectorize(i5_i_1);
    unroll(i6_i); unroll(i7_i); vectorize(i5_i); unroll(Out_w1); unroll(Out_w2); vectorize(Out_w3)"""


@pytest.mark.parametrize("size", [6, 7])  # 7: the 3-column tiles need guards
def test_cache_write_order_lays_the_tile_out_channels_last(size):
    kernel = _onnx("Conv", {"X": [1, 3, size, size], "W": [8, 3, 3, 3]}, [1, 8, size, size], pads=[1, 1, 1, 1])
    out = scheduled(canonical_loops(kernel), CONV_CHANNELS_LAST)
    assert allocations(out)["Out_local"] == ((1, 2, 3, 4), "local")
    same_results(kernel, out)


def test_cache_write_order_must_be_a_permutation():
    kernel = canonical_loops(kernels()["matmul"])
    with pytest.raises(ScheduleError, match=r"order \[0, 0\] is not a permutation"):
        CacheWrite("Out", "i0", (0, 0)).apply(kernel)


def test_cache_write_refuses_a_loop_without_the_buffer_and_a_strided_tile():
    kernel = canonical_loops(kernels()["matmul"])
    with pytest.raises(ScheduleError, match=r"cache_write\(A, i0\): loop i0: A is not written inside it"):
        CacheWrite("A", "i0").apply(kernel)
    strided = parse_kernel("""
    kernel s(A: f32[8]) -> (B: f32[16]) {
      for i in 0..4 { for j in 0..2 { B[i * 4 + j * 2] = A[i * 2 + j] } }
    }""")
    with pytest.raises(ScheduleError, match="does not walk a dense tile"):
        CacheWrite("B", "i").apply(strided)


def test_cache_read_copies_the_region_in_the_order_asked():
    kernel = kernels()["conv"]  # Out[i4.., ...] += X_pad[i4, r0, i6 + r1, i7 + r2] * W[i5, r0, r1, r2]
    out = scheduled(kernel, "split(i7, 3); cache_read(X_pad, i7_o, local, [0, 2, 3, 1])")
    # one output column block of 3 reads a 1 x 2 x 3 x 5 window (rows i6 + r1: 3; columns 3 + 2 - 1)
    assert allocations(out)["X_pad_local"] == ((1, 3, 5, 2), "local")
    same_results(kernel, out)


def test_cache_read_refusals():
    kernel = canonical_loops(kernels()["matmul"])
    with pytest.raises(ScheduleError, match="Out is written inside it"):
        CacheRead("Out", "i0").apply(kernel)
    with pytest.raises(ScheduleError, match=r"order \[0\] is not a permutation"):
        CacheRead("B", "i0", "local", (0,)).apply(kernel)
    with pytest.raises(ScheduleError, match="scope 'texture' is not one of local, shared"):
        CacheRead("B", "i0", "texture").apply(kernel)


def test_cache_read_into_shared_memory_for_gpus():
    out = scheduled(kernels()["matmul"], "split(i1, 4); cache_read(B, i1_o, shared)")
    assert allocations(out)["B_shared"] == ((10, 4), "shared")


def test_distribute_splits_a_nest_and_renames_the_copies():
    kernel = kernels()["matmul"]
    out = scheduled(kernel, "distribute(i0)")
    text = str(out)
    assert [s.var for s in walk_stmts(out.body) if hasattr(s, "var")] == ["i0", "i1", "i0_1", "i1_1", "r0"]
    same_results(kernel, out)


def test_distribute_refuses_when_a_later_statement_feeds_an_earlier_one():
    k = parse_kernel("""
    kernel d(A: f32[8]) -> (B: f32[9], C: f32[8]) {
      for i in 0..8 {
        C[i] = B[i]
        B[i + 1] = A[i]
      }
    }""")
    with pytest.raises(ScheduleError, match="B is accessed at different indices"):
        Distribute("i").apply(k)
    with pytest.raises(ScheduleError, match="holds no sequence of statements"):
        Distribute("i0").apply(canonical_loops(kernels()["elementwise"]))


def test_pack_blocks_a_weight_and_simplifies_the_tiled_index():
    kernel = kernels()["conv"]
    out = scheduled(kernel, "split(i5, 3); pack(W, 0, 3, [0, 2, 3, 4, 1])")
    assert allocations(out)["W_packed"] == ((1, 2, 3, 3, 3), "global")
    assert "W_packed[i5_o, r0, r1, r2, i5_i]" in str(out).replace("\n", " ") or \
        "W_packed[i5_o, r0, r1, r2, i5_i]" in __import__("nestor").ir.print_kernel(out)
    same_results(kernel, out)
    with pytest.raises(ScheduleError, match="factor 2 does not divide dimension 0"):
        Pack("W", 0, 2).apply(canonical_loops(kernel))
    with pytest.raises(ScheduleError, match="X_pad is not an input"):
        Pack("X_pad", 0, 1).apply(canonical_loops(kernel))


def test_simplify_divmod_needs_the_remainder_range():
    e = Var("a") * 16 + Var("b")
    assert simplify_divmod(e // 16, {"a": 4, "b": 16}) == Var("a")
    assert simplify_divmod(e % 16, {"a": 4, "b": 16}) == Var("b")
    assert simplify_divmod(e // 16, {"a": 4, "b": 17}) == e // 16  # b may carry into a


def test_new_passes_print_and_parse_back():
    text = "cache_write(Out, i0_o); cache_read(B, i1_o, shared, 1, 0); pack(W, 0, 4, 0, 2, 3, 4, 1); distribute(i0)"
    s = parse_pipeline(text)
    assert str(s) == text and parse_pipeline(str(s)) == s
    assert s.steps[1] == CacheRead("B", "i1_o", "shared", (1, 0))
    assert parse_pipeline("cache_read(B, i1_o)").steps[0] == CacheRead("B", "i1_o", "local", ())


# packed constants at compile time

def _conv_model():
    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["X", "W"], ["H"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["H", "W2"], ["Y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 6, 6]),
         helper.make_tensor_value_info("W2", TensorProto.FLOAT, [4, 8, 3, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, 6, 6])],
        initializer=[numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_packing_of_constant_weights_runs_at_compile_time(tmp_path):
    import onnxruntime as ort
    model = _conv_model()
    compiled = nestor.compile(model, schedule="pack(W, 0, 4, [0, 2, 3, 4, 1])", blocked=False)
    # the constant W is replaced by its packed copy; W2 is an input, so its packing stays inside
    assert [(n, v.shape) for n, v in compiled.constants.items()] == [("Conv_0:W_packed", (2, 4, 3, 3, 4))]
    rng = np.random.default_rng(1)
    feeds = {"X": rng.standard_normal((1, 4, 6, 6), dtype=np.float32),
             "W2": rng.standard_normal((4, 8, 3, 3), dtype=np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(compiled.run(feeds)[0], want, rtol=1e-4, atol=1e-4)
    compiled.save(tmp_path / "m.nestor")
    np.testing.assert_allclose(nestor.load(str(tmp_path / "m.nestor")).run(feeds)[0], want, rtol=1e-4, atol=1e-4)


def test_hoisting_leaves_stages_that_read_runtime_inputs():
    kernel = scheduled(kernels()["conv"], "pack(W, 0, 3)")
    same, stages, kept = hoist_constant_stages(kernel, constant=set())
    assert same == kernel and stages == [] and kept == [0, 1]
    peeled, stages, kept = hoist_constant_stages(kernel, constant={1})
    assert [s.kernel.outputs[0].name for s in stages] == ["W_packed"] and kept == [0]
    assert [b.name for b in peeled.inputs] == ["X", "W_packed"]
    x, w = inputs(kernels()["conv"])
    packed = run_kernel(stages[0].kernel, [w])[0]
    np.testing.assert_allclose(run_kernel(peeled, [x, packed])[0], run_kernel(kernel, [x, w])[0], rtol=1e-6)


# compute_at and inline

@pytest.mark.parametrize("text", ["split(i7, 3); compute_at(X_pad, i7_o)", "compute_at(X_pad, i6)",
                                  "compute_at(X_pad, r0)", "inline(X_pad)"])
def test_conv_padding_moves_into_the_consumer_or_inlines(text):
    kernel = kernels()["conv"]
    out = scheduled(kernel, text)
    assert "X_pad" not in allocations(out)
    same_results(kernel, out)


STACK_SUM = """kernel stack_sum(A: f32[4, 8], B: f32[4, 8]) -> (Out: f32[4, 8]) {
  alloc Bc: f32[4, 8] global {
    alloc S: f32[2, 4, 8] global {
      for i in 0..4 { for j in 0..8 { Bc[i, j] = B[i, j] } }
      for k in 0..2 { for i1 in 0..4 { for j1 in 0..8 { S[k, i1, j1] = select(k == 1, Bc[i1, j1], A[i1, j1]) } } }
      for i2 in 0..4 { for j2 in 0..8 { Out[i2, j2] = 0.0
        for r in 0..2 reduce { Out[i2, j2] += S[r, i2, j2] } } }
    }
  }
}"""
READ_TWICE = """kernel twice(A: f32[4, 8]) -> (Out: f32[4, 8]) {
  alloc E: f32[4, 8] global {
    for i in 0..4 { for j in 0..8 { E[i, j] = VALUE } }
    for i1 in 0..4 { for j1 in 0..8 { Out[i1, j1] = E[i1, j1] * E[i1, j1] } }
  }
}"""


@pytest.mark.parametrize("text, kept", [(STACK_SUM, {}), (READ_TWICE.replace("VALUE", "A[i, j] * 2.0"), {}),
                                        (READ_TWICE.replace("VALUE", "exp(A[i, j])"), {"E": ((4, 8), "global")})])
def test_inline_copies_inlines_stages_read_once_or_cheap_ones_read_twice(text, kept):
    kernel = parse_kernel(text)
    out = inline_copies(kernel)
    assert allocations(out) == kept
    same_results(kernel, out)


def test_inline_copies_keeps_a_convolutions_padding():
    kernel = kernels()["conv"]
    assert "X_pad" in allocations(inline_copies(kernel))


def test_compute_at_computes_only_the_region_an_iteration_reads():
    out = scheduled(kernels()["conv"], "split(i7, 3); compute_at(X_pad, i7_o)")
    # 3 output columns of a 3x3 conv read 5 padded columns and 3 rows, of both channels
    assert allocations(out) == {"X_pad_local": ((1, 2, 3, 5), "local")}


def test_softmax_stages_move_into_the_row_loop():
    kernel = kernels()["softmax"]
    # i4: the row loop of the last nest (Out = Exp / Sum); the exp nest follows the sum inside it
    out = scheduled(kernel, "compute_at(Sum, i4); compute_at(Exp, i4); compute_at(Max, i4); parallel(i4)")
    assert allocations(out) == {"Max_local": ((1, 1), "local"), "Exp_local": ((1, 10), "local"),
                                "Sum_local": ((1, 1), "local")}
    same_results(kernel, out)


@pytest.mark.parametrize("text, problem", [
    ("compute_at(Max, i4)", "loop i4: not every read of Max is inside it"),
    ("inline(Max)", "the producer of Max is not one elementwise store"),
    ("compute_at(Out, i4)", "Out is an input or output of the kernel"),
    ("compute_at(Sum, i3)", "loop i3: is a loop of the producer of Sum"),
])
def test_stage_moves_that_are_refused(text, problem):
    with pytest.raises(ScheduleError, match=re.escape(problem)):
        parse_pipeline(text).apply(kernels()["softmax"])


def test_a_producer_whose_input_is_overwritten_later_stays():
    k = parse_kernel("""
    kernel o(A: f32[4]) -> (B: f32[4], C: f32[4]) {
      alloc T: f32[4] global {
        for i in 0..4 { T[i] = A[i] * 2.0 }
        for j in 0..4 { B[j] = 0.0 }
        for k in 0..4 { C[k] = T[k] + B[k] }
      }
    }""")
    assert str(parse_pipeline("inline(T)").apply(k))  # B is written after, but T does not read B
    k2 = parse_kernel("""
    kernel o(A: f32[4]) -> (B: f32[4], C: f32[4]) {
      alloc T: f32[4] global {
        for i in 0..4 { T[i] = B[i] * 2.0 }
        for j in 0..4 { B[j] = A[j] }
        for k in 0..4 { C[k] = T[k] }
      }
    }""")
    with pytest.raises(ScheduleError, match="B, which the producer of T reads, is written after it"):
        parse_pipeline("inline(T)").apply(k2)


def test_gpu_schedule_with_a_shared_memory_tile_generates_cuda():
    import tvm
    from nestor.codegen import build, cuda_target
    kernel = kernels()["matmul"]  # Out[6, 12] = A[6, 10] @ B[10, 12]
    out = scheduled(kernel, "split(i0, 2); cache_read(B, i0_o, shared); bind(i0_o, blockIdx.x); "
                            "bind(B_c1, threadIdx.x); bind(i1, threadIdx.x)")
    assert allocations(out)["B_shared"] == ((10, 12), "shared")
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        pytest.skip("TVM built without CUDA codegen")
    try:
        mod = build([out], cuda_target())
    except Exception as err:  # e.g. nvcc missing
        pytest.skip(f"CUDA build unavailable: {err}")
    src = "".join(m.inspect_source() for m in mod.module.imports)
    assert "float B_shared_ptr[120]" in src and "__shared__" in src and "__syncthreads()" in src


@pytest.mark.parametrize("n", [8, 7])  # 7: the split does not divide, the tile's copies are guarded
def test_cache_write_outside_a_split_takes_its_loops_as_one_dimension(n):
    # a chunked reduction's outer accumulator: Out[i0, i1_o * 2 + i1_i] walks its row densely
    kernel = canonical_loops(_onnx("MatMul", {"X": [4, 16], "W": [16, n]}, [4, n]))
    out = scheduled(kernel, "split(i1, 2); cache_write(Out, i0)")
    assert allocations(out)["Out_local"] == ((1, 8), "local")
    same_results(kernel, out)
    skipping = parse_kernel("""
    kernel s(A: f32[24]) -> (B: f32[24]) {
      for i in 0..2 { for jo in 0..4 { for ji in 0..2 { B[i * 12 + jo * 3 + ji] = A[i * 12 + jo * 3 + ji] } } }
    }""")  # jo * 3 + ji with ji < 2 leaves holes
    with pytest.raises(ScheduleError, match="does not walk a dense tile"):
        CacheWrite("B", "i").apply(skipping)


SHARED_MATMUL = ("tile([i0, i1], [[2, 3], [2, 2]]); cache_write(Out, i1_i0); distribute(i0_i1); split(r0, 5); "
                 "reorder(r0_o, r0_i, i0_i1_1, i1_i1_1); bind(i0_i0, threadIdx.y); bind(i1_i0, threadIdx.x)")


def test_a_shared_copy_holds_what_all_threads_of_the_block_read():
    """Threads bound around it: the copy is the block's region, not one thread's tile."""
    kernel = kernels()["matmul"]  # A[6, 10] @ B[10, 12]
    out = scheduled(kernel, SHARED_MATMUL + "; cache_read(A, r0_o, shared); cache_read(B, r0_o, local)")
    shapes = allocations(out)
    assert shapes["A_shared"] == ((6, 5), "shared")   # 2 thread rows x 3 rows each, a chunk of 5
    assert shapes["B_local"] == ((5, 2), "local")     # one thread's 2 columns
    same_results(kernel, out)


def test_a_cooperative_copy_shares_the_block_threads_axis():
    kernel = kernels()["matmul"]
    base = SHARED_MATMUL + "; cache_read(A, r0_o, shared); fuse(A_c0, A_c1); split(A_c0_A_c1, 2)"
    out = scheduled(kernel, base + "; bind(A_c0_A_c1_i, threadIdx.x)")
    same_results(kernel, out)
    with pytest.raises(ScheduleError, match="around it is threadIdx.x"):  # wider than the block's x
        scheduled(kernel, SHARED_MATMUL + "; cache_read(A, r0_o, shared); fuse(A_c0, A_c1); "
                          "split(A_c0_A_c1, 3); bind(A_c0_A_c1_i, threadIdx.x)")
    with pytest.raises(ScheduleError, match="around it is threadIdx.x"):  # not a shared copy
        scheduled(kernel, "split(i1, 4); bind(i1_o, threadIdx.x); bind(i1_i, threadIdx.x)")
