"""The tuner's search space: sketches of frontend kernels give schedules that replay exactly and
keep results, and mutation and crossover stay inside the space."""
import dataclasses
import json
import pathlib
import random

import numpy as np
import pytest

from nestor.autotune.nest import top_level_nests
from nestor.autotune.rules.tiling import TileDecisions, effective_factors, max_tile, tile_size, vector_loop
from nestor.autotune.rules.rows import RowDecisions
from nestor.autotune.space import Candidate, Sketch
from nestor.codegen import run_kernel
from nestor.ir.machine import AVX2, AVX512
from nestor.ir import Allocate, For, parse_kernel, print_kernel, structural_equal, walk_stmts
from nestor.passes import Schedule, canonical_loops
from tests.test_passes import _onnx, inputs, kernels


def tiles(sketch: Sketch, **fields) -> Candidate:
    """A tiling candidate: the plain decisions (no tile) with `fields` changed."""
    plain = TileDecisions.plain(len(sketch.info.main.spatial))
    return Candidate("tiling", dataclasses.replace(plain, **{k: tuple(v) if isinstance(v, list) else v
                                                             for k, v in fields.items()}))


def fits(sketch: Sketch, c: Candidate) -> bool:
    d = c.decisions
    return tile_size(effective_factors(sketch.info, d), vector_loop(sketch.info, d.lanes)) <= max_tile(sketch.info)


def sketch_kernels():
    return {
        "matmul": _onnx("MatMul", {"X": [24, 20], "W": [20, 40]}, [24, 40]),
        "batch_matmul": _onnx("MatMul", {"X": [3, 8, 12], "W": [3, 12, 16]}, [3, 8, 16]),
        "conv": _onnx("Conv", {"X": [1, 4, 10, 10], "W": [8, 4, 3, 3]}, [1, 8, 10, 10], pads=[1, 1, 1, 1]),
        "depthwise": _onnx("Conv", {"X": [1, 4, 9, 9], "W": [4, 1, 3, 3]}, [1, 4, 9, 9], pads=[1, 1, 1, 1], group=4),
        "softmax": kernels()["softmax"],
        "softmax_rows": _onnx("Softmax", {"X": [4, 32]}, [4, 32], axis=-1),
        "layernorm": _onnx("LayerNormalization", {"X": [4, 32], "gamma": [32], "beta": [32]}, [4, 32], axis=-1),
        "maxpool": kernels()["maxpool"],
        "elementwise": kernels()["elementwise"],
    }


@pytest.mark.parametrize("name", list(sketch_kernels()))
def test_sampled_schedules_replay_and_keep_results(name):
    kernel = sketch_kernels()[name]
    sketch = Sketch.of(kernel, strict=True)
    rng = random.Random(1)
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    schedules = set()
    for _ in range(6):
        d = sketch.sample(rng)
        schedule, scheduled = sketch.realize(d)
        schedules.add(str(schedule))
        replayed = Schedule.from_json(schedule.to_json()).apply(kernel)
        assert structural_equal(replayed, scheduled) and replayed == scheduled
        assert parse_kernel(print_kernel(scheduled)) == scheduled
        for got, w in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4, err_msg=str(schedule))
    assert len(schedules) > 1  # the decisions do change the schedule


def test_matmul_sketch_tiles_in_registers_and_parallelizes():
    kernel = sketch_kernels()["matmul"]
    sketch = Sketch.of(kernel, strict=True)
    info = sketch.info
    assert [l.var for l in info.main.spatial] == ["i0", "i1"] and info.main.reduce == ("r0",)
    assert info.vector == 1 and info.inputs == ("A", "B")
    schedule, scheduled = sketch.realize(tiles(sketch, factors=[4, 8], order=1, unroll=2, cache_read=("B", 0)))
    text = str(schedule)
    for step in ("split(i0, 4)", "split(i1, 8)", "reorder(i1_o, i0_o, i0_i, i1_i)", "cache_write(Out, i0_o)",
                 "distribute(i0_i)", "reorder(r0, i0_i_1, i1_i_1)", "split(r0, 2)", "unroll(r0_i)",
                 "cache_read(B, i1_o", "parallel(i1_o)", "vectorize(i1_i_1)", "unroll(i0_i_1)"):
        assert step in text, (step, text)
    kinds = {s.var: s.kind for s in walk_stmts(scheduled.body) if isinstance(s, For)}
    assert kinds["i1_o"] == "parallel" and kinds["i1_i_1"] == "vectorized"


