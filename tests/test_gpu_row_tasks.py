"""The transformer models' row tasks on a GPU, extracted as the tuner extracts them: their layer
norms, softmaxes and RMSNorm means sit under a batch loop of 1 ([1, seq, hidden]) and must still
get a block of threads per row from the GPU row rule, in every seed."""
import dataclasses
import random

import numpy as np
import pytest

from nestor.api import import_onnx
from nestor.autotune.nest import top_level_nests
from nestor.autotune.rules.gpu_rows import GpuRowDecisions, GpuRowReductions
from nestor.autotune.space import Sketch
from nestor.autotune.task_scheduler import extract_tasks
from nestor.codegen import as_target, cuda_target, machine_params, run_kernel
from nestor.codegen.build import build
from nestor.ir import Store, parse_kernel, walk_stmts
from nestor.zoo import encoder_block
from nestor.zoo_breadth import llama_block
from tests.op_harness import single_node_model
from tests.test_passes import inputs
from tests.test_rules import launches

CUDA = machine_params(cuda_target("sm_90"))
MODELS = {"encoder_block": lambda: encoder_block(seq=32, hidden=64, heads=2, ffn=128),
          "llama_block": lambda: llama_block(seq=32, hidden=32, heads=2, intermediate=48)}


@pytest.mark.parametrize("model, task, rows", [
    ("encoder_block", "ln1 (+1)", 32), ("encoder_block", "probs", 2 * 32),
    ("llama_block", "input_layernorm.var (+1)", 32), ("llama_block", "attn.probs", 2 * 32)])
def test_model_row_tasks_get_a_block_per_row(model, task, rows):
    tasks = {t.name: t for t in extract_tasks(import_onnx(MODELS[model](), target=as_target("cuda")))}
    kernel = tasks[task].kernel
    sketch = Sketch.of(kernel, CUDA, strict=True)
    assert list(sketch.rules)[0] == "gpu_rows"
    seeds = [c for c in sketch.rule_decisions() if c.rule == "gpu_rows"]
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    built = []
    for n, c in enumerate(seeds):
        _, scheduled = sketch.realize(c)
        assert launches(scheduled)[0] == (rows, c.decisions.threads), c.decisions
        assert not [s for s in walk_stmts(scheduled.body)
                    if isinstance(s, Store) and s.reduce and s.buffer.scope == "global"], c.decisions
        for got, ref in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=str(c.decisions))
        built.append(dataclasses.replace(scheduled, name=f"seed{n}"))
    source = build(built, cuda_target("sm_90")).module.imports[0].inspect_source()
    assert source.count("__global__") >= 2 * len(seeds) and "__syncthreads()" in source


ADD_LAYER_NORM = """
kernel add_ln(X: f32[1, 8, 64], R: f32[1, 8, 64]) -> (Out: f32[1, 8, 64]) {
  alloc T: f32[1, 8, 64] global {
    alloc Mean: f32[1, 8, 1] global {
      for a0 in 0..1 { for a1 in 0..8 { for a2 in 0..64 { T[a0, a1, a2] = X[a0, a1, a2] + R[a0, a1, a2] } } }
      for i0 in 0..1 {
        for i1 in 0..8 {
          Mean[i0, i1, 0] = 0.0
          for r0 in 0..64 reduce { Mean[i0, i1, 0] += T[i0, i1, r0] }
          Mean[i0, i1, 0] = Mean[i0, i1, 0] / 64.0
        }
      }
      for e0 in 0..1 { for e1 in 0..8 { for e2 in 0..64 { Out[e0, e1, e2] = T[e0, e1, COLUMN] - Mean[e0, e1, 0] } } }
    }
  }
}
"""


@pytest.mark.parametrize("column, merged", [("e2", 1), ("63 - e2", 2)])
def test_add_before_a_row_reduction_joins_its_block_where_each_thread_reads_its_own_columns(column, merged):
    """An Add fused before the mean passes T through global memory: thread t writes the columns
    c = t mod T and the reduction's thread t reads them, so the three nests run as one launch; an
    epilogue reading T reversed would read other threads' columns with no barrier between, and
    runs as a launch of its own."""
    kernel = parse_kernel(ADD_LAYER_NORM.replace("COLUMN", column))
    sketch = Sketch.of(kernel, CUDA, strict=True, rules=(GpuRowReductions(),))
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    for c in sketch.rule_decisions():
        _, scheduled = sketch.realize(c)
        if c.decisions.merge:
            assert len(launches(scheduled)) == merged and launches(scheduled)[0] == (8, c.decisions.threads)
        for got, ref in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=str(c.decisions))


ROWS_AND_COLUMNS = """
kernel rows_and_columns(X: f32[64, 64]) -> (S: f32[64], C: f32[64]) {
  for i in 0..64 { S[i] = 0.0; for r in 0..64 reduce { S[i] += X[i, r] } }
  for j in 0..64 { C[j] = 0.0; for q in 0..64 reduce { C[j] += X[q, j] } }
}
"""


def test_a_reduction_that_is_not_a_row_stays_out_of_the_row_block():
    """The column sums would run whole in every thread of a row's block, all adding into one
    global element: they keep a launch of their own, a thread per column."""
    kernel = parse_kernel(ROWS_AND_COLUMNS)
    sketch = Sketch.of(kernel, CUDA, strict=True, rules=(GpuRowReductions(),))
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    for c in sketch.rule_decisions() + [sketch.sample(random.Random(n)) for n in range(3)]:
        _, scheduled = sketch.realize(c)
        assert launches(scheduled)[0] == (64, c.decisions.threads) and len(launches(scheduled)) == 2
        (row_block, _) = top_level_nests(scheduled)
        assert not [s for s in walk_stmts(row_block.spatial[0])
                    if isinstance(s, Store) and s.reduce and s.buffer.scope == "global"], c.decisions
        for got, ref in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=str(c.decisions))


def _softmax(rows: int, cols: int):
    from onnx import helper
    model = single_node_model(helper.make_node("Softmax", ["X"], ["Y"], axis=-1),
                              {"X": np.zeros((rows, cols), np.float32)})
    (node,) = [n for n in import_onnx(model, target=as_target("cuda")).nodes if n.kernel is not None]
    return node.kernel


def test_rows_of_prime_length_get_a_block_per_row_their_last_chunk_guarded():
    """A ViT's attention softmax over 197 tokens: no block width divides the row, so its
    reductions split over the threads with the last chunk guarded (it ran a thread per row)."""
    kernel = _softmax(3, 197)
    sketch = Sketch.of(kernel, CUDA, strict=True, rules=(GpuRowReductions(),))
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    built = []
    for threads in (32, 64, 128):
        for merge in (True, False):
            decisions = dataclasses.replace(sketch.rule_decisions()[0], decisions=GpuRowDecisions(threads, merge))
            _, scheduled = sketch.realize(decisions)
            assert launches(scheduled)[0] == (3, threads), (threads, merge)
            for got, ref in zip(run_kernel(scheduled, args), want):
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=str((threads, merge)))
            built.append(dataclasses.replace(scheduled, name=f"t{threads}{'m' if merge else ''}"))
    assert GpuRowDecisions(256, True) not in [c.decisions for c in sketch.rule_decisions()]  # more than a row
    source = build(built, cuda_target("sm_90")).module.imports[0].inspect_source()
    assert "__syncthreads()" in source and source.count("__global__") >= len(built)
