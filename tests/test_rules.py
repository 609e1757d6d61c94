"""Sketch rules one by one: where each applies, its seeds on small kernels, its candidates realized
in strict mode (a step a rule needs and a pass refuses raises there), and the GPU's first rule."""
import dataclasses
import math
import random
import re
from dataclasses import dataclass

import numpy as np
import pytest

import nestor
from nestor.autotune.nest import KernelInfo, top_level_nests
from nestor.autotune.rules import CPU_RULES, CUDA_RULES, Builder, SketchRule, StepRefused, rules_for
from nestor.autotune.rules.gpu import BindSpatial
from nestor.autotune.rules.gpu_tiling import GpuTileDecisions, GpuTiling
from nestor.autotune.rules.rows import RowReductions
from nestor.autotune.rules.tile_seeds import BlockedConvTiles, ChannelTiles, LaneTiles, MatmulTiles
from nestor.autotune.rules.tiling import MultiLevelTiling
from nestor.autotune.decisions import Choice
from nestor.autotune.space import Candidate, Sketch
from nestor.codegen import build, cuda_target, machine_params, run_kernel
from nestor.ir import For, Store, walk_stmts
from nestor.ir.machine import AVX2, AVX512
from nestor.passes import Bind, Schedule, Split
from tests.test_layout import CONV3, make_model, weights
from tests.test_passes import _onnx, inputs
from tests.test_space import BLOCKED_1X1, sketch_kernels

CUDA = machine_params(cuda_target("sm_90"))


def blocked_conv():
    model = make_model([("Conv", ["x", "w"], ["y"], CONV3)], {"x": [1, 32, 14, 14]}, {"y": [1, 64, 14, 14]},
                       {"w": weights((64, 32, 3, 3))})
    return next(n.kernel for n in nestor.import_onnx(model).nodes if n.op_type == "ConvNCHWc")


def grouped_conv():
    return _onnx("Conv", {"X": [1, 24, 7, 7], "W": [24, 12, 1, 1]}, [1, 24, 7, 7], group=2)


def strict_kernels():
    from nestor.ir import parse_kernel
    return {**sketch_kernels(), "blocked_conv": blocked_conv(), "grouped_conv": grouped_conv(),
            "blocked_1x1": parse_kernel(BLOCKED_1X1)}


def test_each_target_has_its_list_of_rules():
    assert [r.name for r in CPU_RULES] == ["rows", "tiling"]
    assert [r.name for r in CUDA_RULES] == ["gpu_rows", "gpu_tiling", "bind_spatial"]
    assert rules_for(AVX2)[:2] == CPU_RULES and rules_for(CUDA)[:3] == CUDA_RULES


@pytest.mark.parametrize("name, rules", [
    ("matmul", ["tiling"]), ("conv", ["tiling"]), ("softmax_rows", ["rows", "tiling"]),
    ("layernorm", ["rows", "tiling"]), ("elementwise", ["tiling"])])
def test_which_cpu_rules_apply(name, rules):
    assert list(Sketch.of(sketch_kernels()[name], AVX512).rules) == rules


def test_a_winograd_output_is_tiled_along_its_channels_not_split_as_a_row():
    """WinogradOutput reduces 16 products of M[r, tile, k], whose contiguous axis is the channel
    k, a spatial loop: rfactor along r would gather a lane at a time (23x the basic schedule in
    ResNet-50). Its untuned schedule vectorizes the channels and computes the same outputs."""
    from nestor.autotune.space import untuned_schedule
    nodes = [("Conv", ["x", "w1"], ["a"], {"kernel_shape": [1, 1]}), ("Conv", ["a", "w2"], ["y"], CONV3)]
    model = make_model(nodes, {"x": [1, 8, 12, 10]}, {"y": [1, 32, 12, 10]},
                       {"w1": weights((32, 8, 1, 1)), "w2": weights((32, 32, 3, 3))})
    kernel = next(n.kernel for n in nestor.import_onnx(model).nodes if n.op_type == "WinogradOutput")
    info = KernelInfo.of(kernel, AVX2)
    assert info.rows == () and list(Sketch.of(kernel, AVX2).rules) == ["tiling"]
    scheduled = untuned_schedule(kernel, AVX2)
    channels = kernel.outputs[0].shape[-1]
    vectors = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "vectorized"]
    assert vectors and all(s.extent == channels and s.axis == "spatial" for s in vectors)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(b.shape).astype(np.float32) for b in kernel.inputs]
    np.testing.assert_allclose(run_kernel(scheduled, args)[0], run_kernel(kernel, args)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [16, 64])