def test_other_stages_get_the_default_schedule():
    sketch = Sketch.of(sketch_kernels()["conv"], strict=True)
    assert [n.root for n in sketch.info.other_nests] == ["i0"]  # the padding stage
    assert "default(i0)" in str(sketch.schedule(tiles(sketch, factors=[1, 2, 1, 2, 8])))


def test_padding_computed_at_a_tile_loop_keeps_results():
    kernel = sketch_kernels()["conv"]
    sketch = Sketch.of(kernel, strict=True)
    assert sketch.info.stages == ("X_pad",)
    schedule, scheduled = sketch.realize(tiles(sketch, factors=[1, 2, 1, 2, 8], stage_at=1))
    assert "compute_at(X_pad, " in str(schedule) and "default(i0)" not in str(schedule)
    allocs = {s.buffer.name: s.buffer.scope for s in walk_stmts(scheduled.body) if isinstance(s, Allocate)}
    assert allocs.get("X_pad_local") == "local" and "X_pad" not in allocs  # no whole padded copy
    args = inputs(kernel)
    for got, want in zip(run_kernel(scheduled, args), run_kernel(kernel, args)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, second_row, elementwise", [
    ("softmax_rows", "i3", ("i1", "i4")),  # max; exp; sum of the exps; divide
    ("layernorm", "i1", ("i2",)),          # mean; variance; normalize
])
def test_row_reductions_split_into_vector_lanes(name, second_row, elementwise):
    kernel = sketch_kernels()[name]
    sketch = Sketch.of(kernel, strict=True)
    assert sketch.info.rows == (("i0", "r0"), (second_row, "r1"))
    args = inputs(kernel)
    for merge in (False, True):
        schedule, scheduled = sketch.realize(Candidate("rows", RowDecisions(16, merge)))
        kinds = {s.var: s.kind for s in walk_stmts(scheduled.body) if isinstance(s, For)}
        assert kinds["r0_i"] == kinds["r1_i"] == "vectorized" and kinds["i0"] == "parallel"
        # each row's partials folded in vector halves (16 -> 8 -> 4 -> 2 -> 1)
        assert str(schedule).count("tree_combine(") == 2 and kinds["r0_c_h"] == kinds["r1_c_h_2"] == "vectorized"
        assert all(f"default({e})" in str(schedule) for e in elementwise)
        # merged: one parallel loop over rows runs every nest
        outer = {second_row, *elementwise}
        assert not outer & set(kinds) if merge else kinds[second_row] == "parallel"
        for got, want in zip(run_kernel(scheduled, args), run_kernel(kernel, args)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_merged_rows_of_several_dimensions_are_one_parallel_loop():
    # attention's softmax: heads x tokens rows; merged, the stages run in one parallel loop over
    # all 15 rows (not over 3 heads), each row's stages in turn
    # (and a batch of 2 of them: three loops fused, 30 rows)
    for shape, rows in (([3, 5, 37], 15), ([2, 3, 5, 37], 30)):
        kernel = _onnx("Softmax", {"X": shape}, shape, axis=-1)
        sketch = Sketch.of(kernel, strict=True)
        schedule, scheduled = sketch.realize(Candidate("rows", RowDecisions(16, True)))
        (nest,) = top_level_nests(scheduled)
        assert [(l.extent, l.kind) for l in nest.spatial] == [(rows, "parallel")]
        assert [s.var for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "parallel"] == [nest.root]
        args = inputs(kernel)
        np.testing.assert_allclose(run_kernel(scheduled, args)[0], run_kernel(kernel, args)[0], rtol=1e-5, atol=1e-6)


# TVM's layer norm (TOPI, as Relax legalizes it and te imports it): per-row statistics in 1-D
# buffers, the mean a nest of its own
TVM_LAYERNORM = parse_kernel("""
kernel main(X: f32[16, 96], gamma: f32[96], beta: f32[96]) -> (Y: f32[16, 96]) {
  alloc X_sum: f32[16] global {
    alloc X_mean: f32[16] global {
      alloc X_var_sum: f32[16] global {
        for i0 in 0..16 { X_sum[i0] = 0.0
          for r0 in 0..96 reduce { X_sum[i0] += X[i0, r0] } }
        for i1 in 0..16 { X_mean[i1] = X_sum[i1] / 96.0 }
        for i2 in 0..16 { X_var_sum[i2] = 0.0
          for r1 in 0..96 reduce { X_var_sum[i2] += (X[i2, r1] - X_mean[i2]) * (X[i2, r1] - X_mean[i2]) } }
        for i3 in 0..16 { for i4 in 0..96 {
          Y[i3, i4] = (X[i3, i4] - X_mean[i3]) * rsqrt(X_var_sum[i3] / 96.0 + 1e-05) * gamma[i4] + beta[i4] } }
      }
    }
  }
}""")


def test_row_statistics_in_1d_buffers_split_and_merge_into_one_row_loop():
    """The variance reads the row's mean, X_mean[i2]: the same in every lane, so it is a row
    reduction too; merged, the mean's own nest joins the row loop instead of being vectorized apart."""
    sketch = Sketch.of(TVM_LAYERNORM, strict=True)
    assert sketch.info.rows == (("i0", "r0"), ("i2", "r1"))
    args = inputs(TVM_LAYERNORM)
    for merge in (False, True):
        schedule, scheduled = sketch.realize(Candidate("rows", RowDecisions(16, merge)))
        kinds = {s.var: s.kind for s in walk_stmts(scheduled.body) if isinstance(s, For)}
        assert kinds["r0_i"] == kinds["r1_i"] == "vectorized"
        roots = [n.root for n in top_level_nests(scheduled)]
        assert roots == ["i0"] if merge else len(roots) == 4, roots
        assert ("default(i1)" in str(schedule)) != merge and kinds["i0"] == "parallel"
        for got, want in zip(run_kernel(scheduled, args), run_kernel(TVM_LAYERNORM, args)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_row_reductions_leave_matmuls_to_the_tiling_sketch():
    for name in ("matmul", "conv"):
        sketch = Sketch.of(sketch_kernels()[name])
        assert sketch.info.rows == () and list(sketch.rules) == ["tiling"]


@pytest.mark.parametrize("unit", [AVX512, AVX2], ids=["avx512", "avx2"])
def test_mutation_and_crossover_keep_register_tiles_bounded(unit):
    sketch = Sketch.of(sketch_kernels()["conv"], unit)
    assert max_tile(sketch.info) == {AVX512: 32, AVX2: 14}[unit]  # 16 zmm of 16 lanes; 14 ymm of 8
    rng = random.Random(3)
    pop = [sketch.sample(rng) for _ in range(20)]
    for _ in range(200):
        child = sketch.mutate(rng.choice(pop), rng) if rng.random() < 0.5 else \
            sketch.crossover(*rng.sample(pop, 2), rng)
        assert fits(sketch, child)
        assert all(f <= l.extent or f == 1 for f, l in zip(child.decisions.factors, sketch.info.main.spatial))
        pop.append(child)


def test_conv_lanes_on_output_channels_pack_the_weights_and_keep_results():
    kernel = sketch_kernels()["conv"]
    sketch = Sketch.of(kernel, strict=True)
    (lanes,) = sketch.info.lanes  # the output channels (i5 of Out[i4, i5, i6, i7]) through W's dim 0
    assert (sketch.info.main.spatial[lanes.loop].var, lanes.out_dim, lanes.packs) == ("i5", 1, (("W", 0),))
    schedule, scheduled = sketch.realize(tiles(sketch, factors=[1, 1, 2, 5], lanes=(0, 8)))
    text = str(schedule)
    # 8 lanes cover all 8 channels: i5 is not split, it moves into the tile whole
    for step in ("reorder(i4, i6_o, i7_o, i6_i, i7_i, i5)", "cache_write(Out, i7_o, 0, 2, 3, 1)",
                 "pack(W, 0, 8, 0, 2, 3, 4, 1)", "vectorize(i5_1)", "vectorize(Out_w3)"):
        assert step in text, (step, text)
    args = inputs(kernel)
    for got, want in zip(run_kernel(scheduled, args), run_kernel(kernel, args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert Sketch.of(sketch_kernels()["depthwise"]).info.lanes == ()  # X and W both move with c


def test_top_level_nests_finds_the_stages():
    nests = top_level_nests(canonical_loops(kernels()["softmax"]))
    assert [n.root for n in nests] == ["i0", "i1", "i3", "i4"]  # max, exp, sum, divide
    assert [n.reduce for n in nests] == [("r0",), (), ("r1",), ()]


def test_lanes_on_a_fused_conv_with_bias_residual_and_relu_keep_results():
    from onnx import TensorProto, helper, numpy_helper
    import nestor
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B")
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "R"], ["s"]), helper.make_node("Relu", ["s"], ["Y"])]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
    model = helper.make_model(helper.make_graph(nodes, "block", [vi("X", [1, 4, 7, 7]), vi("R", [1, 16, 7, 7])],
                                                [vi("Y", [1, 16, 7, 7])], [w, b]),
                              opset_imports=[helper.make_opsetid("", 17)])
    (kernel,) = nestor.import_onnx(model, blocked=False).kernels()  # one fused NCHW kernel
    sketch = Sketch.of(kernel, strict=True)
    assert len(sketch.info.lanes) == 1  # the epilogue's residual read does not block the lanes
    rng = random.Random(0)
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    tried = 0
    while tried < 3:
        d = sketch.sample(rng)
        if d.rule != "tiling" or not d.decisions.lanes:
            continue
        tried += 1
        schedule, scheduled = sketch.realize(d)
        assert "pack(W, 0" in str(schedule)
        for got, w_ in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, w_, rtol=1e-4, atol=1e-4, err_msg=str(schedule))


