"""Import TVM PrimFuncs into Nestor and check them against TVM's own build.

`relax_tasks(model)`: the PrimFuncs MetaSchedule tunes for an ONNX model (TVM's ONNX frontend,
then the "zero" pipeline: legalization, fusion, FuseTIR). `check_import(func)` imports
one, builds it with Nestor and asserts its outputs match those of the PrimFunc built by TVM on
the same random inputs.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from nestor.codegen import host_target, run_kernel
from nestor.codegen.tir_import import kernel_from_primfunc
from nestor.ir import Kernel, verify


def relax_tasks(model) -> list[tuple[str, tirx.PrimFunc]]:
    """(name, PrimFunc) of each task MetaSchedule extracts. Its extract_tasks finds none in the
    module from_onnx returns: the PrimFuncs appear with the zero pipeline (LegalizeOps, FuseOps,
    FuseTIR), one task per PrimFunc."""
    import tvm.relax.frontend.onnx  # noqa: F401 (registers relax.frontend.onnx)
    from tvm.s_tir import meta_schedule as ms
    mod = relax.get_pipeline("zero")(relax.frontend.onnx.from_onnx(model))
    return [(t.task_name, t.dispatched[0]["main"]) for t in ms.relax_integration.extract_tasks(mod, host_target())]


def random_inputs(kernel: Kernel, seed: int = 0) -> list[np.ndarray]:
    """Positive floats, so a square root of a variance stays a number on both sides."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.1, 1.0, b.shape).astype(b.dtype) if b.dtype.startswith("float")
            else rng.integers(0, 2, b.shape).astype(b.dtype) for b in kernel.inputs]


def tvm_outputs(func: tirx.PrimFunc, kernel: Kernel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The function built and run by TVM (its params are the kernel's inputs, then outputs)."""
    exe = tvm.compile(func.with_attr("global_symbol", "main"), target=host_target())
    dev = tvm.cpu()
    outs = [tvm.runtime.tensor(np.zeros(b.shape, b.dtype), dev) for b in kernel.outputs]
    exe["main"](*[tvm.runtime.tensor(a, dev) for a in inputs], *outs)
    return [o.numpy() for o in outs]


def check_import(func: tirx.PrimFunc, name: str = "main", rtol=1e-5, atol=1e-5) -> Kernel:
    kernel = kernel_from_primfunc(func, name)
    verify(kernel)
    assert [b.shape for b in kernel.params] == [tuple(int(d) for d in p.shape) for p in func.params]
    inputs = random_inputs(kernel)
    for ours, theirs in zip(run_kernel(kernel, inputs), tvm_outputs(func, kernel, inputs)):
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)
    return kernel
