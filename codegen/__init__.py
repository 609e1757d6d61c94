"""codegen: Nestor kernels -> TVM TIR -> compiled modules (LLVM on CPU, CUDA on GPU)."""
from .target import AVX2, AVX512, VectorUnit, host_target, cuda_target, use_all_cores, vector_unit
from .tir import to_primfunc
from .build import build, CompiledKernels, load, run_kernel
from .model import CompiledModel, compile_graph, median_latency

use_all_cores()  # before any kernel runs: the thread pool reads it once