@pytest.mark.parametrize("name", ["conv", "matmul", "softmax_rows", "layernorm"])
def test_rule_decisions_fill_the_registers_and_keep_results(name):
    kernel = _onnx("Conv", {"X": [1, 8, 14, 14], "W": [32, 8, 3, 3]}, [1, 32, 14, 14],
                   pads=[1, 1, 1, 1]) if name == "conv" else sketch_kernels()[name]
    sketch = Sketch.of(kernel, AVX512, strict=True)
    rules = sketch.rule_decisions()
    assert rules
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    for d in rules:
        assert d.rule == "rows" or fits(sketch, d)
        schedule, scheduled = sketch.realize(d)
        for got, w in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)
    if name == "conv":  # 32 output-channel lanes × a 7-pixel row; 16 lanes × 2 rows of 7
        # (the 32-lane tile also with its accumulator stored along the output's rows)
        assert [(d.decisions.lanes[1], d.decisions.factors[-2:], d.decisions.transpose_store) for d in rules[:3]] == [
            (32, (1, 7), False), (32, (1, 7), True), (16, (2, 7), False)]
        assert all(d.decisions.stage_at == 0 for d in rules[:3])
        stored = sketch.realize(rules[1])[1]
        vectors = [s.var for s in walk_stmts(stored.body) if isinstance(s, For) and s.kind == "vectorized"]
        assert "Out_w2" in vectors and "Out_w3" not in vectors  # the pixel row, not the channels
    if name in ("softmax_rows", "layernorm"):
        assert {d.decisions.rfactor for d in rules if d.rule == "rows"} == {16, 32}


