"""Compilation targets as TVM 0.27 JSON-dict targets."""
from __future__ import annotations

import functools
import os

import tvm


def _system_cpu() -> str | None:
    """The host CPU name as LLVM knows it (e.g. 'sapphirerapids', 'znver3'); None if unknown."""
    try:
        from tvm.target import codegen
        cpu = codegen.llvm_get_system_cpu()
        return cpu if cpu and cpu != "generic" else None
    except Exception:  # TVM built without LLVM, or the query failed: let LLVM pick its default
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may really use
    except AttributeError:
        return os.cpu_count() or 1


def use_all_cores() -> int:
    """Give TVM's runtime thread pool every core this process may use, unless the user set
    TVM_NUM_THREADS. TVM's default assumes two hyper-threads per core and takes half: on this
    2-core machine that ran every `parallel` loop on one thread. Returns the thread count."""
    if not os.environ.get("TVM_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(_cores())  # read when the pool starts, at first use
    return int(os.environ["TVM_NUM_THREADS"])


@functools.lru_cache(maxsize=None)
def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """LLVM target for this CPU with its real mcpu, so LLVM uses its vector width (AVX-512 ...)."""
    spec = {"kind": "llvm", "num-cores": int(num_cores or _cores())}
    cpu = _system_cpu()
    if cpu:
        spec["mcpu"] = cpu
    return tvm.target.Target(spec)


@functools.lru_cache(maxsize=None)
def cuda_target(arch: str = "sm_90") -> tvm.target.Target:
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=host_target())
