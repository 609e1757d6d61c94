"""The GPU as a target of the runtime: artifacts record their target, CUDA builds use the native
math calls, a CUDA model loaded without a GPU is one clear error. Tests marked `gpu` run the
models on the GPU and compare with NumPy / ONNX Runtime (they skip where no GPU is present)."""
import json
import shutil
import zipfile

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor.codegen.artifact import FORMAT_VERSION
from nestor.codegen import (CompiledModel, TargetError, build, cuda_target, gpu_present, host_target,
                            run_kernel, to_primfunc)
from nestor.ir import parse_kernel
from nestor.ir.errors import ModelError
from nestor.passes import parse_pipeline
from tests.test_models import assert_close_to_ort

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to build CUDA code")
without_gpu = pytest.mark.skipif(gpu_present(), reason="checks the behaviour where no GPU is present")

BIND = "bind(i0, blockIdx.x); bind(i1, threadIdx.x)"   # both kernels of tiny_model: i0, i1 outermost

MATH = parse_kernel("""kernel math(A: f32[8, 32]) -> (C: f32[8, 32]) {
  for i in 0..8 { for j in 0..32 { C[i, j] = exp(A[i, j]) + tanh(A[i, j]) + erf(A[i, j]) } }
}""")


def tiny_model() -> onnx.ModelProto:
    """Add, Relu, MatMul with a constant weight, Tanh: two kernels (add_relu, matmul_tanh)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    nodes = [helper.make_node("Add", ["X", "Y"], ["S"]), helper.make_node("Relu", ["S"], ["R"]),
             helper.make_node("MatMul", ["R", "W"], ["M"]), helper.make_node("Tanh", ["M"], ["Z"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 16]) for n in ("X", "Y")]
    output = helper.make_tensor_value_info("Z", TensorProto.FLOAT, [4, 8])
    graph = helper.make_graph(nodes, "tiny", inputs, [output], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rewrite_plan(path, change) -> None:
    """Rewrite the plan.json of a saved artifact with `change(plan)`."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    plan = json.loads(entries["plan.json"])
    change(plan)
    entries["plan.json"] = json.dumps(plan).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


# --- artifacts and their targets (any machine) -----------------------------------------------

def test_artifact_records_its_target_and_reloads(tmp_path):
    compiled = nestor.compile(tiny_model())
    assert compiled.plan["version"] == FORMAT_VERSION
    assert compiled.plan["target"] == str(host_target())
    path = str(tmp_path / "tiny.nestor")
    compiled.save(path)
    loaded = nestor.load(path)
    assert str(loaded.target) == str(host_target()) and loaded.device == tvm.cpu()
    inputs = compiled.random_inputs(seed=2)
    for a, b in zip(compiled.run(inputs), loaded.run(inputs)):
        np.testing.assert_array_equal(a, b)


def test_version_1_artifact_loads_as_a_cpu_model(tmp_path):
    compiled = nestor.compile(tiny_model())
    path = str(tmp_path / "v1.nestor")
    compiled.save(path)

    def as_version_1(plan):
        plan["version"] = 1
        del plan["target"]
    _rewrite_plan(path, as_version_1)
    loaded = nestor.load(path)
    assert str(loaded.target) == str(host_target())
    inputs = compiled.random_inputs(seed=4)
    for a, b in zip(compiled.run(inputs), loaded.run(inputs)):
        np.testing.assert_array_equal(a, b)


def test_unknown_format_version_is_one_clear_error(tmp_path):
    path = str(tmp_path / "v9.nestor")
    nestor.compile(tiny_model()).save(path)
    _rewrite_plan(path, lambda plan: plan.update(version=9))
    with pytest.raises(ModelError, match=r"v9.nestor' has format version 9, this Nestor reads 1 to 3; compile the model again"):
        nestor.load(path)


@needs_nvcc
@without_gpu
def test_cuda_artifact_without_a_gpu_is_one_clear_error_before_loading_kernels(tmp_path, monkeypatch):
    compiled = nestor.compile(tiny_model(), target="cuda", schedule=BIND)
    assert json.loads(compiled.plan["target"])["kind"] == "cuda"
    with pytest.raises(ModelError, match="compiled for an NVIDIA GPU .*no GPU is present"):
        compiled.run(compiled.random_inputs())
    path = str(tmp_path / "tiny_cuda.nestor")
    compiled.save(path)  # it can be built and saved here, to run where the GPU is

    def must_not_load(path):
        raise AssertionError("the kernels' library was loaded")
    monkeypatch.setattr("nestor.codegen.model.load_module", must_not_load)
    with pytest.raises(ModelError) as err:
        nestor.load(path)
    message = str(err.value)
    assert "\n" not in message and "tiny_cuda.nestor" in message and "cuda sm_" in message