def test_rule_tiles_fit_avx2s_sixteen_registers():
    """AVX2 has 16 registers of 8 lanes, 12 for accumulators: the conv's rule tiles are 16
    lanes (2 vectors) × 6 pixels (guarded: 14 has no divisor 4-6) and 8 lanes × 2 rows of 6,
    the matmul's 16 lanes × 6 rows."""
    conv = _onnx("Conv", {"X": [1, 8, 14, 14], "W": [32, 8, 3, 3]}, [1, 32, 14, 14], pads=[1, 1, 1, 1])
    sketch = Sketch.of(conv, AVX2, strict=True)
    rules = sketch.rule_decisions()
    assert [(d.decisions.lanes[1], d.decisions.factors[-2:], d.decisions.transpose_store) for d in rules[:3]] == [
        (16, (1, 6), False), (16, (1, 6), True), (8, (2, 6), False)]
    args = inputs(conv)
    want = run_kernel(conv, args)
    for d in rules:
        assert tile_size(effective_factors(sketch.info, d.decisions), vector_loop(sketch.info, d.decisions.lanes)) <= 12
        np.testing.assert_allclose(run_kernel(sketch.realize(d)[1], args)[0], want[0], rtol=1e-4, atol=1e-4)
    matmul = Sketch.of(_onnx("MatMul", {"X": [24, 64], "W": [64, 64]}, [24, 64]), AVX2)
    assert [d.decisions.factors for d in matmul.rule_decisions() if not d.decisions.lanes] == [(6, 16)]


