"""The public Python API; the CLI and the ONNX backend are thin layers over it."""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Callable

import onnx

from .codegen import CompiledModel, as_target, compile_graph, is_gpu, machine_params
from .frontend import import_model
from .ir import For, Graph, Kernel, walk_stmts
from .ir.errors import UsageError
from .passes import ScheduleError, default_schedule
from .passes.fusion import fuse_elementwise
from .passes.model_schedule import ModelSchedule, read_model_schedule


def _untuned(kernel: Kernel, machine) -> Kernel:
    from .autotune.space import untuned_schedule   # here: at `import nestor` it would load the sketch rules
    return untuned_schedule(kernel, machine)


SCHEDULES: dict[str, Callable[..., Kernel] | None] = {   # called with the kernel and the machine
    "default": _untuned,           # the best schedule Nestor knows without measuring
    "basic": default_schedule,     # parallel outer loop, vectorized inner loop (GPU: bound)
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
    _check_types("import_onnx", model=(model, (str, os.PathLike, onnx.ModelProto)))
    _check_shapes(input_shapes)
    graph = import_model(model, input_shapes=input_shapes, optimize=optimize, blocked=blocked,
                         winograd=winograd, machine=machine_params(target))
    return fuse_elementwise(graph) if optimize else graph


def scheduler(schedule: str | os.PathLike | ModelSchedule, graph: Graph, records: str | None = None,
              target=None) -> Callable[[Kernel], Kernel] | None:
    """What `compile` takes as a schedule -> the function applied to each distinct kernel:
    "default", "basic", "none", a schedule file (passes/model_schedule.py), a pipeline string for every
    kernel, or a ModelSchedule. With `records` (a tuning database), a kernel's best stored
    schedule wins; kernels never tuned get `schedule`."""
    target = as_target(target)
    _check_types("compile", schedule=(schedule, (str, os.PathLike, ModelSchedule)),
                 records=(records, (str, os.PathLike, type(None))))
    if isinstance(schedule, str) and schedule in SCHEDULES:
        named = SCHEDULES[schedule]
        base = functools.partial(named, machine=machine_params(target)) if named else None
    else:
        base = (schedule if isinstance(schedule, ModelSchedule) else read_model_schedule(schedule)).scheduler_for(graph)
    if records is None:
        return _for_target(base, target)
    from .autotune.tune import best_kernels
    best = best_kernels(records, target)

    def tuned_or_base(kernel: Kernel) -> Kernel:
        found = best(kernel)
        if found is not None:
            return found
        return base(kernel) if base else kernel
    return _for_target(tuned_or_base, target)


def _for_target(schedule: Callable[[Kernel], Kernel] | None, target) -> Callable[[Kernel], Kernel] | None:
    """`schedule`, refusing GPU bindings on a CPU target (TVM would compile them as plain loops)."""
    if schedule is None or is_gpu(target):
        return schedule

    def checked(kernel: Kernel) -> Kernel:
        out = schedule(kernel)
        for s in walk_stmts(out.body):
            if isinstance(s, For) and s.kind.startswith(("blockIdx", "threadIdx")):
                raise ScheduleError(f"kernel {out.name}", s.var, f"bound to {s.kind}, but the target "
                                    f"({target.kind.name}) is a CPU; bind is for GPU targets")
        return out
    return checked


def _check_types(function: str, **values) -> None:
    """Each keyword's (value, allowed types): a wrong type is a UsageError naming the argument."""
    for name, (value, types) in values.items():
        if not isinstance(value, types):
            allowed = " or ".join(t.__name__ for t in types if t is not type(None))
            raise UsageError(f"nestor.{function}: {name} must be {allowed}, not {type(value).__name__}")


def _check_shapes(input_shapes) -> None:
    """None or {input name: a sequence of whole numbers}."""
    if input_shapes is None:
        return
    if not isinstance(input_shapes, Mapping):
        raise UsageError(f"input_shapes must be a dict of input name -> shape, not {type(input_shapes).__name__}")
    for name, shape in input_shapes.items():
        if not (isinstance(shape, Sequence) and not isinstance(shape, str)
                and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise UsageError(f"input_shapes['{name}'] must be a sequence of whole numbers, not {shape!r}")


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
    _check_types("compile", model=(model, (str, os.PathLike, onnx.ModelProto, Graph)))
    graph = model if isinstance(model, Graph) else import_onnx(model, input_shapes, optimize, blocked, winograd, target)
    return compile_graph(graph, target=target, schedule=scheduler(schedule, graph, records, target),
                         progress=progress)


def load(path: str) -> CompiledModel:
    """Load a model saved with `CompiledModel.save` (needs only the TVM runtime)."""
    _check_types("load", path=(path, (str, os.PathLike)))
    return CompiledModel.load(path)
