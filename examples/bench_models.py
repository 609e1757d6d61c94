"""Nestor vs ONNX Runtime on the nine light CNNs (random weights) and a BERT-base encoder layer.

Same process, interleaved runs, medians, ONNX Runtime on 2 intra-op threads; with --target cuda,
PyTorch eager on the GPU instead (the same ONNX model through onnx2torch).
    python examples/bench_models.py [--models resnet50,squeezenet] [--repeat 20] [--time-budget 30m]
        [--target cuda]
The last line reads `geomean latency ratio vs ONNX Runtime: <X>` (or `vs PyTorch`).
"""
import argparse
import functools
import sys

from nestor.bench import MODELS, bench_models
from nestor.cli_checks import duration
from nestor.ir.errors import NestorError

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--schedule", default="default", choices=["default", "basic", "none"],
                   help="for kernels without tuned records")
    p.add_argument("--time-budget", metavar="30m", type=functools.partial(duration, allow_zero=True),
                   help="tune each model this long first (s, m or h; 0: no tuning)")
    p.add_argument("--records", help="tuning records database (default: a temporary one); without "
                                     "--time-budget, compile from it untouched")
    p.add_argument("--target", help="cpu (default), cuda, or a TVM target string or JSON")
    args = p.parse_args()
    try:
        bench_models(args.models.split(",") if args.models else None, args.repeat, args.schedule,
                     args.time_budget, args.records, target=args.target)
    except NestorError as err:  # one line, as the CLI says it
        sys.exit(f"error: {err}")
