"""The machine a kernel is compiled for, described once and free of TVM.

`codegen` builds a MachineParams from a TVM target (codegen/target.py: `machine_params`); the
importer (blocked layouts), the default schedule, the sketch rules and the cost model read it.
Nothing below `codegen` probes the host, so a schedule made for a description replays the same
on any machine (as Halide's `MachineParams` and Ansor's `HardwareParams`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .dtypes import itemsize

CPU, CUDA = "cpu", "cuda"


@dataclass(frozen=True)
class MachineParams:
    kind: str                       # CPU or CUDA
    cores: int                      # CPU: threads a parallel loop may use; GPU: streaming multiprocessors
    vector_bytes: int               # CPU: one SIMD register (64 AVX-512, 32 AVX2, 16 SSE and NEON)
    vector_registers: int           # CPU: architectural SIMD registers
    l1_bytes: int = 32 << 10        # data cache of one core (GPU: of one SM)
    l2_bytes: int = 1 << 20
    l3_bytes: int = 32 << 20        # shared last-level cache (0: none)
    cache_line: int = 64
    warp_size: int = 0              # GPU only from here on
    max_threads_per_block: int = 0
    shared_memory_per_block: int = 0
    registers_per_block: int = 0
    max_registers_per_thread: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.kind == CUDA

    def lanes(self, dtype: str = "float32") -> int:
        """Elements of `dtype` in one vector register (1 where there are no vectors)."""
        return max(1, self.vector_bytes // itemsize(dtype))

    def line_elements(self, dtype: str = "float32") -> int:
        return max(1, self.cache_line // itemsize(dtype))

    @property
    def accumulators(self) -> int:
        """Vector registers a register tile's accumulators may take: the rest hold the operands
        (up to two weight vectors and an input broadcast) and a spare; 16 at most, the tile the
        AVX-512 rules were measured with. With AVX2, 14 accumulators spilled two to the stack
        in every reduction step."""
        return max(1, min(self.vector_registers - 4, 16))

    @property
    def channel_blocks(self) -> tuple[int, ...]:
        """Channel blocks of a blocked layout (NCHW<b>c), preferred first: a cache line of
        float32 channels, else half of one. A block of a whole line keeps every store a full
        line whatever the vector width (two registers a pixel with AVX2)."""
        line = self.line_elements("float32")
        return (line, line // 2)


def cpu(cores: int, vector_bytes: int, vector_registers: int, **caches) -> MachineParams:
    return MachineParams(CPU, cores, vector_bytes, vector_registers, **caches)


AVX512 = cpu(2, 64, 32)
AVX2 = cpu(2, 32, 16)      # also AVX: 16 ymm registers
NEON = cpu(2, 16, 32)
SSE = cpu(2, 16, 16)       # the x86-64 baseline
GENERIC_CPU = AVX2         # where nothing says which machine (a kernel printed or tuned alone in tests)