def test_a_global_pool_is_vectorized_along_its_channel_lanes_without_a_copy(channels):
    """A global pool's blocked output [1, C/16, 1, 1, 16] has no row (the loop before its lanes
    walks channel blocks, not pixels: no conv tiles), no panel (its input, reduced alone, would
    only be copied), and a tile of every loop but those of extent 1 still accumulates in a
    vector: untuned it ran 5-26x the basic schedule."""
    from nestor.autotune.space import untuned_schedule
    from nestor.ir import Allocate
    nodes = [("Conv", ["x", "w"], ["a"], {"kernel_shape": [1, 1]}), ("GlobalAveragePool", ["a"], ["p"], {}),
             ("Flatten", ["p"], ["y"], {})]
    model = make_model(nodes, {"x": [1, 8, 14, 14]}, {"y": [1, channels]}, {"w": weights((channels, 8, 1, 1))})
    kernel = next(n.kernel for n in nestor.import_onnx(model).nodes if n.op_type == "GlobalAveragePoolNCHWc")
    info = KernelInfo.of(kernel, AVX512)
    assert info.row is None and info.panels == ()
    scheduled = untuned_schedule(kernel, AVX512)
    stmts = list(walk_stmts(scheduled.body))
    assert not [s for s in stmts if isinstance(s, Allocate) and s.buffer.scope == "global"]   # no copy of the input
    update = next(s for s in stmts if isinstance(s, For) and s.kind == "vectorized"
                  and any(isinstance(x, Store) and x.reduce for x in walk_stmts(s)))
    assert update.extent == 16
    x = np.random.default_rng(0).standard_normal(kernel.inputs[0].shape).astype(np.float32)
    np.testing.assert_allclose(run_kernel(scheduled, [x])[0], run_kernel(kernel, [x])[0], rtol=1e-5, atol=1e-6)


def test_no_lanes_across_a_batched_matmuls_batch():
    """A Winograd matmul's 16 batches index both its operands: lanes across them would make each
    lane a matrix of its own, both packed (untuned 1.5-2.5x slower than along the rows). Lanes
    across its rows remain (one operand, B, the same in every lane), and across a conv's output
    channels (its input the same in every lane)."""
    from nestor.ir import parse_kernel
    batched = parse_kernel("""kernel matmul(A: f32[16, 1024, 16], B: f32[16, 16, 32]) -> (Out: f32[16, 1024, 32]) {
  for i0 in 0..16 {
    for i1 in 0..1024 {
      for i2 in 0..32 {
        Out[i0, i1, i2] = 0.0
        for r0 in 0..16 reduce { Out[i0, i1, i2] += A[i0, i1, r0] * B[i0, r0, i2] }
      }
    }
  }
}""")
    info = KernelInfo.of(batched, AVX512)
    assert [info.main.spatial[l.loop].var for l in info.lanes] == ["i1"]
    conv = KernelInfo.of(_onnx("Conv", {"X": [1, 8, 14, 14], "W": [32, 8, 3, 3]}, [1, 32, 14, 14],
                                pads=[1, 1, 1, 1]), AVX512)
    assert [conv.main.spatial[l.loop].extent for l in conv.lanes] == [32]


@pytest.mark.parametrize("name, seeds", [
    ("matmul", {MatmulTiles}), ("conv", {ChannelTiles}), ("blocked_conv", {BlockedConvTiles}),
    ("grouped_conv", {ChannelTiles}), ("elementwise", set()), ("softmax_rows", set())])