def test_grouped_conv_output_channels_take_the_lanes():
    # group 2: the output channel is g * 16 + m; lanes on m pack W's blocks within a group
    kernel = _onnx("Conv", {"X": [1, 8, 6, 6], "W": [32, 4, 3, 3]}, [1, 32, 6, 6], pads=[1, 1, 1, 1], group=2)
    sketch = Sketch.of(kernel, AVX512, strict=True)
    info = sketch.info
    assert [(info.main.spatial[l.loop].extent, l.packs) for l in info.lanes] == [(16, (("W", 0),))]
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    for d in sketch.rule_decisions():
        schedule, scheduled = sketch.realize(d)
        assert "pack(W, 0, 16" in str(schedule)
        np.testing.assert_allclose(run_kernel(scheduled, args)[0], want[0], rtol=1e-4, atol=1e-4)


def test_channels_without_lanes_get_a_channel_tile_over_whole_rows():
    # 12 output channels a group hold no 16 or 32 lanes: the rule tiles 4 channels × the
    # 7 rows, the vector over a whole 7-pixel row (ShuffleNet's 136-channel groups at 7x7)
    kernel = _onnx("Conv", {"X": [1, 24, 7, 7], "W": [24, 12, 1, 1]}, [1, 24, 7, 7], group=2)
    sketch = Sketch.of(kernel, AVX512, strict=True)
    rules = sketch.rule_decisions()

    def plain(s):
        return [d.decisions.factors for d in s.rule_decisions() if not d.decisions.lanes]
    assert plain(sketch)[-1:] == [(1, 1, 4, 7, 7)]
    # AVX2's 14-register bound: 2 channels × the 7 rows
    assert plain(Sketch.of(kernel, AVX2))[-1:] == [(1, 1, 2, 7, 7)]
    # a 14-pixel row: one AVX-512 register, but two AVX2 ones (one partial): 7 lanes there
    wide = _onnx("Conv", {"X": [1, 24, 14, 14], "W": [24, 12, 1, 1]}, [1, 24, 14, 14], group=2)
    assert [f[-1] for f in plain(Sketch.of(wide, AVX512))] == [14]
    assert [f[-1] for f in plain(Sketch.of(wide, AVX2))] == [7]
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    for d in rules:
        np.testing.assert_allclose(run_kernel(sketch.realize(d)[1], args)[0], want[0], rtol=1e-4, atol=1e-4)


