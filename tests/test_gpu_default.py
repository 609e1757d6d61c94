"""The GPU default schedule: every kernel the frontend makes for the GPU runs each output point
on a thread of its own, builds for CUDA, and computes what the unscheduled kernel computes (its
bound loops run serially when built for the CPU)."""
import dataclasses
import functools
import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import nestor
from nestor.autotune.measure import random_array
from nestor.codegen import build, cuda_target, machine_params, run_kernel
from nestor.ir import (Allocate, For, Kernel, Seq, Store, parse_kernel, print_expr, print_kernel, structural_hash,
                       verify, walk_stmts)
from nestor.ir.machine import AVX2, AVX512
from nestor.passes import DefaultNest, Schedule, default_schedule
from nestor.zoo import LIGHT_MODELS, encoder_block, exported_encoder, light_model

DATA = pathlib.Path(__file__).parent / "data"
FAST = ("squeezenet", "shufflenet", "encoder_block", "bert_layer")   # the CI run; the rest: slow
MODELS = LIGHT_MODELS + ("encoder_block", "bert_layer")


def gpu():
    return machine_params(cuda_target())


def model(name):
    if name == "encoder_block":
        return encoder_block(seq=32, hidden=64, heads=4, ffn=128)
    if name == "bert_layer":
        return exported_encoder()
    return light_model(name)


@functools.lru_cache(maxsize=None)
def distinct_kernels(name) -> tuple[Kernel, ...]:
    """The model's kernels as imported for the GPU, one per structural hash, names made unique
    (one build takes them all)."""
    graph = nestor.import_onnx(model(name), target=cuda_target(), blocked=None, winograd=None)
    kernels = {}
    for k in graph.kernels():
        kernels.setdefault(structural_hash(k), k)
    return tuple(dataclasses.replace(k, name=f"{k.name}_{n}") for n, k in enumerate(kernels.values()))


def marked(names, fast=FAST):
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


def random_inputs(kernel, seed=0):
    rng = np.random.default_rng(seed)
    return [random_array(b.shape, b.dtype, rng) for b in kernel.inputs]


def assert_on_threads(kernel):
    """Every top-level statement (through Seq and Allocate) is a blockIdx loop around a
    threadIdx loop, and no loop is parallel or vectorized."""
    tops, stack = [], [kernel.body]
    while stack:
        s = stack.pop()
        if isinstance(s, Seq):
            stack.extend(s.stmts)
        elif isinstance(s, Allocate):
            stack.append(s.body)
        else:
            tops.append(s)
    for s in tops:
        assert isinstance(s, For) and s.kind == "blockIdx.x", f"{kernel.name}: top-level {s}"
        assert isinstance(s.body, For) and s.body.kind == "threadIdx.x", kernel.name
    kinds = {s.kind for s in walk_stmts(kernel.body) if isinstance(s, For)}
    assert not kinds & {"parallel", "vectorized"}, kernel.name


def nvcc_compiles(module, tmp_path):
    """The CUDA source of a built module compiles with nvcc (this TVM writes the source only:
    it is compiled where the module is loaded on a GPU)."""
    if shutil.which("nvcc") is None:
        return
    source = "".join(m.inspect_source() for m in module.module.imports)
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    done = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-o", str(tmp_path / "k.cubin"), str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("name", marked(MODELS))
def test_every_statement_runs_on_gpu_threads(name):
    machine = gpu()
    for k in distinct_kernels(name):
        scheduled = default_schedule(k, machine)
        verify(scheduled)
        assert parse_kernel(print_kernel(scheduled)) == scheduled
        assert_on_threads(scheduled)


@pytest.mark.parametrize("name", marked(MODELS))
def test_builds_for_cuda(name, tmp_path):
    machine = gpu()
    module = build([default_schedule(k, machine) for k in distinct_kernels(name)], cuda_target())
    nvcc_compiles(module, tmp_path)


