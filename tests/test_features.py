"""Named cost-model features (one dataclass per group, its fields the names) and the interval
and variable analyses that the features share with the verifier and the passes (ir/)."""
import dataclasses
import importlib
import inspect
import math

import numpy as np
import pytest

from nestor.costmodel import (FEATURE_NAMES, STATEMENT_NAMES, AccessFeatures, ArithFeatures, CacheFeatures, LoopFeatures,
                              ShapeFeatures, StatementFeatures, kernel_features, named_statement_features, statement_features)
from nestor.ir import Binary, Buffer, Cast, Compare, Const, Load, Select, Var, index_bounds, parse_kernel, variables, verify

SCALE = parse_kernel("""
kernel scale(A: f32[64, 32], b: f32[32]) -> (Y: f32[64, 32]) {
  for i in 0..64 parallel {
    for jo in 0..4 {
      for ji in 0..8 vectorized { Y[i, jo * 8 + ji] = A[i, jo * 8 + ji] * 2.0 + b[jo * 8 + ji] }
    }
  }
}""")

i, j = Var("i"), Var("j")


def test_names_and_values_correspond_one_to_one():
    sizes = [len(dataclasses.fields(g)) for g in (LoopFeatures, ArithFeatures, AccessFeatures, ShapeFeatures,
                                                   CacheFeatures)]
    assert sizes == [35, 18, 36, 20, 10] and len(STATEMENT_NAMES) == 35 + 18 + 5 * 36 + 20 + 10
    assert len(set(STATEMENT_NAMES)) == len(STATEMENT_NAMES)
    assert FEATURE_NAMES == [f"{agg}.{n}" for agg in ("sum", "max", "top") for n in STATEMENT_NAMES]
    (stmt,) = named_statement_features(SCALE)
    assert stmt.names() == STATEMENT_NAMES and len(stmt.vector()) == len(STATEMENT_NAMES)
    by_name = dict(zip(stmt.names(), stmt.vector()))
    prefixes = ([("loop", stmt.loop), ("arith", stmt.arith)] + [(f"acc{n}", a) for n, a in enumerate(stmt.accesses)]
                + [("shape", stmt.shape), ("cache", stmt.cache)])
    for prefix, group in prefixes:
        for field in dataclasses.fields(group):
            assert by_name[f"{prefix}.{field.name.removesuffix('_')}"] == getattr(group, field.name)
    assert kernel_features(SCALE).shape == (len(FEATURE_NAMES),)


def test_hand_checked_kernel_read_by_name():
    (stmt,) = named_statement_features(SCALE)
    loop, arith, (store, a, b, absent, _) = stmt.loop, stmt.arith, stmt.accesses
    assert (loop.exec, loop.depth, loop.vec_len, loop.vec_innermost, loop.vec_inner_loops) == (64 * 32, 3, 8, 1, 0)
    assert (loop.par_prod, loop.par_loops, loop.par_task_iters, loop.is_reduce) == (64, 1, 32, 0)
    assert (loop.extent_in1, loop.extent_in2, loop.extent_in3, loop.extent_in4) == (8, 4, 64, 0)
    assert arith.f_mul == arith.f_add == 64 * 32 and arith.float_per_iter == 2 and arith.i_mul == 3 * 64 * 32
    assert arith.float_vector_instrs == 2 * 64 * 32 / 8
    assert (store.present, store.is_store, store.global_, store.stride_vec, store.unit_vec) == (1, 1, 1, 1, 1)
    assert (a.is_store, a.bytes_Lall, a.reuse_Lall) == (0, 64 * 32 * 4, 1)
    assert (b.buffer_bytes, b.reuse_Lall, b.stride_nonzero, b.nonzero_depth) == (32 * 4, 64, 1, 0)
    assert all(x == 0 for x in dataclasses.astuple(absent))
    logged = dict(zip(STATEMENT_NAMES, statement_features(SCALE)[0]))
    assert logged["loop.depth"] == pytest.approx(math.log2(1 + 3))
    assert logged["loop.vec_len"] == pytest.approx(math.log2(1 + 8))
    assert logged["acc0.is_store"] == 1 and logged["acc0.global"] == 1 and logged["acc1.is_store"] == 0
    top = dict(zip(FEATURE_NAMES, kernel_features(SCALE)))
    assert top["top.loop.vec_len"] == top["sum.loop.vec_len"] == logged["loop.vec_len"]


