"""Nestor's tuner vs TVM's MetaSchedule on ten kernels, equal trial budgets (also `nestor bench kernels`).

    python examples/bench_kernels.py [--trials 256] [--kernels matmul512,conv3x3] [--repeat 20]
        [--records kernels.sqlite]

Prints, per kernel, both tuned medians, their ratio, both tuning wall times, ONNX Runtime's time
(2 threads; and NumPy's for matmuls), then the table; the last line reads
`geomean speedup vs MetaSchedule: <X>`.
"""
import argparse

from nestor.autotune.kernel_suite import SUITE
from nestor.bench_kernels import bench_kernels

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", help=f"comma-separated subset of {','.join(SUITE)}")
    p.add_argument("--trials", type=int, default=256, help="measurements per kernel, each tuner")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--records", help="keep Nestor's measurements here (for examples/costmodel_quality.py)")
    args = p.parse_args()
    bench_kernels(args.kernels.split(",") if args.kernels else None, args.trials, args.repeat,
                  records=args.records)