def test_which_tile_seeds_apply(name, seeds):
    info = KernelInfo.of(strict_kernels()[name], AVX512)
    applying = [s for s in (LaneTiles(), BlockedConvTiles(), MatmulTiles(), ChannelTiles()) if s.applies(info)]
    assert {type(s) for s in applying} == seeds
    assert all(s.seeds(info, _plain(info)) for s in applying)  # where one applies, it has seeds
    wide = KernelInfo.of(_onnx("Conv", {"X": [1, 8, 14, 14], "W": [32, 8, 3, 3]}, [1, 32, 14, 14],
                               pads=[1, 1, 1, 1]), AVX512)
    assert LaneTiles().applies(wide)  # 32 output channels: two AVX-512 registers of lanes


def test_seed_candidates_of_each_rule_on_small_kernels():
    matmul = KernelInfo.of(_onnx("MatMul", {"X": [24, 64], "W": [64, 64]}, [24, 64]), AVX512)
    (seed,) = MultiLevelTiling(CPU_RULES[1].seed_rules).seeds(matmul)
    assert (seed.factors, seed.panel) == ((8, 32), True)  # 2 vectors x 8 rows: 16 accumulators
    rows = KernelInfo.of(sketch_kernels()["softmax_rows"], AVX512)
    assert [(d.rfactor, d.merge) for d in RowReductions().seeds(rows)] == [(16, False), (32, False)]
    blocked = KernelInfo.of(blocked_conv(), AVX2)
    tiles = {d.factors for d in BlockedConvTiles().seeds(blocked, _plain(blocked))}
    assert tiles == {(1, 2, 1, 2, 16), (1, 1, 2, 2, 16), (1, 1, 1, 7, 16), (1, 1, 1, 6, 16)}


def _scalar_float_arithmetic(kernel) -> int:
    """Scalar float multiplies and adds in the kernel's compiled LLVM IR: what is left of a
    vector loop that TVM scalarized (a guard on its lanes it could not peel)."""
    return len(re.findall(r"(fmul|fadd) (fast )?float |fmuladd\.f32", build([kernel]).module.inspect_source("ll")))


@pytest.mark.parametrize("shape", [(13, 24, 251), (77, 8, 77), (3, 8, 1000), (2, 8, 50257), (2, 197, 8, 197)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matmul_tiles_on_extents_no_vector_divides(shape):
    """Extents no register's lanes divide (a prime, a prompt of 77, 1000 classes, GPT-2's
    vocabulary, attention over 197 tokens): seeds of one and two registers' lanes (1000: the 8
    that divide it) × the row tile that wastes least; each computes the product, its vector
    loop vectorized, the last tile's shorter vector peeled (a one-lane tail is scalar)."""
    *batch, m, k, n = shape
    kernel = _onnx("MatMul", {"A": [*batch, m, k], "B": [*batch, k, n]}, [*batch, m, n])
    sketch = Sketch.of(kernel, AVX512, strict=True)
    seeds = [c.decisions for c in sketch.rule_decisions()]
    vector, row = sketch.info.vector, sketch.info.row
    assert sorted(d.factors[vector] for d in seeds) == ([8] if n % 8 == 0 else [16, 32])
    assert all(d.factors[row] in ((4, 6, 8) if m > 8 else (1,)) for d in seeds)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((*batch, m, k), np.float32), rng.standard_normal((*batch, k, n), np.float32)
    for c in sketch.rule_decisions():
        _, scheduled = sketch.realize(c)
        np.testing.assert_allclose(run_kernel(scheduled, [a, b])[0], a @ b, rtol=1e-4, atol=1e-4)
        if n % c.decisions.factors[vector] != 1:
            assert _scalar_float_arithmetic(scheduled) == 0, c.decisions
    # the outer loops of such tiles stay apart: fused, their guards would read // and %
    fuse = sketch.rules["tiling"].domain(sketch.info, "fuse", dataclasses.asdict(seeds[0]))
    assert fuse.values == ((1, 2) if n % 8 == 0 else (1,))


@pytest.mark.parametrize("m, tail_free", [(77, {7}), (109, set()), (1000, {5})])
def test_row_tiles_are_register_rows_and_the_extents_divisors(m, tail_free):
    """A row loop is offered the register tile's rows (tails guarded and peeled) and each
    divisor of its extent up to a vector's rows, which needs no tail (no 7 where 7 does not
    divide); the register tile's limit shrinks a tile to a smaller factor of the same list."""
    from nestor.autotune.rules.tiling import TILE_ROWS
    kernel = _onnx("MatMul", {"A": [m, 64], "B": [64, 64]}, [m, 64])
    sketch = Sketch.of(kernel, AVX2, strict=True)
    info, rule = sketch.info, sketch.rules["tiling"]
    earlier = {"lanes": None}
    offered = set(rule.domain(info, "factors", earlier).choices[info.row].values)
    assert offered == {f for f in TILE_ROWS if f <= m} | {1} | tail_free
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, 64), np.float32), rng.standard_normal((64, 64), np.float32)
    for f in sorted(tail_free):
        factors = [1] * len(info.main.spatial)
        factors[info.row], factors[info.vector] = f, 16
        d = rule.constrain(info, dataclasses.replace(_plain(info), factors=tuple(factors)))
        assert d.factors[info.row] in offered and m % f == 0
        _, scheduled = sketch.realize(Candidate("tiling", d))
        np.testing.assert_allclose(run_kernel(scheduled, [a, b])[0], a @ b, rtol=1e-4, atol=1e-4)


