"""A whole model as one deployable artifact: compiled kernels + an execution plan + weights.

`compile_graph` builds every distinct kernel of a graph (structurally equal kernels share one
function) into a single module and plans intermediate memory into one arena. The artifact is a
zip file holding `kernels.so`, `plan.json` and `constants.npz` (codegen/artifact.py writes it and
checks it on reading); `CompiledModel.load` needs only the TVM runtime and NumPy to run it (no
ONNX, no compiler). Runs may come from several threads at once: each takes a workspace (an arena
and input tensors) of its own from a pool, and they share the weights. The kernels are native code for the
target recorded in the plan, and the model runs on that target's device (this CPU, or the GPU:
weights uploaded once, inputs copied in and outputs copied out on every run). On the CPU the
kernels write most outputs straight into the arrays `run` returns (written_in_place).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Callable, Mapping

import numpy as np
import tvm

from ..ir import Graph, Kernel, storage
from ..ir.hashing import structural_hash
from ..ir.errors import FileError, InputError, ModelError
from . import artifact
from .artifact import FORMAT_VERSION
from .build import build, load as load_module, run_kernel
from .constant_stages import ConstantStage, hoist_constant_stages
from .memory import ALIGN, plan_memory
from .pages import huge_page_buffer
from .target import TargetError, as_target, describe, device_of, gpu_present, host_target, is_gpu


def compile_graph(graph: Graph, target=None,
                  schedule: Callable[[Kernel], Kernel] | None = None,
                  progress: Callable[[str], None] | None = None) -> "CompiledModel":
    """Compile a graph for `target` (anything `as_target` takes); `schedule` maps each distinct
    kernel to its scheduled form."""
    target = as_target(target)
    funcs: dict[tuple, tuple[str, list[ConstantStage], list[int]]] = {}
    kernels: list[Kernel] = []
    steps = []
    packed: dict[str, np.ndarray] = {}   # constants computed by peeled stages
    mem = plan_memory(graph)
    for node in graph.nodes:
        if node.kernel is None or node.name in mem.elided:
            continue
        # Which inputs are constants decides what can be peeled, so it is part of the key.
        consts = frozenset(i for i, n in enumerate(node.inputs) if n in graph.constants)
        key = (structural_hash(node.kernel), consts)
        if key not in funcs:
            name = f"{node.kernel.name}_{key[0][:12]}"
            name += f"_{len(funcs)}" if any(f[0] == name for f in funcs.values()) else ""
            k = schedule(node.kernel) if schedule else node.kernel
            k, stages, kept = hoist_constant_stages(k, set(consts))
            kernels.append(Kernel(name, k.inputs, k.outputs, k.body))
            funcs[key] = (name, stages, kept)
        name, stages, kept = funcs[key]
        args = [node.inputs[i] for i in kept]
        for stage in stages:
            const = f"{node.name}:{stage.kernel.outputs[0].name}"
            # on the host, at compile time (a GPU-bound stage's loops run serially there)
            packed[const] = run_kernel(stage.kernel, [graph.constants[node.inputs[i]] for i in stage.sources],
                                       host_target())[0]
            args.append(const)
        steps.append({"node": node.name, "op": node.op_type, "func": name,
                      "args": args + node.outputs})
    if progress and packed:
        progress(f"computed {len(packed)} packed constants at compile time")
    if progress:
        progress(f"building {len(kernels)} distinct kernels for {len(steps)} nodes")
    module = build(kernels, target) if kernels else None
    live = set(graph.inputs) | set(graph.outputs) | {a for s in steps for a in s["args"]}
    tensors = {name: {"shape": list(graph.types[name].shape), "dtype": graph.types[name].dtype,
                      "place": mem.placements[name].kind, "key": mem.placements[name].key}
               for name in sorted(live) if name not in packed}
    plan = {"version": FORMAT_VERSION, "name": graph.name, "target": str(target),
            "inputs": graph.inputs, "outputs": graph.outputs,
            "tensors": tensors, "arena_bytes": mem.arena_bytes, "naive_bytes": mem.naive_bytes,
            "steps": steps}
    for name, value in packed.items():
        tensors[name] = {"shape": list(value.shape), "dtype": str(value.dtype), "place": "constant",
                         "key": name}
    constants = {k: v for k, v in {**graph.constants, **packed}.items() if k in live}
    return CompiledModel(module, plan, constants)


def _stored(value: np.ndarray) -> np.ndarray:
    """The array as the device holds it: sub-byte integers as their bytes (ir.dtypes.STORAGE)."""
    held = storage(value.dtype.name)
    return value if held == value.dtype.name else value.view(held)


class CompiledModel:
    def __init__(self, module, plan: dict, constants: Mapping[str, np.ndarray]):
        self.module = module
        self.plan = plan
        self.library: bytes | None = None   # a loaded model's kernels.so: a loaded library cannot be exported again
        self.constants = dict(constants)
        self.target = as_target(plan.get("target"))   # version 1 plans have none: the CPU
        self.device = device_of(self.target)
        # Compiled for a GPU that is not here: it can still be saved, and fails only when run.
        self._absent = _absent_device(self.target)
        self._lock = threading.Lock()   # guards the pool and the lazy creations below
        self._free: list[_Workspace] = []   # workspaces no run holds now
        self._fixed: _Workspace | None = None   # kernels_only's and profile's own
        self._constants: dict[str, tvm.runtime.Tensor] | None = None
        # outputs the kernels write straight into `run`'s arrays (a GPU's are copied to the host)
        self._direct = {} if is_gpu(self.target) else written_in_place(plan)
        # (name, shape, dtype) of each input, made once: `run` checks every call's inputs against them
        self._input_types = [(name, self.tensor_type(name)[0], np.dtype(self.tensor_type(name)[1]))
                             for name in plan["inputs"]]
        if not self._absent:
            self._free.append(self._workspace())   # bound now: a model that cannot bind fails at load

    # --- description -------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self.plan["inputs"])

    @property
    def output_names(self) -> list[str]:
        return list(self.plan["outputs"])

    def tensor_type(self, name: str) -> tuple[tuple[int, ...], str]:
        t = self.plan["tensors"][name]
        return tuple(t["shape"]), t["dtype"]

    @property
    def num_kernels(self) -> int:
        return len({s["func"] for s in self.plan["steps"]})

    # --- running -----------------------------------------------------------------------------
    def _upload_constants(self) -> dict[str, tvm.runtime.Tensor]:
        """Every constant as a view into one buffer: on the CPU on huge pages (codegen/pages.py);
        on the GPU one allocation, uploaded here, once. Runs share them: kernels only read them."""
        values = {name: _stored(np.asarray(value, order="C")) for name, value in self.constants.items()}
        offsets, size = {}, 0
        for name, value in values.items():
            offsets[name] = size
            size += -(-value.nbytes // ALIGN) * ALIGN
        weights, weights_at = self._buffer(size)
        views = {}
        for name, value in values.items():  # (0-d values keep their shape)
            views[name] = weights._create_view(value.shape, str(value.dtype), weights_at + offsets[name])
            views[name].copyfrom(value)
        return views   # (a view keeps its buffer alive)

    def _workspace(self) -> "_Workspace":
        """A new arena and input tensors, and every step bound to its arguments among them and
        the shared constants."""
        if self._absent:
            raise ModelError(f"model '{self.plan['name']}' {self._absent}")
        with self._lock:
            if self._constants is None:
                self._constants = self._upload_constants()
        arena, arena_at = self._buffer(self.plan["arena_bytes"])
        inputs = [tvm.runtime.empty(shape, storage(dtype), self.device)
                  for shape, dtype in map(self.tensor_type, self.plan["inputs"])]
        base = {**self._constants, **dict(zip(self.plan["inputs"], inputs))}
        tensors = {}
        for name, t in self.plan["tensors"].items():
            shape, dtype = tuple(t["shape"]), storage(t["dtype"])
            if t["place"] == "arena":
                tensors[name] = arena._create_view(shape, dtype, arena_at + t["key"])
            else:
                owner = base[self.plan["inputs"][t["key"]] if t["place"] == "input" else t["key"]]
                same = tuple(owner.shape) == shape and str(owner.dtype) == dtype
                tensors[name] = owner if same else owner._create_view(shape, dtype)
        steps = [(self.module.get(s["func"]), [tensors[a] for a in s["args"]]) for s in self.plan["steps"]]
        return _Workspace(inputs, tensors, steps, self.device, self._direct)

    def _take(self) -> "_Workspace":
        """A workspace for one run: a free one, or a new one while every other is busy (so the
        pool holds as many arenas as the most runs ever at once)."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return self._workspace()

    def _own(self) -> "_Workspace":
        """The workspace of kernels_only and profile, kept out of the pool: the function that
        kernels_only returns runs on it later, whatever runs meanwhile."""
        if self._fixed is None:
            workspace = self._workspace()
            with self._lock:
                self._fixed = self._fixed or workspace
        return self._fixed

    def _buffer(self, nbytes: int) -> tuple[tvm.runtime.Tensor, int]:
        """A byte buffer on the device and the offset where its `nbytes` start."""
        if not is_gpu(self.target):
            return huge_page_buffer(nbytes, self.device)
        return tvm.runtime.empty((max(nbytes, 1),), "uint8", self.device), 0

    def _values(self, inputs) -> list[np.ndarray]:
        """The input arrays in input order, checked against the model's inputs (as the device
        stores them, C-contiguous)."""
        if self._absent:
            raise ModelError(f"model '{self.plan['name']}' {self._absent}")
        names = self.plan["inputs"]
        if isinstance(inputs, (list, tuple)):
            values = inputs
            if len(values) != len(names):
                raise InputError(f"model takes {len(names)} inputs {names}, got {len(values)}")
        elif isinstance(inputs, Mapping):
            try:
                values = [inputs[n] for n in names]
            except KeyError:
                values = None
            if values is None or len(inputs) != len(names):
                missing = [n for n in names if n not in inputs]
                unknown = [n for n in inputs if n not in names]
                raise InputError(f"model inputs are {names}; missing {missing}" +
                                 (f", unknown {unknown}" if unknown else ""))
        else:
            raise InputError(f"inputs are a dict by name or a list in the order {names}, "
                             f"not {type(inputs).__name__}")
        checked = []
        for (name, shape, dtype), value in zip(self._input_types, values):
            if type(value) is not np.ndarray:
                try:
                    value = np.asarray(value)
                except ValueError as err:   # a ragged nested list
                    raise InputError(f"input '{name}' is not an array: {err}") from None
            if value.shape != shape:
                raise InputError(f"input '{name}' must have shape {shape}, got {value.shape}")
            if value.dtype != dtype:
                raise InputError(f"input '{name}' must have dtype {dtype}, got {value.dtype}")
            checked.append(_stored(value if value.flags.c_contiguous else np.ascontiguousarray(value)))
        return checked

    def run(self, inputs) -> list[np.ndarray]:
        """Run on inputs (a list in input order, or a dict by name); return the outputs (copying
        them to the host waits for the kernels). Safe to call from several threads at once:
        each run has a workspace (arena, inputs) to itself, from a pool."""
        values = self._values(inputs)
        workspace = self._take()
        try:
            fresh = workspace.bind_fresh_outputs()
            workspace.feed(values)
            workspace.execute()
            return [fresh[n] if n in fresh else workspace.fetch(n, self.tensor_type(n)[1])
                    for n in self.plan["outputs"]]
        finally:
            workspace.unbind_fresh_outputs()  # the pool keeps no caller's array alive
            with self._lock:
                self._free.append(workspace)

    def kernels_only(self, inputs) -> Callable[[], None]:
        """Feed `inputs` once; the function returned runs the kernels alone, without copying
        inputs or outputs (what a benchmark of the kernels against a library call times). On the
        GPU it waits for the kernels to finish, so that a timing of it is one of the kernels.
        Its workspace is the model's own, apart from those of `run`: one caller at a time."""
        values = self._values(inputs)
        workspace = self._own()
        workspace.feed(values)
        return workspace.execute_synchronized if is_gpu(self.target) else workspace.execute

    def profile(self, inputs, repeat: int = 20) -> list[dict]:
        """Where a run's time goes, by distinct kernel: {"func", "nodes", "op", "seconds"} (the
        median of each call timed alone, summed over its calls), slowest first. A call timed
        alone finds its inputs in cache as a full run may not, and a kernel that updates a
        buffer in place leaves it changed (in kernels_only's workspace, not in run's)."""
        self.kernels_only(inputs)
        workspace = self._own()
        workspace.execute_synchronized()
        by_func: dict[str, dict] = {}
        for step, (func, args) in zip(self.plan["steps"], workspace.steps):
            def call(func=func, args=args):
                func(*args)
                self.device.sync()
            row = by_func.setdefault(step["func"], {"func": step["func"], "nodes": [], "op": step["op"],
                                                    "seconds": 0.0})
            row["nodes"].append(step["node"])
            row["seconds"] += median_latency(call, repeat, warmup=1)
        return sorted(by_func.values(), key=lambda r: -r["seconds"])

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for name in self.plan["inputs"]:
            shape, dtype = self.tensor_type(name)
            if dtype.startswith("float"):
                out[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == "bool":
                out[name] = rng.integers(0, 2, shape).astype(bool)
            else:
                out[name] = rng.integers(0, 8, shape).astype(dtype)
        return out

    def time_once(self, inputs) -> float:
        """Seconds for one full run (feeding inputs, all kernels, fetching outputs)."""
        start = time.perf_counter()
        self.run(inputs)
        return time.perf_counter() - start

    # --- artifact ----------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the artifact (codegen/artifact.py): a file at `path` is replaced only whole."""
        kernels = self.library
        if kernels is None and self.module is not None:
            with tempfile.TemporaryDirectory() as tmp, \
                    open(self.module.export(os.path.join(tmp, "kernels.so")), "rb") as f:
                kernels = f.read()
        try:
            artifact.write(path, {**self.plan, "target": str(self.target)}, self.constants, kernels)
        except OSError as err:   # a missing or read-only folder, a directory at `path`, a full disk
            raise FileError(f"cannot write compiled model '{path}': {err.strerror or err}") from None

    @classmethod
    def load(cls, path: str) -> "CompiledModel":
        """Load a saved model, for the device its target names: a model compiled for a GPU
        needs one here (its kernels are native code for that target). The artifact is checked
        whole before its kernels are loaded; load only artifacts from trusted sources."""
        found = artifact.read(path)
        _check_device(path, found.plan.get("target"))
        module = None
        if found.kernels is not None:
            with tempfile.TemporaryDirectory() as tmp:
                so = os.path.join(tmp, "kernels.so")
                with open(so, "wb") as f:
                    f.write(found.kernels)
                try:
                    module = load_module(so)
                except (RuntimeError, OSError) as err:   # tvm.error.TVMError is a RuntimeError
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    raise ModelError(f"cannot load the kernels of '{path}': {first}") from None
        model = cls(module, found.plan, found.constants)
        model.library = found.kernels
        return model


def written_in_place(plan: dict) -> dict[str, list[tuple[int, int]]]:
    """The outputs that `run` lets the kernels write straight into the arrays it returns: output
    name -> the (step, argument) positions that name it. An output qualifies when it lives in the
    arena, is not empty, has a NumPy dtype of its own, is written by a kernel (the last output of the first
    step that names it), and nothing else reads or writes its bytes from then on (no view of it,
    such as a Reshape's, no other output). The others are copied out of the arena after the
    run, as a GPU's outputs are."""
    tensors, steps, outputs = plan["tensors"], plan["steps"], plan["outputs"]

    def span(name: str) -> tuple[int, int]:
        t = tensors[name]
        return t["key"], t["key"] + artifact.tensor_bytes(t["shape"], t["dtype"])

    found = {}
    for name in outputs:
        t = tensors[name]
        if t["place"] != "arena" or outputs.count(name) > 1 or not _plain_numpy(t["dtype"]) \
                or not np.prod(t["shape"]):  # (an empty array has no aligned data to bind)
            continue
        uses = [(si, ai) for si, step in enumerate(steps) for ai, arg in enumerate(step["args"]) if arg == name]
        # written by the first step that names it (a step's last argument is an output), not a
        # view written through another tensor (an alias node's output, a Concat done in place)
        if not uses or steps[uses[0][0]]["args"][-1] != name:
            continue
        lo, hi = span(name)
        others = {a for step in steps[uses[0][0]:] for a in step["args"]} | set(outputs)
        if any(tensors[a]["place"] == "arena" and a != name and span(a)[0] < hi and lo < span(a)[1]
               for a in others):
            continue
        found[name] = uses
    return found


def _plain_numpy(dtype: str) -> bool:
    """A float or integer type NumPy holds as the kernels store it (not bool, bfloat16, int4 ...)."""
    try:
        return storage(dtype) == dtype and np.dtype(dtype).kind in "fiu"
    except TypeError:
        return False


class _Workspace:
    """What one run writes: the input tensors, the arena (through the views in `tensors`), and
    every step's function with its bound arguments. `direct`: the outputs (written_in_place)
    that each run rebinds to fresh arrays, returned to the caller without a copy."""

    def __init__(self, inputs: list, tensors: dict, steps: list, device,
                 direct: dict[str, list[tuple[int, int]]] | None = None):
        self.inputs, self.tensors, self.steps, self.device = inputs, tensors, steps, device
        self.direct = direct or {}
        self._views: dict[str, np.ndarray | None] = {}   # fetch's, made on first use
        self._input_views = [_host_view(t) for t in inputs]
        self._fresh, self._fresh_bytes = [], 0   # bind_fresh_outputs': each output's place in one block
        for name, uses in self.direct.items():
            shape, dtype = tuple(tensors[name].shape), str(tensors[name].dtype)
            nbytes = artifact.tensor_bytes(shape, dtype)
            self._fresh.append((name, uses, self._fresh_bytes, nbytes, shape, dtype))
            self._fresh_bytes += -(-nbytes // ALIGN) * ALIGN

    def bind_fresh_outputs(self) -> dict[str, np.ndarray]:
        """A new array for each `direct` output, bound where the steps write and read it (one
        allocation for all of them: each is an ALIGN-ed slice of it)."""
        if not self.direct:
            return {}
        raw = np.empty(self._fresh_bytes + ALIGN, np.uint8)
        start = -raw.ctypes.data % ALIGN
        fresh = {}
        for name, uses, offset, nbytes, shape, dtype in self._fresh:
            array = raw[start + offset:start + offset + nbytes].view(dtype).reshape(shape)
            bound = tvm.runtime.from_dlpack(array)
            for si, ai in uses:
                self.steps[si][1][ai] = bound
            fresh[name] = array
        return fresh

    def unbind_fresh_outputs(self) -> None:
        for name, uses in self.direct.items():
            for si, ai in uses:
                self.steps[si][1][ai] = self.tensors[name]

    def feed(self, values: list[np.ndarray]) -> None:
        for value, dst, view in zip(values, self.inputs, self._input_views):
            if view is None:
                dst.copyfrom(value)
            else:
                np.copyto(view, value)   # (a plain copy: a third of copyfrom's time on small arrays)

    def fetch(self, name: str, dtype: str) -> np.ndarray:
        """A copy of tensor `name` on the host, as `dtype`."""
        if name not in self._views:
            self._views[name] = _host_view(self.tensors[name])
        view = self._views[name]
        return (view.copy() if view is not None else self.tensors[name].numpy()).view(dtype)

    def execute(self) -> None:
        # launched back to back: on the GPU they queue on one stream, with no host wait between
        for func, args in self.steps:
            func(*args)

    def execute_synchronized(self) -> None:
        self.execute()
        self.device.sync()


def _host_view(tensor) -> np.ndarray | None:
    """A NumPy array on `tensor`'s memory, or None where there is none (a GPU's tensor, a type
    NumPy cannot take by DLPack, such as bfloat16)."""
    if tensor.device.dlpack_device_type() != tvm.cpu().dlpack_device_type():
        return None
    try:
        return np.from_dlpack(tensor)
    except (TypeError, BufferError, RuntimeError, ValueError):
        return None


def _absent_device(target) -> str | None:
    """Why the device `target` runs on is not here (a message's end), or None."""
    if is_gpu(target) and not gpu_present():
        return (f"was compiled for an NVIDIA GPU ({describe(target)}) and no GPU is present here; "
                "compile the model for this machine's CPU instead")
    return None


def _check_device(path: str, target) -> None:
    """Before the kernels' library is loaded: the device the artifact was compiled for is here."""
    try:
        absent = _absent_device(as_target(target))
    except TargetError as err:
        raise ModelError(f"'{path}' was compiled for a target this Nestor cannot read: {err}") from None
    if absent:
        raise ModelError(f"'{path}' {absent}")


def median_latency(fn: Callable[[], object], repeat: int = 20, warmup: int = 2) -> float:
    """Median seconds of `fn()` over `repeat` runs after `warmup` runs. `fn` must wait for its
    work to finish (on a GPU, `run` and `kernels_only`'s function do)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))

