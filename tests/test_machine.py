"""The target description: built once from a TVM target in codegen, read by the layers below."""
import pathlib
import re

import pytest
import tvm

from nestor.codegen import cuda_target, machine_params
from nestor.frontend.layout import block_size
from nestor.ir.machine import AVX2, AVX512, CPU, CUDA, GENERIC_CPU
from nestor.passes import DefaultNest, default_schedule
from nestor.ir import print_kernel, parse_kernel


def _llvm(mcpu: str, cores: int = 4) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": cores})


def test_avx512_and_avx2_targets():
    skx = machine_params(_llvm("skylake-avx512", 8))
    assert (skx.kind, skx.cores, skx.lanes(), skx.vector_registers, skx.accumulators) == (CPU, 8, 16, 32, 16)
    hsw = machine_params(_llvm("haswell", 2))
    assert (hsw.kind, hsw.cores, hsw.lanes(), hsw.vector_registers, hsw.accumulators) == (CPU, 2, 8, 16, 12)
    assert hsw.lanes("float16") == 16 and hsw.lanes("float64") == 4
    assert hsw.channel_blocks == skx.channel_blocks == (16, 8)  # a cache line of float32 channels


def test_cuda_target():
    gpu = machine_params(cuda_target("sm_80"))
    assert gpu.kind == CUDA and gpu.is_gpu
    assert (gpu.warp_size, gpu.max_threads_per_block) == (32, 1024)
    assert gpu.shared_memory_per_block >= 48 << 10 and gpu.registers_per_block == 65536
    assert gpu.cores > 0  # streaming multiprocessors: the device's, or the architecture's usual count


def test_unknown_target_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="no machine description"):
        machine_params(tvm.target.Target({"kind": "c"}))


def test_default_step_replays_the_same_whatever_the_host():
    """The default step carries its machine facts as parameters: a recorded `default(i0)` means
    16 lanes and threads on any host, and a one-core target records `parallel=false`."""
    kernel = parse_kernel("""
kernel add(A: f32[64, 256]) -> (B: f32[64, 256]) {
  for i0 in 0..64 { for i1 in 0..256 { B[i0, i1] = A[i0, i1] + 1.0 } }
}""")
    assert str(DefaultNest.for_machine("i0", AVX512)) == "default(i0)"
    one_core = DefaultNest.for_machine("i0", machine_params(_llvm("haswell", 1)))
    assert str(one_core) == "default(i0, 16, false)"
    text = print_kernel(one_core.apply(kernel))
    assert "parallel" not in text and "vectorize" in text
    assert "parallel" in print_kernel(default_schedule(kernel, GENERIC_CPU))
    with pytest.raises(Exception, match="lanes"):
        DefaultNest("i0", lanes=1).apply(kernel)


def test_layout_blocks_come_from_the_machine():
    assert block_size(48, AVX2) == 16 and block_size(40, AVX2) == 8 and block_size(20, AVX2) is None
    wide_lines = type(AVX2)(CPU, 2, 32, 16, cache_line=128)
    assert block_size(64, wide_lines) == 32


def test_nothing_below_codegen_probes_the_host():
    root = pathlib.Path(__file__).resolve().parent.parent
    probe = re.compile(r"cpu_count|sched_getaffinity|/proc/|/sys/devices|cpuinfo|platform\.machine|llvm_get_system_cpu")
    for layer in ("ir", "frontend", "passes", "costmodel"):
        for path in (root / layer).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                assert not probe.search(line), f"{path.relative_to(root)}:{n} probes the host: {line.strip()}"
