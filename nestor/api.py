"""The public Python API; the CLI and the ONNX backend are thin layers over it."""
from __future__ import annotations

from typing import Callable

from .codegen import CompiledModel, compile_graph
from .frontend import import_model
from .ir import Graph, Kernel
from .passes import default_schedule

SCHEDULES: dict[str, Callable[[Kernel], Kernel] | None] = {
    "default": default_schedule,   # parallel outer loop, vectorized inner loop
    "none": None,                  # the kernels exactly as the frontend wrote them
}


def import_onnx(model, input_shapes: dict | None = None) -> Graph:
    """ONNX model (path or ModelProto) → Nestor graph of kernels."""
    return import_model(model, input_shapes=input_shapes)


def compile(model, *, input_shapes: dict | None = None, target=None, schedule: str = "default",
            progress: Callable[[str], None] | None = None) -> CompiledModel:
    """Compile an ONNX model (path, ModelProto or an imported Graph) into a runnable model."""
    graph = model if isinstance(model, Graph) else import_onnx(model, input_shapes)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
    return compile_graph(graph, target=target, schedule=SCHEDULES[schedule], progress=progress)


def load(path: str) -> CompiledModel:
    """Load a model saved with `CompiledModel.save` (needs only the TVM runtime)."""
    return CompiledModel.load(path)