@needs_nvcc
def test_unbound_kernel_for_a_gpu_is_one_clear_error():
    # TVM would compile the unbound nest as host code reading device memory
    with pytest.raises(TargetError, match="store to Out is in no loop bound to the GPU"):
        nestor.compile(tiny_model(), target="cuda", schedule="none")


# --- kernels: bindings and math per target ---------------------------------------------------

def test_bound_kernel_runs_serially_on_the_cpu():
    bound = parse_pipeline(BIND).apply(MATH)
    x = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    got = run_kernel(bound, [x])[0]
    np.testing.assert_array_equal(got, run_kernel(bound, [x])[0])
    np.testing.assert_array_equal(got, run_kernel(MATH, [x])[0])


def test_cpu_lowering_keeps_the_fast_math_polynomials():

    cpu, cuda = to_primfunc(MATH), to_primfunc(parse_pipeline(BIND).apply(MATH), gpu=True)
    assert cpu.script() == to_primfunc(MATH, gpu=False).script()
    # the polynomials build 2^n from the exponent bits; the GPU form calls the intrinsics
    assert "<< 23" in cpu.script() and "T.exp(" not in cpu.script()
    assert all(f"T.{fn}(" in cuda.script() for fn in ("exp", "tanh", "erf"))
    x = np.linspace(-6, 6, 256, dtype=np.float32).reshape(8, 32)
    want = np.exp(x) + np.tanh(x) + np.vectorize(__import__("math").erf)(x).astype(np.float32)
    np.testing.assert_allclose(run_kernel(MATH, [x])[0], want, rtol=2e-6, atol=1e-6)


@needs_nvcc
def test_cuda_source_calls_native_math():
    kernels = build([parse_pipeline(BIND).apply(MATH)], cuda_target()).module.imports
    source = kernels[0].inspect_source()
    assert "__global__" in source
    assert all(call in source for call in ("expf(", "tanhf(", "erff("))
    assert "<< 23" not in source  # no polynomial's exponent-bit trick


# --- on the GPU --------------------------------------------------------------------------------

@pytest.mark.gpu
def test_run_kernel_on_the_gpu_matches_numpy():
    x = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    got = run_kernel(parse_pipeline(BIND).apply(MATH), [x], "cuda")[0]
    want = np.exp(x) + np.tanh(x) + np.vectorize(__import__("math").erf)(x).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _gpu_models():
    from nestor.zoo import LIGHT_MODELS
    return list(LIGHT_MODELS) + ["encoder_block", "bert_layer"]


def _model(name):
    from nestor.zoo import encoder_block, light_model
    if name == "encoder_block":
        return encoder_block(seq=32, hidden=64, heads=4, ffn=128)
    return encoder_block() if name == "bert_layer" else light_model(name, seed=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", _gpu_models())
def test_model_on_the_gpu_matches_onnxruntime(name):
    model = _model(name)
    compiled = nestor.compile(model, target="cuda")
    assert compiled.device == tvm.cuda(0)
    assert_close_to_ort(model, compiled)


@pytest.mark.gpu
def test_cuda_artifact_reloads_with_the_same_outputs(tmp_path):
    compiled = nestor.compile(_model("encoder_block"), target="cuda")
    path = str(tmp_path / "enc_cuda.nestor")
    compiled.save(path)
    loaded = CompiledModel.load(path)
    assert loaded.device == tvm.cuda(0)
    inputs = compiled.random_inputs(seed=5)
    for a, b in zip(compiled.run(inputs), loaded.run(inputs)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_kernels_only_on_the_gpu_runs_and_waits():
    from nestor.codegen import median_latency
    compiled = nestor.compile(tiny_model(), target="cuda")
    inputs = compiled.random_inputs(seed=6)
    want = compiled.run(inputs)
    kernels = compiled.kernels_only(inputs)
    assert median_latency(kernels, repeat=3, warmup=1) > 0
    # the kernels ran on the inputs fed: the outputs in place are those of run
    out = compiled._own().tensors[compiled.output_names[0]].numpy()
    np.testing.assert_array_equal(out, want[0])


# --- the ONNX backend --------------------------------------------------------------------------

def test_backend_devices():
    import nestor.backend as backend
    assert backend.supports_device("CPU")
    assert backend.supports_device("CUDA") == gpu_present()
    with pytest.raises(TargetError, match="unknown device 'TPU'"):
        backend.prepare(tiny_model(), "TPU")
    with pytest.raises(TargetError, match="first device only"):
        backend.prepare(tiny_model(), "CUDA:1")
    if not gpu_present():
        with pytest.raises(TargetError, match="no NVIDIA GPU is present"):
            backend.prepare(tiny_model(), "CUDA")


@pytest.mark.gpu
def test_backend_prepares_for_cuda():
    import nestor.backend as backend
    model = tiny_model()
    rep = backend.prepare(model, "CUDA")
    assert rep.compiled.device == tvm.cuda(0)
    assert_close_to_ort(model, rep.compiled)
