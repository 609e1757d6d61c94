"""Nestor's tuner vs TVM's MetaSchedule on ten kernels, equal trial budgets (also `nestor bench kernels`).

    python examples/bench_kernels.py [--trials 256] [--kernels matmul512,conv3x3] [--repeat 20]
        [--records kernels.sqlite] [--target cuda] [--via-tvm]

Prints, per kernel, both tuned medians, their ratio, both tuning wall times, ONNX Runtime's time
(every core; and NumPy's for matmuls; on a GPU target PyTorch's instead), then the table; the
last line reads `geomean speedup vs MetaSchedule: <X>`. With --records, both tuners resume from
what an earlier run stored, up to --trials measurements in all. --no-metaschedule times Nestor
against the library alone. --via-tvm tunes each kernel a third time through TVM's `ms.tune_tir`
with Nestor's strategy (nestor.tvm) and prints its time against both.
"""
import argparse
import sys

from nestor.autotune.kernel_suite import SUITE
from nestor.bench_kernels import bench_kernels
from nestor.ir.errors import NestorError

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", help=f"comma-separated subset of {','.join(SUITE)}")
    p.add_argument("--trials", type=int, default=256, help="measurements per kernel, each tuner")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--records", help="keep Nestor's measurements here (MetaSchedule's in <records>.ms/)")
    p.add_argument("--target", help="cpu (default), cuda, or a TVM target string or JSON")
    p.add_argument("--no-metaschedule", dest="metaschedule", action="store_false",
                   help="time Nestor against the library alone")
    p.add_argument("--via-tvm", action="store_true", help="also tune with Nestor through ms.tune_tir")
    args = p.parse_args()
    try:
        bench_kernels(args.kernels.split(",") if args.kernels else None, args.trials, args.repeat,
                      records=args.records, target=args.target, metaschedule=args.metaschedule,
                      via_tvm=args.via_tvm)
    except NestorError as err:  # one line, as the CLI says it
        sys.exit(f"error: {err}")
