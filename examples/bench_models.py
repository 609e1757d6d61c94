"""Nestor vs ONNX Runtime on the nine light CNNs (random weights) and a BERT-base encoder layer.

Same process, interleaved runs, medians, ONNX Runtime on 2 intra-op threads.
    python examples/bench_models.py [--models resnet50,squeezenet] [--repeat 20] [--time-budget 30m]
The last line reads `geomean latency ratio vs ONNX Runtime: <X>`.
"""
import argparse

from nestor.bench import MODELS, bench_models

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--schedule", default="default", choices=["default", "none"],
                   help="for kernels without tuned records")
    p.add_argument("--time-budget", metavar="30m", help="tune each model this long first (s, m or h)")
    p.add_argument("--records", help="tuning records database (default: a temporary one); without "
                                     "--time-budget, compile from it untouched")
    args = p.parse_args()
    from nestor.cli import _seconds
    bench_models(args.models.split(",") if args.models else None, args.repeat, args.schedule,
                 _seconds(args.time_budget), args.records)