def _plain(info):
    from nestor.autotune.rules.tiling import TileDecisions
    return TileDecisions.plain(len(info.main.spatial))


@pytest.mark.parametrize("machine", [AVX512, AVX2], ids=["avx512", "avx2"])
@pytest.mark.parametrize("name", list(strict_kernels()))
def test_seeds_and_samples_realize_with_no_step_refused(name, machine):
    """The rules' domains say exactly what their realization can do on these kernels: every
    seed, sample, mutation and crossover realizes in strict mode (a refused step raises)."""
    sketch = Sketch.of(strict_kernels()[name], machine, strict=True)
    rng = random.Random(0)
    # a grouped conv's samples may order a group loop inside the parallel one; its output
    # channel g * 12 + c is then two loops the dependence test does not separate (counted)
    samples = 0 if name == "grouped_conv" else 40
    pop = sketch.rule_decisions() + [sketch.sample(rng) for _ in range(samples)]
    if not samples:
        for c in pop:
            sketch.realize(c)
        return
    pop += [sketch.mutate(rng.choice(pop), rng) for _ in range(20)]
    pop += [sketch.crossover(*rng.sample(pop, 2), rng) for _ in range(20)]
    for c in pop:
        sketch.realize(c)
    assert not sketch.refused


class _Careless(SketchRule):
    """A rule that needs a loop the kernel does not have."""
    name = "careless"

    @dataclass(frozen=True)
    class decisions:
        factor: int

    def applies(self, info):
        return True

    def domain(self, info, field, earlier):
        return Choice((4,))

    def seeds(self, info):
        return [self.decisions(4)]

    def realize(self, info, d, b: Builder):
        b.must(Split("no_such_loop", d.factor))
        b.must(Split(info.main.spatial[0].var, d.factor))


def test_a_refused_step_raises_in_strict_mode_and_is_counted_otherwise():
    kernel = sketch_kernels()["matmul"]
    strict = Sketch.of(kernel, AVX512, strict=True, rules=(_Careless(),))
    with pytest.raises(StepRefused, match="careless.*split\\(no_such_loop, 4\\).*no such loop"):
        strict.realize(strict.rule_decisions()[0])
    lenient = Sketch.of(kernel, AVX512, rules=(_Careless(),))
    schedule, _ = lenient.realize(lenient.rule_decisions()[0])
    assert str(schedule) == "split(i0, 4)"  # what the passes accepted, so it replays
    assert lenient.refused == {"careless: split": 1}


def test_no_rule_applying_is_a_clear_error():
    with pytest.raises(nestor.ir.NestorError, match="no sketch rule for a cuda target"):
        Sketch.of(sketch_kernels()["matmul"], CUDA, rules=())