def test_a_pack_copies_on_every_core_a_vector_at_a_time():
    # B is an activation here (a second matmul input), so its copy runs at every call: left
    # serial, the other threads would wait through it
    kernel = _onnx("MatMul", {"X": [24, 256], "W": [256, 256]}, [24, 256])
    sketch = Sketch.of(kernel, AVX512, strict=True)
    rule = next(d for d in sketch.rule_decisions() if d.decisions.panel)
    schedule, scheduled = sketch.realize(rule)
    (copy,) = [s for s in top_level_nests(scheduled) if s.output is not None and s.output.name == "B_packed"]
    kinds = {s.kind for s in walk_stmts(copy.spatial[0]) if isinstance(s, For)}
    assert {"parallel", "vectorized"} <= kinds, str(schedule)
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(scheduled, args)[0], args[0] @ args[1], rtol=1e-4, atol=1e-4)


def test_matmul_rule_reads_its_weights_in_contiguous_panels():
    kernel = _onnx("MatMul", {"X": [24, 64], "W": [64, 64]}, [24, 64])
    sketch = Sketch.of(kernel, AVX512, strict=True)
    assert sketch.info.panels == ("B",)  # the importer names MatMul's inputs A, B
    rule = next(d for d in sketch.rule_decisions() if d.decisions.panel)
    schedule, scheduled = sketch.realize(rule)
    # B[k, n] blocked to [n / 32][k][32]: a tile's 32 columns one contiguous stream over k
    assert "pack(B, 1, 32, 1, 0, 2)" in str(schedule)
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(scheduled, args)[0], args[0] @ args[1], rtol=1e-4, atol=1e-4)
    # a convolution's input is read at a shifted pixel (x + r), never as a panel
    conv = _onnx("Conv", {"X": [1, 8, 14, 14], "W": [32, 8, 3, 3]}, [1, 32, 14, 14], pads=[1, 1, 1, 1])
    assert Sketch.of(conv).info.panels == ()


def test_row_reduction_of_a_matrix_vector_product_runs_its_rows_in_parallel():
    kernel = _onnx("Gemm", {"A": [1, 64], "B": [32, 64]}, [1, 32], transB=1)
    sketch = Sketch.of(kernel, strict=True)
    rule = next(d for d in sketch.rule_decisions() if d.rule == "rows")
    schedule, scheduled = sketch.realize(rule)
    parallel = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "parallel"]
    assert [s.extent for s in parallel] == [32], str(schedule)  # not the batch loop of extent 1
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(scheduled, args)[0], run_kernel(kernel, args)[0], rtol=1e-4, atol=1e-4)


# ResNet-50's late 1x1 convs in miniature (NCHW16c): 1024 input channels, a 3x3 plane
BLOCKED_1X1 = """
kernel conv_relu(X: f32[1, 64, 3, 3, 16], W: f32[4, 64, 1, 1, 16, 16], B: f32[64]) -> (Out: f32[1, 4, 3, 3, 16]) {
  for i0 in 0..1 { for i1 in 0..4 { for i2 in 0..3 { for i3 in 0..3 { for i4 in 0..16 {
    Out[i0, i1, i2, i3, i4] = B[i1 * 16 + i4]
    for r0 in 0..64 reduce { for r1 in 0..1 reduce { for r2 in 0..1 reduce { for r3 in 0..16 reduce {
      Out[i0, i1, i2, i3, i4] += X[i0, r0, i2 + r1, i3 + r2, r3] * W[i1, r0, r1, r2, r3, i4]
    } } } }
    Out[i0, i1, i2, i3, i4] = max(Out[i0, i1, i2, i3, i4], 0.0)
  } } } } }
}
"""


