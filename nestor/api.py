"""The public Python API; the CLI and the ONNX backend are thin layers over it."""
from __future__ import annotations

import os
from typing import Callable

from .codegen import CompiledModel, compile_graph
from .frontend import import_model
from .ir import Graph, Kernel
from .passes import default_schedule
from .passes.model_schedule import ModelSchedule, read_model_schedule

SCHEDULES: dict[str, Callable[[Kernel], Kernel] | None] = {
    "default": default_schedule,   # parallel outer loop, vectorized inner loop
    "none": None,                  # the kernels exactly as the frontend wrote them
}


def import_onnx(model, input_shapes: dict | None = None) -> Graph:
    """ONNX model (path or ModelProto) → Nestor graph of kernels."""
    return import_model(model, input_shapes=input_shapes)


def scheduler(schedule: str | os.PathLike | ModelSchedule, graph: Graph) -> Callable[[Kernel], Kernel] | None:
    """What `compile` takes as a schedule -> the function applied to each distinct kernel:
    "default", "none", a schedule file (passes/model_schedule.py), a pipeline string for every
    kernel, or a ModelSchedule."""
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]
    if not isinstance(schedule, ModelSchedule):
        schedule = read_model_schedule(schedule)
    return schedule.scheduler_for(graph)


def compile(model, *, input_shapes: dict | None = None, target=None,
            schedule: str | os.PathLike | ModelSchedule = "default",
            progress: Callable[[str], None] | None = None) -> CompiledModel:
    """Compile an ONNX model (path, ModelProto or an imported Graph) into a runnable model;
    `schedule` is anything `scheduler` takes."""
    graph = model if isinstance(model, Graph) else import_onnx(model, input_shapes)
    return compile_graph(graph, target=target, schedule=scheduler(schedule, graph), progress=progress)


def load(path: str) -> CompiledModel:
    """Load a model saved with `CompiledModel.save` (needs only the TVM runtime)."""
    return CompiledModel.load(path)
