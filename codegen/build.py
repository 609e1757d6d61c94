"""Compile kernels with TVM and call them.

All kernels of a build go into one IRModule and one tvm.compile call: a single LLVM module
(one .so on export) and one fixed compile overhead instead of one per kernel.

Facts measured with TVM 0.27 / tvm-ffi 0.1.14 (2-core host, small 64x64 kernels):
- Arena views: `arena._create_view(shape, dtype, relative_byte_offset)` works (sets
  DLTensor.byte_offset) and kernels accept such views, because params are declared with
  offset_factor=1 (see tir.py); with TVM's default buffers the call fails "Invalid byte_offset".
- Shapes are checked exactly on every call (ndim, each dim, dtype): a tensor of another shape
  with the same size is rejected; pass `t._create_view(kernel_shape)` instead (free).
- tvm.compile: ~17 ms for 1 kernel; ~9 ms per kernel when 50 share one module (~0.45 s), so
  batching saves about half. Building the PrimFuncs is ~0.2 ms per kernel.
- export_library links with the system C compiler (gcc; ~1 s for 50 kernels);
  tvm.runtime.load_module needs only the runtime (verified with an empty PATH).
"""
from __future__ import annotations

import shutil
from collections import OrderedDict

import numpy as np
import tvm
from tvm.support.cc import get_cc

from nestor.ir import Kernel, storage

from .target import as_target, device_of, is_gpu
from .tir import to_primfunc


class CompiledKernels:
    """The compiled module of a build; each kernel is a packed function named after it."""

    def __init__(self, module, names=None, target=None):
        self.module = module  # tvm.runtime.Module (executable's .mod, or a loaded .so)
        self.names = tuple(names or ())
        self.target = target  # what it was compiled for (None: loaded)

    def get(self, name: str):
        try:
            return self.module.get_function(name, query_imports=True)
        except AttributeError:
            raise KeyError(f"no kernel named {name!r} in this module") from None

    __getitem__ = get

    def run(self, kernel: Kernel, inputs: list) -> list[np.ndarray]:
        """Run `kernel`, built into this module under its name, as `run_kernel` does: many
        kernels checked against one build pay one compile (and, on a GPU, one CUDA compile at
        loading) instead of one each."""
        return _call(lambda: self.get(kernel.name), kernel, inputs, self.target)

    def export(self, path: str) -> str:
        """Write a shared library (needs a C compiler now, only the TVM runtime to load)."""
        linker = cross_linker(self.target)
        if linker is None and get_cc() is None:  # TVM's own error would be an opaque TypeError
            raise RuntimeError("export needs a C compiler (gcc on PATH, or $CXX) to link the .so")
        self.module.export_library(str(path), fcompile=linker)
        return str(path)


def cross_linker(target):
    """TVM's cross compiler `TRIPLE-g++` for a CPU target whose triple (`mtriple`) names another
    architecture than this host's (a board measured through RPC); None for this host's."""
    from tvm.support.cc import cross_compiler
    triple = str(target.attrs.get("mtriple") or "") if target is not None and target.kind.name == "llvm" else ""
    host = str(tvm.get_global_func("target.llvm_get_system_triple")())
    if not triple or triple.split("-")[0] == host.split("-")[0]:
        return None
    if shutil.which(f"{triple}-g++") is None:
        raise RuntimeError(f"target triple {triple} needs the cross compiler {triple}-g++ on PATH to link")
    return cross_compiler(f"{triple}-g++")


def load(path: str) -> CompiledKernels:
    """Load a .so written by CompiledKernels.export with the TVM runtime alone."""
    return CompiledKernels(tvm.runtime.load_module(str(path)))


def build(kernels: list[Kernel], target=None) -> CompiledKernels:
    """Compile all kernels into one module (kernel names must be unique)."""
    target = as_target(target)
    gpu = is_gpu(target)
    funcs = {}
    for k in kernels:
        if k.name in funcs:
            raise ValueError(f"two kernels named {k.name!r} in one build; names must be unique")
        funcs[k.name] = to_primfunc(k, gpu)
    # Loop partitioning peels the guarded last tile of a non-dividing split off the main loop,
    # so the hot loop carries no condition.
    with tvm.transform.PassContext(config={"s_tir.LoopPartition": {"partition_const_loop": True}}):
        exe = tvm.compile(tvm.IRModule(funcs), target=_with_light_host(target) if gpu else target)
    return CompiledKernels(exe.mod, list(funcs), target)


def _with_light_host(target):
    """A GPU target whose host code is optimized at LLVM's -O1: that code only checks the
    arguments and launches the kernels, and LLVM's default -O3 spent most of a CUDA build on it
    (the kernels themselves are CUDA source, compiled apart)."""
    host = dict(target.host.export())
    host.setdefault("opt-level", 1)
    return tvm.target.Target(target, host=tvm.target.Target(host))


# Compiled single kernels keyed by the kernel itself (structural equality): the op tests call
# run_kernel on equal kernels many times.
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 256


def _compiled(kernel: Kernel, target):
    key = (kernel, str(target))
    fn = _CACHE.get(key)
    if fn is None:
        fn = build([kernel], target).get(kernel.name)
        _CACHE[key] = fn
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return fn


def run_kernel(kernel: Kernel, inputs: list, target=None) -> list[np.ndarray]:
    """Compile (cached), run on the target's device with zero-filled outputs (inputs copied
    there, outputs copied back), return the outputs as numpy."""
    target = as_target(target)
    return _call(lambda: _compiled(kernel, target), kernel, inputs, target)


def _call(function, kernel: Kernel, inputs: list, target) -> list[np.ndarray]:
    """Check `inputs` against the kernel, then call `function()` (the compiled kernel, asked for
    only once the inputs are right) on them and zero-filled outputs on the target's device."""
    if len(inputs) != len(kernel.inputs):
        raise ValueError(f"kernel {kernel.name} takes {len(kernel.inputs)} inputs, "
                         f"got {len(inputs)}")
    dev = device_of(target)
    args = []
    for buf, arr in zip(kernel.inputs, inputs):
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(buf.shape) or arr.dtype != np.dtype(buf.dtype):
            raise ValueError(f"kernel {kernel.name}: input {buf.name} wants {buf.dtype}"
                             f"{list(buf.shape)}, got {arr.dtype}{list(arr.shape)}")
        # np.asarray(order="C"), not ascontiguousarray: the latter turns a 0-d array into 1-d
        args.append(tvm.runtime.tensor(np.asarray(arr, order="C").view(storage(buf.dtype)), dev))
    outs = [tvm.runtime.tensor(np.zeros(b.shape, storage(b.dtype)), dev) for b in kernel.outputs]
    function()(*args, *outs)
    return [o.numpy().view(b.dtype) for o, b in zip(outs, kernel.outputs)]
