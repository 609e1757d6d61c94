"""Nestor as an ONNX backend (`onnx.backend.base.Backend`), like `onnxruntime.backend`.

    import nestor.backend as backend
    rep = backend.prepare(model, device="CPU")   # or "CUDA": compiled for this machine's GPU
    outputs = rep.run([x])

ONNX's own backend test runner (`onnx.backend.test.BackendTest`) can drive it.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep

from .api import compile as nestor_compile
from .codegen import TargetError, gpu_present
from .frontend import UnsupportedOpError
from .ir.errors import ModelError

TARGETS = {"CPU": "cpu", "CUDA": "cuda"}   # ONNX device names (onnx.backend.base.DeviceType)


class NestorRep(BackendRep):
    """A prepared model. Nestor compiles static programs: when a model's shapes depend on the
    values of integer inputs (a Reshape target, Slice bounds, reduction axes fed at run time),
    the rep compiles on first run with those inputs baked in as constants, once per value."""

    def __init__(self, model: onnx.ModelProto, compiled=None, input_shapes=None, target="cpu"):
        self.model = model
        self.compiled = compiled
        self.input_shapes = input_shapes
        self.target = target
        self._specialized: dict[bytes, object] = {}
        self.constant_inputs: set[str] = set()  # named by the compile error (Resize's scales)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, (np.ndarray, onnx.TensorProto)):
            inputs = [inputs]
        inputs = ({k: _array(v) for k, v in inputs.items()} if isinstance(inputs, dict)
                  else [_array(v) for v in inputs])
        if self.compiled is not None:
            return tuple(self.compiled.run(inputs))
        names = [vi.name for vi in self.model.graph.input
                 if vi.name not in {t.name for t in self.model.graph.initializer}]
        values = dict(zip(names, inputs)) if not isinstance(inputs, dict) else dict(inputs)
        baked = {n: np.asarray(v) for n, v in values.items()
                 if _shape_like(np.asarray(v)) or n in self.constant_inputs}
        key = b"".join(n.encode() + v.tobytes() + str(v.shape).encode() for n, v in sorted(baked.items()))
        if key not in self._specialized:
            self._specialized[key] = nestor_compile(_bake(self.model, baked), input_shapes=self.input_shapes,
                                                    target=self.target)
        rest = {n: v for n, v in values.items() if n not in baked}
        return tuple(self._specialized[key].run(rest))


class NestorBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU always; CUDA where an NVIDIA GPU is present."""
        return _target(device) == "cpu" or gpu_present()

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> NestorRep:
        if not cls.supports_device(device):
            raise TargetError(f"device {device!r}: no NVIDIA GPU is present here")
        target = _target(device)
        shapes = kwargs.get("input_shapes")
        try:
            return NestorRep(model, nestor_compile(model, input_shapes=shapes, target=target), shapes, target)
        except (UnsupportedOpError, ModelError) as err:
            if not _needs_values(err):
                raise
            rep = NestorRep(model, None, shapes, target)  # compiled at run time, per input value
            rep.constant_inputs = set(re.findall(r"\('([^']*)'\) must be a constant", str(err)))
            return rep

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info=None, **kwargs: Any):
        """Run one node: wrap it in a one-node model whose inputs are `inputs`, in order."""
        inputs = [np.asarray(x) for x in inputs]
        names = [n for n in node.input if n]
        vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
               for n, x in zip(names, inputs)]
        outs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]  # types inferred
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(helper.make_graph([node], "node", vis, outs),
                                  opset_imports=[helper.make_opsetid("", opset)])
        return cls.run_model(onnx.shape_inference.infer_shapes(model), inputs, device)


def _target(device: str) -> str:
    """The target of an ONNX device name ("CPU", "CUDA", "CUDA:0")."""
    kind, _, index = str(device).partition(":")
    kind = kind.strip().upper()
    if kind not in TARGETS:
        raise TargetError(f"unknown device {device!r}: Nestor's ONNX backend runs on "
                          f"{' or '.join(TARGETS)}")
    if index.strip() not in ("", "0"):
        raise TargetError(f"device {device!r}: Nestor runs on the first device only ({kind}:0)")
    return TARGETS[kind]


def _array(value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _needs_values(err: Exception) -> bool:
    text = str(err)
    return "must be a constant" in text or "could not be inferred statically" in text


def _shape_like(value: np.ndarray) -> bool:
    """Small integer tensors are what shapes, axes, pads and bounds are made of; scalars may
    also be Range bounds or a Pad value."""
    return value.ndim == 0 or (value.dtype.kind in "iu" and value.ndim <= 1 and value.size <= 16)


def _bake(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [vi for vi in out.graph.input if vi.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items())
    return out


prepare = NestorBackend.prepare
run_model = NestorBackend.run_model
run_node = NestorBackend.run_node
supports_device = NestorBackend.supports_device
is_compatible = NestorBackend.is_compatible