def test_features_module_reads_features_by_name_not_position():
    source = inspect.getsource(importlib.import_module("nestor.costmodel.features"))
    assert ".index(" not in source
    for gone in ("LOOP_NAMES", "ARITH_NAMES", "ACCESS_NAMES"):
        assert gone not in source
    assert [f.name for f in dataclasses.fields(StatementFeatures)] == ["loop", "arith", "accesses", "shape", "cache"]


@pytest.mark.parametrize("expr, extents, bounds", [
    (i * 8 + j, {"i": 4, "j": 8}, (0, 31)),
    (j - j + 3, {"j": 8}, (3, 3)),                          # affine: exact, variables cancel
    (3 - i, {"i": 4}, (0, 3)),
    (i + j, {"i": 4}, (0, 3)),                               # a variable with no extent counts as 0
    ((i * 8 + j) // 8, {"i": 4, "j": 8}, (0, 3)),
    ((i * 8 + j) % 8, {"i": 4, "j": 8}, (0, 7)),
    ((i + 8) % 16, {"i": 4}, (8, 11)),                       # mod inside one period: exact
    ((i - 8) % 16, {"i": 4}, (8, 11)),                       # ... also below zero (mod rounds down)
    ((i + 6) % 8, {"i": 4}, (0, 7)),                         # crossing a multiple of 8
    ((i - 3) // 2, {"i": 4}, (-2, 0)),                       # floordiv rounds down
    (Binary("div", i - 3, Const(2)), {"i": 4}, (-1, 0)),    # div truncates
    (Binary("min", i, j + 2), {"i": 4, "j": 2}, (0, 3)),
    (Select(Compare("lt", i, j), i, j * 2), {"i": 4, "j": 3}, (0, 4)),
    (Cast("int64", i * 2), {"i": 4}, (0, 6)),
    (i // j, {"i": 4, "j": 3}, None),                        # division by a range
    (Load(Buffer("X", (4,), "int32"), (i,)) + 1, {"i": 4}, None),
])
def test_index_bounds(expr, extents, bounds):
    assert index_bounds(expr, extents) == bounds


def test_verifier_uses_the_exact_mod_rule():
    # (i - 8) % 16 lies in [8, 11]: in bounds of a 12-element buffer
    verify(parse_kernel("""
    kernel wrap(X: f32[12]) -> (Y: f32[4]) { for i in 0..4 { Y[i] = X[(i - 8) % 16] } }"""))


def test_variables():
    x = Buffer("X", (4, 4))
    assert variables([i * 2 + j, Load(x, (Var("k"), Const(0)))]) == {"i", "j", "k"}
    assert variables([Const(1)]) == set()


def test_statement_features_are_log_scaled_vectors():
    for raw, logged in zip(named_statement_features(SCALE), statement_features(SCALE)):
        np.testing.assert_allclose(logged, np.log2(1 + np.abs(raw.vector())))


def test_cache_lines_are_counted_in_the_machines_line_size():
    import dataclasses
    from nestor.ir.machine import AVX2
    wide = dataclasses.replace(AVX2, cache_line=128)
    (narrow_stmt,), (wide_stmt,) = named_statement_features(SCALE, AVX2), named_statement_features(SCALE, wide)
    store, wide_store = narrow_stmt.accesses[0], wide_stmt.accesses[0]
    assert store.bytes_Lall == wide_store.bytes_Lall == 64 * 32 * 4
    assert store.lines_Lall == 2 * wide_store.lines_Lall == 64 * 32 * 4 // 64


GPU_MATMUL = parse_kernel("""
kernel mm(A: f32[64, 64], B: f32[64, 64]) -> (Y: f32[64, 64]) {
  for b in 0..16 blockIdx.x {
    for t in 0..256 threadIdx.x {
      Y[b * 4 + t // 64, t % 64] = 0.0
      for k in 0..64 reduce { Y[b * 4 + t // 64, t % 64] += A[b * 4 + t // 64, k] * B[k, t % 64] }
    }
  }
}""")


def test_gpu_features_count_threads_occupancy_and_coalescing():
    from nestor.codegen import cuda_target, machine_params
    gpu = machine_params(cuda_target("sm_80"))
    init, update = named_statement_features(GPU_MATMUL, gpu)
    assert update.loop.gpu_thread_prod == 256 and update.loop.gpu_threads_x == 256
    # 256 threads, no shared memory, few registers: 8 blocks (2048 threads) resident per SM
    assert update.loop.gpu_occupancy == 1.0
    assert update.loop.gpu_waves == 16 / (8 * gpu.cores)
    store, a, b = update.accesses[:3]
    by_buffer = {acc.buffer_bytes: acc for acc in update.accesses[:3]}
    # Y and B move one element per thread (coalesced); A one address for 64 threads (broadcast)
    assert store.stride_thread_x == 1
    assert sorted(acc.stride_thread_x for acc in (a, b)) == [0, 1]
    assert named_statement_features(SCALE)[0].loop.gpu_occupancy == 0  # a CPU kernel


# -- ShapeFeatures: what the computation is, and how the schedule fits the machine -------------

def _conv(groups: int):
    """A 3x3 convolution of 32 channels to 32 in `groups` groups (1: dense, 32: depthwise)."""
    cpg = 32 // groups
    channel = "r" if groups == 1 else f"c // {cpg} * {cpg} + r"
    return parse_kernel(f"""
kernel conv(X: f32[1, 32, 18, 18], W: f32[32, {cpg}, 3, 3]) -> (Y: f32[1, 32, 16, 16]) {{
  for n in 0..1 {{
    for c in 0..32 {{
      for h in 0..16 {{
        for w in 0..16 {{
          Y[n, c, h, w] = 0.0
          for r in 0..{cpg} reduce {{
            for kh in 0..3 reduce {{
              for kw in 0..3 reduce {{
                Y[n, c, h, w] += X[n, {channel}, h + kh, w + kw] * W[c, r, kh, kw]
              }}
            }}
          }}
        }}
      }}
    }}
  }}
}}""")


def test_features_tell_a_depthwise_or_grouped_conv_from_a_dense_one():
    dense, grouped, depthwise = (named_statement_features(_conv(g))[-1].shape for g in (1, 4, 32))
    # spatial loops that index the input, the weights and the output alike: none in a dense
    # conv (n has extent 1), the channels in a depthwise or grouped one (whose reductions
    # then tell them apart)
    assert (dense.batch_iters, grouped.batch_iters, depthwise.batch_iters) == (1, 32, 32)
    assert dense.spatial_iters == grouped.spatial_iters == depthwise.spatial_iters == 32 * 16 * 16
    assert dense.intensity_Lall > grouped.intensity_Lall > depthwise.intensity_Lall
    vectors = [kernel_features(_conv(g)) for g in (1, 4, 32)]
    assert not np.array_equal(vectors[0], vectors[2]) and not np.array_equal(vectors[0], vectors[1])


def test_features_tell_a_batch_matmul_from_a_matmul():
    bmm = parse_kernel("""
kernel bmm(Q: f32[12, 64, 32], K: f32[12, 32, 64]) -> (S: f32[12, 64, 64]) {
  for b in 0..12 { for i in 0..64 { for j in 0..64 {
    S[b, i, j] = 0.0
    for k in 0..32 reduce { S[b, i, j] += Q[b, i, k] * K[b, k, j] }
  } } }
}""")
    mm = parse_kernel("""
kernel mm(Q: f32[768, 32], K: f32[32, 64]) -> (S: f32[768, 64]) {
  for i in 0..768 { for j in 0..64 {
    S[i, j] = 0.0
    for k in 0..32 reduce { S[i, j] += Q[i, k] * K[k, j] }
  } }
}""")
    b, m = named_statement_features(bmm)[-1].shape, named_statement_features(mm)[-1].shape
    assert (b.batch_iters, m.batch_iters) == (12, 1) and b.spatial_iters == m.spatial_iters
    assert m.intensity_Lall > b.intensity_Lall  # the batch's operands are not shared


def test_shape_features_of_a_vector_tail_and_the_machine():
    from nestor.ir.machine import cpu
    avx512 = cpu(2, 64, 32)
    odd = parse_kernel("""
kernel odd(A: f32[8, 20]) -> (Y: f32[8, 20]) {
  for i in 0..8 parallel {
    for jo in 0..2 {
      for ji in 0..16 vectorized { if jo * 16 + ji < 20 { Y[i, jo * 16 + ji] = A[i, jo * 16 + ji] * 2.0 } }
    }
  }
}""")
    (wide,) = named_statement_features(odd, avx512)  # 16 lanes, 2 cores
    assert (wide.shape.store_tail, wide.shape.vec_regs, wide.shape.vec_fill, wide.shape.vec_guarded) == (4, 1, 1, 1)
    assert (wide.shape.par_per_core, wide.shape.par_balance) == (4, 1)
    (avx2,) = named_statement_features(odd)  # the generic CPU (AVX2, 8 lanes): two registers an operation
    assert (avx2.shape.store_tail, avx2.shape.vec_regs, avx2.shape.vec_fill) == (4, 2, 1)
    (three,) = named_statement_features(odd, cpu(3, 64, 32))  # 8 tasks on 3 cores: 3 rounds, one short
    assert three.shape.par_balance == pytest.approx(8 / 9)
    (s,) = named_statement_features(SCALE, avx512)  # 64 parallel tasks on 2 cores; 8 of 16 lanes
    assert (s.shape.par_per_core, s.shape.par_balance, s.shape.vec_regs, s.shape.vec_fill) == (32, 1, 1, 0.5)
    # one iteration: 2 float ops; the innermost loop touches A's, b's and Y's 8 floats (one line each)
    assert s.shape.intensity_L1 == pytest.approx(2 * 8 / (3 * 64))


# -- CacheFeatures: where the working set stops fitting each cache, and the traffic that follows --

_NAIVE_MM = parse_kernel("""
kernel mm(A: f32[128, 128], B: f32[128, 128]) -> (C: f32[128, 128]) {
  for i in 0..128 parallel { for j in 0..128 {
    C[i, j] = 0.0
    for k in 0..128 reduce { C[i, j] += A[i, k] * B[k, j] }
  } }
}""")
_PANEL_MM = parse_kernel("""
kernel mm(A: f32[128, 128], B: f32[128, 128]) -> (C: f32[128, 128]) {
  for jo in 0..16 parallel { for i in 0..128 {
    for ji in 0..8 vectorized { C[i, jo * 8 + ji] = 0.0 }
    for k in 0..128 reduce { for ji in 0..8 vectorized { C[i, jo * 8 + ji] += A[i, k] * B[k, jo * 8 + ji] } }
  } }
}""")


def test_cache_features_of_a_nest_that_fits():
    (s,) = named_statement_features(SCALE)  # A and Y 8 KB each, b 128 B: all of it fits the 32 KB L1
    assert (s.cache.fit_L1, s.cache.fit_L2, s.cache.fit_L3) == (3, 3, 3)
    assert s.cache.traffic_L1 == s.cache.traffic_L2 == 2 * 64 * 32 * 4 + 32 * 4
    assert s.cache.flops_per_L1 == pytest.approx(2 * 64 * 32 / 16512)
    assert s.cache.task_share_L2 == 6 * 64 / (1 << 20)  # one row of A, Y and all of b: 2 lines each


def test_cache_features_tell_a_blocked_matmul_from_a_naive_one():
    naive, panel = (named_statement_features(k)[-1].cache for k in (_NAIVE_MM, _PANEL_MM))
    # naive: only the k loop fits L1 (A's row: 8 lines, B's column: 128, C: 1), loaded again for
    # each of the 128 x 128 elements of C; the panel of B (k x 8 columns) fits with k, and is
    # loaded again for each row i of each of the 16 panels: 8 times less traffic
    assert (naive.fit_L1, panel.fit_L1) == (1, 2)
    assert naive.traffic_L1 == 137 * 64 * 128 * 128 and panel.traffic_L1 == 137 * 64 * 16 * 128
    assert panel.flops_per_L1 == pytest.approx(8 * naive.flops_per_L1)
    # both fit the 1 MB L2 whole: A, B and C loaded once
    assert naive.traffic_L2 == panel.traffic_L2 == 3 * 128 * 128 * 4
    # a parallel task: a row of C (naive: A's row, all of B, C's row) or a panel (a row of A as well)
    assert naive.task_share_L2 == (8 + 1024 + 8) * 64 / (1 << 20)
    assert panel.task_share_L2 == 1280 * 64 / (1 << 20)


def test_cache_features_read_the_machines_caches():
    from nestor.ir.machine import cpu
    small = cpu(4, 32, 16, l2_bytes=64 << 10, l3_bytes=256 << 10)  # L3: 64 KB a core
    naive, panel = (named_statement_features(k, small)[-1].cache for k in (_NAIVE_MM, _PANEL_MM))
    # (j, k) of the naive nest take 1040 lines (65 KB): past this L2, so only k fits it too
    assert (naive.fit_L2, naive.traffic_L2, naive.fit_L3) == (1, naive.traffic_L1, 1)
    assert (panel.fit_L2, panel.traffic_L2) == (2, panel.traffic_L1)
    assert naive.task_share_L2 == (8 + 1024 + 8) * 64 / (64 << 10)