def test_chunked_reduction_sweeps_each_weight_chunk_over_the_plane():
    """The weights of one output block (64 KB) outgrow L1: the rules add a tile whose input
    channels run in chunks of 16 KB (16 blocks), each chunk over every tile of the plane,
    partial sums in an outer accumulator (the 12-accumulator tile, which spills, gets none)."""
    kernel = parse_kernel(BLOCKED_1X1)
    sketch = Sketch.of(kernel, AVX2, strict=True)
    chunked = [d for d in sketch.rule_decisions() if d.decisions.chunk]
    assert [(d.decisions.factors, d.decisions.chunk) for d in chunked] == [((1, 1, 1, 3, 16), (16, 0))]
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    first = chunked[0].decisions
    for d in [c.decisions for c in chunked] + [dataclasses.replace(first, chunk=(4, 0)),
                                               dataclasses.replace(first, factors=(1, 2, 1, 1, 16))]:
        schedule, scheduled = sketch.realize(Candidate("tiling", d))
        assert f"split(r0, {d.chunk[0]})" in str(schedule)
        allocs = {s.buffer.name: s for s in walk_stmts(scheduled.body) if isinstance(s, Allocate)}
        outer, register = allocs["Out_local"].buffer.shape, allocs["Out_local_local"].buffer.shape
        assert outer == (1, d.factors[1], 3, 3, 16) and register == tuple(d.factors)
        # the chunk loop runs inside the outer accumulator and around the register tile's
        chunk = next(s for s in walk_stmts(allocs["Out_local"].body) if isinstance(s, For) and s.var == "r0_o")
        assert any(s is allocs["Out_local_local"] for s in walk_stmts(chunk.body))
        replayed = Schedule.from_json(schedule.to_json()).apply(kernel)
        assert replayed == scheduled
        np.testing.assert_allclose(run_kernel(scheduled, args)[0], want[0], rtol=1e-4, atol=1e-4,
                                   err_msg=str(schedule))
    # a conv whose weights fit L1 keeps its reduction whole
    small = _onnx("Conv", {"X": [1, 8, 14, 14], "W": [32, 8, 3, 3]}, [1, 32, 14, 14], pads=[1, 1, 1, 1])
    assert not any(d.decisions.chunk for d in Sketch.of(small, AVX2).rule_decisions())


def test_a_chunk_without_two_outer_loops_leaves_the_schedule_as_it_was():
    # one outer loop (the rows are all in the tile): nowhere to sweep a chunk over, so the
    # decision changes nothing, the reduction's unroll included
    sketch = Sketch.of(sketch_kernels()["matmul"], strict=True)
    plain = tiles(sketch, factors=[24, 8], unroll=2)
    assert "unroll(r0_i)" in str(sketch.schedule(plain))
    chunked = tiles(sketch, factors=[24, 8], unroll=2, chunk=(4, 0))
    assert sketch.schedule(chunked) == sketch.schedule(plain)
    # and the domains know it: made legal (a crossover with itself), the candidate has no chunk
    assert sketch.crossover(chunked, chunked, random.Random(0)).decisions.chunk is None


def test_schedules_made_before_the_rules_became_classes_still_replay():
    """Schedules the sketch made at 7d865dc (rule seeds and random samples, AVX-512 and AVX2)
    replay on their kernels and keep results."""
    saved = json.loads((pathlib.Path(__file__).parent / "data" / "schedules_7d865dc.json").read_text())
    for name, entry in saved.items():
        kernel = parse_kernel(entry["kernel"])
        args = inputs(kernel)
        want = run_kernel(kernel, args)
        for text in entry["schedules"][::3]:  # a third of them: each compiles (~0.3 s)
            scheduled = Schedule.from_json(text).apply(kernel)
            for got, w in zip(run_kernel(scheduled, args), want):
                np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4, err_msg=f"{name}: {text}")


def test_every_saved_schedule_applies():
    saved = json.loads((pathlib.Path(__file__).parent / "data" / "schedules_7d865dc.json").read_text())
    count = 0
    for entry in saved.values():
        kernel = parse_kernel(entry["kernel"])
        for text in entry["schedules"]:
            Schedule.from_json(text).apply(kernel, debug=True)  # verified after every step
            count += 1
    assert count >= 50