@pytest.mark.parametrize("name", marked(MODELS))
def test_same_results_as_unscheduled(name):
    kernels = distinct_kernels(name)
    unscheduled = build(list(kernels))
    scheduled = build([default_schedule(k, gpu()) for k in kernels])   # bound loops run serially
    for k in kernels:
        args = random_inputs(k)
        for g, w in zip(scheduled.run(k, args), unscheduled.run(k, args)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=k.name)


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_runs_on_the_gpu_as_on_the_cpu(name):
    """Each kernel on the GPU against the unscheduled kernel on the CPU, every kernel of a model
    in one build per target (one CUDA compile, not one per kernel)."""
    kernels = distinct_kernels(name)
    on_cpu = build(list(kernels))
    on_gpu = build([default_schedule(k, gpu()) for k in kernels], cuda_target())
    for k in kernels:
        args = random_inputs(k)
        for g, w in zip(on_gpu.run(k, args), on_cpu.run(k, args)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=k.name)


def test_gpu_imports_nchw_and_cpu_blocked():
    """Blocked layouts and Winograd are for SIMD units: decided by the machine unless asked."""
    m = light_model("resnet50")
    texts = lambda g: " ".join(print_kernel(k) for k in g.kernels())
    on_gpu = texts(nestor.import_onnx(m, target=cuda_target(), blocked=None, winograd=None))
    on_cpu = texts(nestor.import_onnx(m, target="cpu", blocked=None, winograd=None))
    forced = texts(nestor.import_onnx(m, target=cuda_target(), blocked=True, winograd=True))
    assert "winograd" not in on_gpu and "pack" not in on_gpu
    assert "winograd" in on_cpu and "winograd" in forced


# -- nests without a band to bind, and the coalescing order ----------------------------------

SCALAR = """kernel total(X: f32[5, 12]) -> (Out: f32[]) {
  Out[] = 0.0
  for r0 in 0..5 reduce {
    for r1 in 0..12 reduce { Out[] += X[r0, r1] }
  }
  Out[] = Out[] * 2.0
}"""

SCAN = """kernel scan(X: f32[300]) -> (Out: f32[300]) {
  Out[0] = X[0]
  for i in 0..299 { Out[i + 1] = Out[i] + X[i + 1] }
}"""

COLUMNS_OUTER = """kernel columns(X: f32[6, 40]) -> (Out: f32[6, 40]) {
  for j in 0..40 {
    for i in 0..6 { Out[i, j] = X[i, j] + 1.0 }
  }
}"""

ROWS = """kernel rows(X: f32[3000, 5]) -> (Out: f32[3000, 5]) {
  for i in 0..3000 {
    for j in 0..5 { Out[i, j] = X[i, j] * 2.0 }
  }
  for i in 0..3000 {
    for j in 0..5 { Out[i, j] = Out[i, j] + 1.0 }
  }
}"""


def scheduled_and_checked(text):
    kernel = parse_kernel(text)
    scheduled = default_schedule(kernel, gpu())
    verify(scheduled)
    assert_on_threads(scheduled)
    build([scheduled], cuda_target())
    args = random_inputs(kernel)
    np.testing.assert_allclose(run_kernel(scheduled, args)[0], run_kernel(kernel, args)[0],
                               rtol=1e-5, atol=1e-5)
    return scheduled


@pytest.mark.parametrize("text", [SCALAR, SCAN])
def test_what_has_no_band_runs_on_one_thread_in_one_launch(text):
    scheduled = scheduled_and_checked(text)
    (block,) = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "blockIdx.x"]
    assert block.extent == 1 and block.body.extent == 1


def test_contiguous_loop_walks_the_threads():
    """The loop of the stores' last index is fused innermost: consecutive threads write
    consecutive elements."""
    scheduled = scheduled_and_checked(COLUMNS_OUTER)
    (store,) = [s for s in walk_stmts(scheduled.body) if isinstance(s, Store)]
    assert print_expr(store.indices[-1]).endswith("% 40")   # the thread index, modulo the row