def test_gpu_rule_binds_the_fused_spatial_loops_to_blocks_and_threads():
    kernel = sketch_kernels()["conv"]  # two nests: the padding, the convolution
    assert not BindSpatial().applies(KernelInfo.of(kernel, AVX512))
    assert list(Sketch.of(kernel, CUDA).rules) == ["gpu_tiling", "bind_spatial"]
    sketch = Sketch.of(kernel, CUDA, strict=True, rules=(BindSpatial(),))
    seeds = sketch.rule_decisions()
    assert [c.decisions.threads for c in seeds] == [256, 128]
    schedule, scheduled = sketch.realize(seeds[0])
    bound = [(s.kind, s.extent) for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind != "serial"]
    # padding: 1*4*12*12 = 576 = 3 blocks of 256 (the last guarded); conv: 1*8*10*10 = 800 = 4 blocks
    assert bound == [("blockIdx.x", 3), ("threadIdx.x", 256), ("blockIdx.x", 4), ("threadIdx.x", 256)]
    # the same loops without the bindings compute what the kernel does (run here, on the CPU)
    plain = Schedule(tuple(s for s in schedule.steps if not isinstance(s, Bind))).apply(kernel)
    args = inputs(kernel)
    for got, want in zip(run_kernel(plain, args), run_kernel(kernel, args)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    rng = random.Random(0)
    assert {sketch.sample(rng).decisions.threads for _ in range(40)} <= {32, 64, 128, 256, 512, 1024}


def test_gpu_schedule_builds_for_cuda():
    from nestor.codegen.build import build
    sketch = Sketch.of(sketch_kernels()["matmul"], CUDA, strict=True)
    _, scheduled = sketch.realize(sketch.rule_decisions()[0])
    build([scheduled], cuda_target("sm_90"))  # TVM checks the bindings and writes CUDA


def test_gpu_tiling_applies_to_reductions_on_gpus_only():
    kernels = sketch_kernels()
    assert GpuTiling().applies(KernelInfo.of(kernels["matmul"], CUDA))
    assert not GpuTiling().applies(KernelInfo.of(kernels["matmul"], AVX512))
    relu = _onnx("Relu", {"X": [4, 64]}, [4, 64])
    assert not GpuTiling().applies(KernelInfo.of(relu, CUDA))
    assert list(Sketch.of(relu, CUDA).rules) == ["bind_spatial"]


def test_gpu_tiling_keeps_decisions_within_the_machine():
    info = KernelInfo.of(_onnx("MatMul", {"A": [64, 96], "B": [96, 128]}, [64, 128]), CUDA)
    d = GpuTiling().constrain(info, GpuTileDecisions((64, 64), (16, 16), 8, True, True, True))
    assert d.threads[0] * d.inner[0] <= 64 and d.threads[1] * d.inner[1] <= 128
    assert d.threads[0] * d.threads[1] <= CUDA.max_threads_per_block
    assert d.inner[0] * d.inner[1] <= 64
    conv = KernelInfo.of(sketch_kernels()["conv"], CUDA)  # n, c, h, w: at most three thread axes
    d = GpuTiling().constrain(conv, GpuTileDecisions((1, 2, 2, 2), (1, 1, 1, 1), 1, False, True, True))
    assert sum(t > 1 for t in d.threads) <= 3


@pytest.mark.parametrize("name", ["matmul", "conv"])
def test_gpu_tiling_candidates_compute_the_kernel_and_build_for_cuda(name):
    """Seeds and samples, realized strictly: run here without their bindings (each thread's
    iterations in turn, the shared copies made by every thread) they compute what the kernel
    does; for the GPU they build, shared memory staged with barriers."""
    from nestor.codegen.build import build
    kernel = sketch_kernels()[name]
    sketch = Sketch.of(kernel, CUDA, strict=True, rules=(GpuTiling(),))
    rng = random.Random(1)
    candidates = sketch.rule_decisions() + [sketch.sample(rng) for _ in range(6)]
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    built = []
    for n, c in enumerate(candidates):
        _, scheduled = sketch.realize(c)
        for got, ref in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=str(c.decisions))
        built.append(dataclasses.replace(scheduled, name=f"{name}{n}"))
    source = build(built, cuda_target("sm_90")).module.imports[0].inspect_source()
    assert "__shared__" in source and "__syncthreads()" in source


