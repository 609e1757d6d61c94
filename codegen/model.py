"""A whole model as one deployable artifact: compiled kernels + an execution plan + weights.

`compile_graph` builds every distinct kernel of a graph (structurally equal kernels share one
function) into a single module and plans intermediate memory into one arena. The artifact is a
zip file holding `kernels.so`, `plan.json` and `constants.npz`; `CompiledModel.load` needs only
the TVM runtime and NumPy to run it (no ONNX, no compiler). The kernels are native code for the
target recorded in the plan, and the model runs on that target's device (this CPU, or the GPU:
weights uploaded once, inputs copied in and outputs copied out on every run).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
import zipfile
from typing import Callable, Mapping

import numpy as np
import tvm

from ..ir import Graph, Kernel
from ..ir.hashing import structural_hash
from ..ir.errors import InputError, ModelError
from .build import build, load as load_module, run_kernel
from .constant_stages import ConstantStage, hoist_constant_stages
from .memory import ALIGN, plan_memory
from .pages import huge_page_buffer
from .target import TargetError, as_target, describe, device_of, gpu_present, host_target, is_gpu

FORMAT_VERSION = 2   # 2: the plan records its target (version 1 artifacts are for the CPU)


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


class CompiledModel:
    def __init__(self, module, plan: dict, constants: Mapping[str, np.ndarray]):
        self.module = module
        self.plan = plan
        self.constants = dict(constants)
        self.target = as_target(plan.get("target"))   # version 1 plans have none: the CPU
        self.device = device_of(self.target)
        # Compiled for a GPU that is not here: it can still be saved, and fails only when run.
        self._absent = _absent_device(self.target)
        if not self._absent:
            self._bind()

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
    def _bind(self) -> None:
        """Create every tensor (arena views, inputs, constants) on the device and bind each step's
        arguments. The arena and the constants are each one buffer: on the CPU on huge pages
        (codegen/pages.py); on the GPU one allocation each, the constants uploaded here, once."""
        dev = self.device
        arena, arena_at = self._buffer(self.plan["arena_bytes"])
        base: dict[str, tvm.runtime.Tensor] = {}
        self._inputs = []
        for name in self.plan["inputs"]:
            shape, dtype = self.tensor_type(name)
            base[name] = tvm.runtime.empty(shape, dtype, dev)
            self._inputs.append(base[name])
        values = {name: np.asarray(value, order="C") for name, value in self.constants.items()}
        offsets, size = {}, 0
        for name, value in values.items():
            offsets[name] = size
            size += -(-value.nbytes // ALIGN) * ALIGN
        weights, weights_at = self._buffer(size)
        for name, value in values.items():  # (0-d values keep their shape)
            base[name] = weights._create_view(value.shape, str(value.dtype), weights_at + offsets[name])
            base[name].copyfrom(value)
        self._tensors = {}
        for name, t in self.plan["tensors"].items():
            shape, dtype = tuple(t["shape"]), t["dtype"]
            if t["place"] == "arena":
                self._tensors[name] = arena._create_view(shape, dtype, arena_at + t["key"])
            else:
                owner = base[self.plan["inputs"][t["key"]] if t["place"] == "input" else t["key"]]
                same = tuple(owner.shape) == shape and str(owner.dtype) == dtype
                self._tensors[name] = owner if same else owner._create_view(shape, dtype)
        self._buffers = (arena, weights)
        self._steps = [(self.module.get(s["func"]), [self._tensors[a] for a in s["args"]])
                       for s in self.plan["steps"]]

    def _buffer(self, nbytes: int) -> tuple[tvm.runtime.Tensor, int]:
        """A byte buffer on the device and the offset where its `nbytes` start."""
        if not is_gpu(self.target):
            return huge_page_buffer(nbytes, self.device)
        return tvm.runtime.empty((max(nbytes, 1),), "uint8", self.device), 0

    def _feed(self, inputs) -> None:
        if self._absent:
            raise ModelError(f"model '{self.plan['name']}' {self._absent}")
        names = self.plan["inputs"]
        if isinstance(inputs, Mapping):
            missing = [n for n in names if n not in inputs]
            unknown = [n for n in inputs if n not in names]
            if missing or unknown:
                raise InputError(f"model inputs are {names}; missing {missing}" +
                                 (f", unknown {unknown}" if unknown else ""))
            values = [inputs[n] for n in names]
        else:
            values = list(inputs)
            if len(values) != len(names):
                raise InputError(f"model takes {len(names)} inputs {names}, got {len(values)}")
        for name, value, dst in zip(names, values, self._inputs):
            value = np.asarray(value)
            shape, dtype = self.tensor_type(name)
            if value.shape != shape:
                raise InputError(f"input '{name}' must have shape {shape}, got {value.shape}")
            if value.dtype != np.dtype(dtype):
                raise InputError(f"input '{name}' must have dtype {dtype}, got {value.dtype}")
            dst.copyfrom(np.asarray(value, order="C"))

    def _execute(self) -> None:
        # launched back to back: on the GPU they queue on one stream, with no host wait between
        for func, args in self._steps:
            func(*args)

    def _execute_synchronized(self) -> None:
        self._execute()
        self.device.sync()

    def run(self, inputs) -> list[np.ndarray]:
        """Run on inputs (a list in input order, or a dict by name); return the outputs (copying
        them to the host waits for the kernels)."""
        self._feed(inputs)
        self._execute()
        return [self._tensors[n].numpy() for n in self.plan["outputs"]]

    def kernels_only(self, inputs) -> Callable[[], None]:
        """Feed `inputs` once; the function returned runs the kernels alone, without copying
        inputs or outputs (what a benchmark of the kernels against a library call times). On the
        GPU it waits for the kernels to finish, so that a timing of it is one of the kernels."""
        self._feed(inputs)
        return self._execute_synchronized if is_gpu(self.target) else self._execute

    def profile(self, inputs, repeat: int = 20) -> list[dict]:
        """Where a run's time goes, by distinct kernel: {"func", "nodes", "op", "seconds"} (the
        median of each call timed alone, summed over its calls), slowest first. A call timed
        alone finds its inputs in cache as a full run may not, and a kernel that updates a
        buffer in place leaves it changed: the outputs of a run after this are not the model's."""
        self._feed(inputs)
        self._execute_synchronized()
        by_func: dict[str, dict] = {}
        for step, (func, args) in zip(self.plan["steps"], self._steps):
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
        with tempfile.TemporaryDirectory() as tmp:
            so = os.path.join(tmp, "kernels.so")
            if self.module is not None:
                self.module.export(so)
            consts = io.BytesIO()
            np.savez(consts, **{f"c{i}": v for i, v in enumerate(self.constants.values())})
            names = list(self.constants)
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
                z.writestr("plan.json", json.dumps({**self.plan, "constant_names": names}))
                z.writestr("constants.npz", consts.getvalue())
                if self.module is not None:
                    z.write(so, "kernels.so")

    @classmethod
    def load(cls, path: str) -> "CompiledModel":
        """Load a saved model, for the device its target names: a model compiled for a GPU
        needs one here (its kernels are native code for that target)."""
        try:
            z = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as err:
            raise ModelError(f"cannot load compiled model '{path}': {err}") from None
        with z, tempfile.TemporaryDirectory() as tmp:
            try:
                plan = json.loads(z.read("plan.json"))
                names = plan.pop("constant_names")
                if plan.get("version") not in (1, FORMAT_VERSION):
                    raise ModelError(f"'{path}' has format version {plan.get('version')}, "
                                     f"this Nestor reads 1 to {FORMAT_VERSION}")
                _check_device(path, plan.get("target"))
                npz = np.load(io.BytesIO(z.read("constants.npz")))
                constants = {n: npz[f"c{i}"] for i, n in enumerate(names)}
                module = None
                if "kernels.so" in z.namelist():
                    z.extract("kernels.so", tmp)
                    module = load_module(os.path.join(tmp, "kernels.so"))
            except (KeyError, ValueError) as err:
                raise ModelError(f"'{path}' is not a Nestor compiled model: {err}") from None
        return cls(module, plan, constants)


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

