"""codegen: Nestor kernels -> TVM TIR -> compiled modules (LLVM on CPU, CUDA on GPU)."""
from .target import (TargetError, as_target, cuda_target, describe, device_of, gpu_present, host_cores, host_target,
                     is_gpu,
                     machine_params, use_all_cores)
from .tir import to_primfunc
from .tir_import import TIRImportError, kernel_from_primfunc
from .build import build, CompiledKernels, load, run_kernel
from .model import CompiledModel, compile_graph, median_latency

use_all_cores()  # before any kernel runs: the thread pool reads it once