def launches(kernel):
    """(blocks, widest thread loop) of each top-level loop nest of a scheduled kernel (a launch)."""
    out = []
    for nest in top_level_nests(kernel):
        loops = [s for s in walk_stmts(nest.spatial[0]) if isinstance(s, For)]
        blocks = math.prod(s.extent for s in loops if s.kind.startswith("blockIdx"))
        out.append((blocks, max((s.extent for s in loops if s.kind.startswith("threadIdx")), default=1)))
    return out


@pytest.mark.parametrize("op, shape", [("Softmax", [6, 64]), ("LayerNormalization", [6, 64]),
                                       ("Softmax", [1, 3, 4, 64]), ("LayerNormalization", [1, 5, 96])])
def test_gpu_row_reductions_split_rows_across_threads(op, shape):
    """A block per row, each reduction's partials in shared memory (one per thread), folded by
    every thread into a register of its own (never into global memory, where the threads would
    race); rows under a batch loop (a model's [1, seq, hidden]) are still a block each. The
    candidates compute the kernel (run here without their bindings) and build with barriers
    between the partials' writes and reads."""
    from nestor.autotune.rules.gpu_rows import GpuRowReductions
    from nestor.codegen.build import build
    rows, width = math.prod(shape[:-1]), shape[-1]
    ins = {"X": shape} if op == "Softmax" else {"X": shape, "S": [width], "B": [width]}
    kernel = _onnx(op, ins, shape, axis=-1)
    assert GpuRowReductions().applies(KernelInfo.of(kernel, CUDA))
    assert not GpuRowReductions().applies(KernelInfo.of(kernel, AVX512))
    sketch = Sketch.of(kernel, CUDA, strict=True, rules=(GpuRowReductions(),))
    seeds = sketch.rule_decisions()
    candidates = seeds + [sketch.sample(random.Random(n)) for n in range(4)]
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    built = []
    for n, c in enumerate(candidates):
        _, scheduled = sketch.realize(c)
        first = launches(scheduled)[0]
        assert first == (rows, c.decisions.threads), c.decisions
        if c.decisions.merge:
            assert len(launches(scheduled)) == 1
        assert not [s for s in walk_stmts(scheduled.body)
                    if isinstance(s, Store) and s.reduce and s.buffer.scope == "global"], c.decisions
        for got, ref in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=str(c.decisions))
        built.append(dataclasses.replace(scheduled, name=f"rows{n}"))
    assert {c.decisions.threads for c in seeds} <= {32, 64}  # only widths that divide a row
    source = build(built, cuda_target("sm_90")).module.imports[0].inspect_source()
    assert "__shared__" in source and "__syncthreads()" in source


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["matmul", "conv", "softmax"])
def test_gpu_rule_seeds_run_correctly_on_the_gpu(name):
    """Every CUDA rule's seeds, run on the GPU, give what the unscheduled kernel gives."""
    from nestor.codegen import as_target
    kernel = (_onnx("Softmax", {"X": [6, 64]}, [6, 64], axis=-1) if name == "softmax"
              else sketch_kernels()[name])
    sketch = Sketch.of(kernel, CUDA, strict=True)
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    for c in sketch.rule_decisions():
        _, scheduled = sketch.realize(c)
        for got, ref in zip(run_kernel(scheduled, args, as_target("cuda")), want):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=f"{c.rule} {c.decisions}")


def test_gpu_tiling_copies_whole_vectors_into_shared_memory():
    """vector=4: each thread stores four contiguous elements of the copy (one 16-byte store)."""
    from nestor.codegen.build import build
    kernel = _onnx("MatMul", {"A": [64, 32], "B": [32, 64]}, [64, 64])
    sketch = Sketch.of(kernel, CUDA, strict=True, rules=(GpuTiling(),))
    (seed,) = [c for c in sketch.rule_decisions() if c.decisions.vector == 4]
    _, scheduled = sketch.realize(seed)
    vectors = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "vectorized"]
    assert [s.extent for s in vectors] == [4, 4]  # the copies of A and B
    args = inputs(kernel)
    np.testing.assert_allclose(run_kernel(scheduled, args)[0], run_kernel(kernel, args)[0],
                               rtol=1e-5, atol=1e-5)
    assert "*(float4*)(" in build([scheduled], cuda_target("sm_90")).module.imports[0].inspect_source()
