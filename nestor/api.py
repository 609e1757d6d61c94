"""The public Python API; the CLI and the ONNX backend are thin layers over it."""
from __future__ import annotations

import functools
import os
from typing import Callable

from .codegen import CompiledModel, as_target, compile_graph, machine_params
from .frontend import import_model
from .ir import Graph, Kernel
from .passes import default_schedule
from .passes.fusion import fuse_elementwise
from .passes.model_schedule import ModelSchedule, read_model_schedule

SCHEDULES: dict[str, Callable[..., Kernel] | None] = {   # called with the kernel and the machine
    "default": default_schedule,   # parallel outer loop, vectorized inner loop
    "none": None,                  # the kernels exactly as the frontend wrote them
}


def import_onnx(model, input_shapes: dict | None = None, optimize: bool = True,
                blocked: bool | None = None, winograd: bool | None = None, target=None) -> Graph:
    """ONNX model (path or ModelProto) → Nestor graph of kernels. `optimize`: fold BatchNorms
    into convolutions (frontend/graph_passes.py), with `blocked` put convolutions and their
    neighbours in NCHW<b>c (frontend/layout.py; with `winograd`, its 3x3 stride-1 convs as
    Winograd F(2x2, 3x3): frontend/winograd.py), and fuse elementwise consumers into the
    kernels that produce their inputs (passes/fusion.py). `target` (anything `as_target` takes:
    "cpu", the default, "cuda", a TVM target string or JSON) decides the layouts' blocks, and
    `blocked` and `winograd` where they are None (on for a CPU, off for a GPU)."""
    graph = import_model(model, input_shapes=input_shapes, optimize=optimize, blocked=blocked,
                         winograd=winograd, machine=machine_params(target))
    return fuse_elementwise(graph) if optimize else graph


def scheduler(schedule: str | os.PathLike | ModelSchedule, graph: Graph, records: str | None = None,
              target=None) -> Callable[[Kernel], Kernel] | None:
    """What `compile` takes as a schedule -> the function applied to each distinct kernel:
    "default", "none", a schedule file (passes/model_schedule.py), a pipeline string for every
    kernel, or a ModelSchedule. With `records` (a tuning database), a kernel's best stored
    schedule wins; kernels never tuned get `schedule`."""
    target = as_target(target)
    if isinstance(schedule, str) and schedule in SCHEDULES:
        named = SCHEDULES[schedule]
        base = functools.partial(named, machine=machine_params(target)) if named else None
    else:
        base = (schedule if isinstance(schedule, ModelSchedule) else read_model_schedule(schedule)).scheduler_for(graph)
    if records is None:
        return base
    from .autotune.tune import best_kernels
    best = best_kernels(records, target)

    def tuned_or_base(kernel: Kernel) -> Kernel:
        found = best(kernel)
        if found is not None:
            return found
        return base(kernel) if base else kernel
    return tuned_or_base


def compile(model, *, input_shapes: dict | None = None, target=None,
            schedule: str | os.PathLike | ModelSchedule = "default", records: str | None = None,
            optimize: bool = True, blocked: bool | None = None, winograd: bool | None = None,
            progress: Callable[[str], None] | None = None) -> CompiledModel:
    """Compile an ONNX model (path, ModelProto or an imported Graph, compiled as it is) into a
    runnable model; `schedule` is anything `scheduler` takes; `records`: use the best tuned
    schedules stored there; `optimize`, `blocked`, `winograd`: as in `import_onnx`; `target`:
    "cpu" or None (this CPU), "cuda" (this machine's GPU), a TVM target, its string, JSON or
    dict form. The model runs on the target's device."""
    target = as_target(target)
    graph = model if isinstance(model, Graph) else import_onnx(model, input_shapes, optimize, blocked, winograd, target)
    return compile_graph(graph, target=target, schedule=scheduler(schedule, graph, records, target),
                         progress=progress)


def load(path: str) -> CompiledModel:
    """Load a model saved with `CompiledModel.save` (needs only the TVM runtime)."""
    return CompiledModel.load(path)
