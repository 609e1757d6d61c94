"""Nestor as an ONNX backend (`onnx.backend.base.Backend`), like `onnxruntime.backend`.

    import nestor.backend as backend
    rep = backend.prepare(model, device="CPU")
    outputs = rep.run([x])

ONNX's own backend test runner (`onnx.backend.test.BackendTest`) can drive it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep

from .api import compile as nestor_compile


class NestorRep(BackendRep):
    def __init__(self, compiled):
        self.compiled = compiled

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        return tuple(self.compiled.run(inputs))


class NestorBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> NestorRep:
        if not cls.supports_device(device):
            raise RuntimeError(f"Nestor's ONNX backend runs on CPU only, not {device}")
        return NestorRep(nestor_compile(model, input_shapes=kwargs.get("input_shapes")))

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
        outs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                for n in node.output if n]
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(helper.make_graph([node], "node", vis, outs),
                                  opset_imports=[helper.make_opsetid("", opset)])
        return cls.run_model(model, inputs, device)


prepare = NestorBackend.prepare
run_model = NestorBackend.run_model
run_node = NestorBackend.run_node
supports_device = NestorBackend.supports_device
is_compatible = NestorBackend.is_compatible
