"""Compilation targets as TVM 0.27 JSON-dict targets."""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import tvm

from ..ir.errors import NestorError
from ..ir.machine import AVX2, AVX512, CUDA, NEON, SSE, MachineParams


class TargetError(NestorError):
    """A target Nestor cannot compile for (unknown, malformed, or its device is absent), or a
    kernel not scheduled for it (a GPU target's kernels must be bound to blocks and threads)."""


def _system_cpu() -> str | None:
    """The host CPU name as LLVM knows it (e.g. 'sapphirerapids', 'znver3'); None if unknown."""
    try:
        from tvm.target import codegen
        cpu = codegen.llvm_get_system_cpu()
        return cpu if cpu and cpu != "generic" else None
    except Exception:  # TVM built without LLVM, or the query failed: let LLVM pick its default
        return None


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may really use
    except AttributeError:
        return os.cpu_count() or 1


def use_all_cores() -> int:
    """Give TVM's runtime thread pool every core this process may use, unless the user set
    TVM_NUM_THREADS. TVM's default assumes two hyper-threads per core and takes half: on this
    2-core machine that ran every `parallel` loop on one thread. Returns the thread count."""
    if not os.environ.get("TVM_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(host_cores())  # read when the pool starts, at first use
    if host_cores() < (os.cpu_count() or 1):
        # TVM pins its thread i to the machine's i-th core, whatever cores this process was given
        # (taskset, a CPU set): under `taskset -c 8-9` two processes' threads would share cores 0-1
        os.environ.setdefault("TVM_BIND_THREADS", "0")
    return int(os.environ["TVM_NUM_THREADS"])


@functools.lru_cache(maxsize=None)
def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """LLVM target for this CPU with its real mcpu, so LLVM uses its vector width (AVX-512 ...)."""
    spec = {"kind": "llvm", "num-cores": int(num_cores or host_cores())}
    cpu = _system_cpu()
    if cpu:
        spec["mcpu"] = cpu
    return tvm.target.Target(spec)


# what a user may type for the two kinds of target, besides a TVM target string or JSON
CPU_NAMES = ("cpu", "host")
GPU_NAMES = ("cuda", "gpu", "nvidia")


def as_target(target) -> tvm.target.Target:
    """A Target from a Target, its JSON or dict form, a TVM target string, "cpu" (this CPU),
    "cuda" (this machine's NVIDIA GPU, else sm_90), or None (this CPU). A CUDA target without
    a host gets this CPU as its host (where the launch code runs)."""
    if target is None or (isinstance(target, str) and target.strip().lower() in CPU_NAMES + ("",)):
        return host_target()
    if isinstance(target, str) and target.strip().lower() in GPU_NAMES:
        return cuda_target(_present_arch() or "sm_90")
    if isinstance(target, str) and target.lstrip().startswith("{"):
        try:
            target = json.loads(target)
        except json.JSONDecodeError as err:
            raise TargetError(f"target {target!r} is not valid JSON: {err}") from None
    if not isinstance(target, tvm.target.Target):
        try:
            target = tvm.target.Target(target)
        except Exception as err:  # TVM's TypeError / ValueError / its own errors, several lines
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise TargetError(f"unknown target {target!r}: {first} (use cpu, cuda, or a TVM "
                              "target string or JSON such as {\"kind\": \"cuda\", \"arch\": \"sm_80\"})") from None
    if target.kind.name == "cuda" and target.host is None:
        target = tvm.target.Target(target, host=host_target())
    return target


def describe(target) -> str:
    """A target in a few words for messages: "cuda sm_90", "llvm znver4"."""
    target = as_target(target)
    detail = target.attrs.get("arch" if target.kind.name == "cuda" else "mcpu")
    return f"{target.kind.name} {detail}" if detail else target.kind.name


def is_gpu(target) -> bool:
    return as_target(target).kind.name == "cuda"


def device_of(target):
    """The TVM device a target's kernels run on (tvm.cuda(0) or tvm.cpu())."""
    return tvm.cuda(0) if is_gpu(target) else tvm.cpu()


def gpu_present() -> bool:
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # a TVM without the CUDA runtime, or no driver
        return False


def _present_arch() -> str | None:
    """The compute capability of the GPU here ("sm_90"), or None."""
    if not gpu_present():
        return None
    return "sm_" + str(tvm.cuda(0).compute_version).replace(".", "")


@functools.lru_cache(maxsize=None)
def machine_params(target=None) -> MachineParams:
    """The machine a TVM target describes (anything `as_target` takes). The only place the host
    is probed: its cache sizes, when the target is this CPU; the SM count, when the target is a
    GPU that is present."""
    target = as_target(target)
    if target.kind.name == "cuda":
        return _cuda_params(target)
    if target.kind.name != "llvm":
        raise ValueError(f"no machine description for target kind {target.kind.name!r}")
    cores = int(target.attrs.get("num-cores", 0) or host_cores())
    caches = _host_caches() if _is_host(target) else {}
    return dataclasses.replace(_vector_unit(target), cores=cores, **caches)


def _vector_unit(target) -> MachineParams:
    """The preset of the target's SIMD unit (ir/machine.py); SSE's for a CPU LLVM cannot name
    (the x86-64 baseline)."""
    try:
        from tvm.target import codegen
        has = lambda feature: bool(codegen.llvm_cpu_has_features([feature], target))  # noqa: E731
        for feature, unit in (("avx512f", AVX512), ("avx", AVX2), ("neon", NEON)):
            if has(feature):
                return unit
    except Exception:  # TVM without LLVM, or a CPU LLVM does not know
        pass
    return SSE


def _is_host(target) -> bool:
    mcpu = target.attrs.get("mcpu")
    return mcpu is None or str(mcpu) == (_system_cpu() or "")


def _host_caches() -> dict[str, int]:
    """This CPU's data and unified cache sizes from sysfs (Linux); {} elsewhere."""
    sizes = {}
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            read = lambda name: open(os.path.join(root, entry, name)).read().strip()  # noqa: E731
            if read("type") in ("Data", "Unified"):
                text = read("size")
                scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
                sizes[f"l{read('level')}_bytes"] = int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in sizes.items() if k in ("l1_bytes", "l2_bytes", "l3_bytes")}


# SM counts of the usual parts of each architecture, where no GPU is present to ask
_SMS = {"sm_70": 80, "sm_75": 40, "sm_80": 108, "sm_86": 84, "sm_89": 128, "sm_90": 132}


def _cuda_params(target) -> MachineParams:
    arch = str(target.attrs.get("arch", "sm_90"))
    sms = _SMS.get(arch, 80)
    try:
        dev = tvm.cuda(0)
        if dev.exist:
            sms = int(dev.multi_processor_count)
    except Exception:  # no CUDA runtime here: the architecture's usual count
        pass
    return MachineParams(
        CUDA, sms, vector_bytes=16, vector_registers=0, l1_bytes=128 << 10, l2_bytes=40 << 20, l3_bytes=0,
        cache_line=128, warp_size=int(target.attrs.get("thread_warp_size", 32)),
        max_threads_per_block=int(target.attrs.get("max_num_threads", 1024)),
        shared_memory_per_block=int(target.attrs.get("max_shared_memory_per_block", 48 << 10)),
        registers_per_block=int(target.attrs.get("registers_per_block", 65536)),
        max_registers_per_thread=255)


@functools.lru_cache(maxsize=None)
def cuda_target(arch: str = "sm_90") -> tvm.target.Target:
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=host_target())