def test_sibling_nests_bind_separately_with_a_guard():
    scheduled = scheduled_and_checked(ROWS)
    blocks = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "blockIdx.x"]
    threads = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "threadIdx.x"]
    assert [b.extent for b in blocks] == [59, 59] and [t.extent for t in threads] == [256, 256]
    assert "if " in print_kernel(scheduled)   # 15000 points are not whole blocks of 256


def test_small_nest_is_one_exact_block():
    scheduled = scheduled_and_checked(COLUMNS_OUTER)
    (block,) = [s for s in walk_stmts(scheduled.body) if isinstance(s, For) and s.kind == "blockIdx.x"]
    assert block.extent == 1 and block.body.extent == 240 and "if " not in print_kernel(scheduled)


# -- DefaultNest's GPU form, and the CPU default unchanged -----------------------------------

def test_default_nest_gpu_form_round_trips_and_binds():
    kernel = parse_kernel(ROWS)
    step = DefaultNest.for_machine("i2", gpu())   # the second nest (loops named canonically)
    assert step == DefaultNest("i2", threads=256)
    schedule = Schedule((step,))
    again = Schedule.from_json(schedule.to_json())
    assert again == schedule and "threads" in schedule.to_json()
    applied = again.apply(kernel)
    kinds = [s.kind for s in walk_stmts(applied.body) if isinstance(s, For)]
    assert kinds == ["serial", "serial", "blockIdx.x", "threadIdx.x"]   # the second nest only
    assert DefaultNest.for_machine("i2", AVX512) == DefaultNest("i2", 16, True)


def test_recorded_cpu_default_steps_replay_as_recorded():
    saved = json.loads((DATA / "schedules_7d865dc.json").read_text())
    texts = [t for e in saved.values() for t in e["schedules"] if '"default"' in t]
    assert texts
    for text in texts:
        assert Schedule.from_json(text).to_json() == text


def test_cpu_default_schedule_unchanged():
    """The CPU default of SqueezeNet's, ResNet-50's and an encoder's kernels, as it was before
    the GPU form (tests/data/cpu_default_fca6876.json). Since then SqueezeNet's global pool reads
    its input blocked (3206e16): that pool and the conversion after it are new kernels; and a
    softmax on a CPU computes each exp once (3efa52d): the three models' softmaxes are new kernels.
    And a loop no vector width divides is vectorized, its last vector guarded (5649eaf): ResNet-50's
    stem pads its input to 229 columns, which ran scalar; only that loop may differ."""
    saved = json.loads((DATA / "cpu_default_fca6876.json").read_text())
    checked, new = set(), set()
    for label, m in (("squeezenet", light_model("squeezenet")), ("resnet50", light_model("resnet50")),
                     ("encoder", encoder_block(seq=16, hidden=64, heads=4, ffn=128))):
        for k in nestor.import_onnx(m, target="cpu", blocked=True, winograd=True).kernels():
            for machine_name, machine in (("avx512", AVX512), ("avx2", AVX2)):
                key = f"{label}/{k.name}/{structural_hash(k)[:12]}/{machine_name}"
                if key not in saved:
                    new.add(f"{label}/{k.name}")
                    continue
                now = print_kernel(default_schedule(k, machine))
                if key.startswith("resnet50/conv_relu/00ca82d8454f/"):
                    assert now.count("vectorized") == saved[key].count("vectorized") + 1, key
                    assert now.count("< 229 {") == 1 and "for p3 in 0..229" in saved[key], key
                else:
                    assert now == saved[key], key
                checked.add(key)
    softmaxes = {"squeezenet/softmax", "resnet50/softmax", "encoder/softmax"}
    assert new <= {"squeezenet/globalaveragepoolnchwc", "squeezenet/from_nchwc"} | softmaxes
    assert len(checked) == len(saved) - 10  # all but the plain pool, its conversion and the softmaxes, on two machines
