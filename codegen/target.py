"""Compilation targets as TVM 0.27 JSON-dict targets."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

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


def as_target(target) -> tvm.target.Target:
    """A Target from a Target, its JSON or dict form, or None (this host)."""
    if target is None:
        return host_target()
    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


@dataclass(frozen=True)
class VectorUnit:
    """A CPU's SIMD registers: what a register-filling tile must fit in."""
    lanes: int       # float32 lanes in one vector register
    registers: int   # architectural vector registers

    @property
    def accumulators(self) -> int:
        """Vector registers a tile's accumulators may take: the rest hold the operands (up to
        two weight vectors and an input broadcast) and a spare; 16 at most, the tile the
        AVX-512 rules were measured with. With AVX2, 14 accumulators spilled two of them to
        the stack in every reduction step (Zen 3: 57 GF/s against 104 with 8)."""
        return min(self.registers - 4, 16)


AVX512 = VectorUnit(16, 32)
AVX2 = VectorUnit(8, 16)     # also AVX: 16 ymm registers
NEON = VectorUnit(4, 32)
SSE = VectorUnit(4, 16)


@functools.lru_cache(maxsize=None)
def vector_unit(target=None) -> VectorUnit:
    """The vector unit of an LLVM target (anything `as_target` takes; "llvm", the tuner's
    default key, is this host); a CPU LLVM cannot name gets SSE's, the x86-64 baseline."""
    target = as_target(None if target == "llvm" else target)
    if target.kind.name != "llvm":
        return SSE
    try:
        from tvm.target import codegen
        has = lambda feature: bool(codegen.llvm_cpu_has_features([feature], target))  # noqa: E731
        if has("avx512f"):
            return AVX512
        if has("avx"):
            return AVX2
        if has("neon"):
            return NEON
    except Exception:  # TVM without LLVM, or a CPU LLVM does not know
        pass
    return SSE


@functools.lru_cache(maxsize=None)
def cuda_target(arch: str = "sm_90") -> tvm.target.Target:
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=host_target())
