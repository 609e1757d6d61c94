"""Rows that no width divides (a ViT's 197 tokens, a 50,257-word vocabulary): softmax and layer
norm kernels tuned with the row rules' guarded last chunk (rfactor's tail) and without it (as
before it: such rows get no row rule), each timed beside the library (ONNX Runtime on the CPU,
PyTorch on a GPU) in the same run; the two variants alternate, `--rounds` times each. Compare
the ratios of a row's variants within one round: the library's time moves between runs.

    python examples/compare_row_tails.py [--kernels softmax:2364x197,layernorm:197x100] [--target cuda]
        [--trials 64] [--rounds 2] [--records-dir DIR]
"""
import argparse
import os
import tempfile

from onnx import helper

import nestor.bench_kernels as bk
from nestor.autotune import kernel_suite, nest
from nestor.autotune.rules import gpu_rows, rows
from nestor.passes import Rfactor


def _without_tail(loop, factor, scope="local", tail=False):
    return Rfactor(loop, factor, scope)


def use_tails(on: bool) -> None:
    """The row rules (and which reductions count as rows) with rfactor's tail, or without it."""
    nest.Rfactor = rows.Rfactor = gpu_rows.Rfactor = Rfactor if on else _without_tail


def suite_kernel(spec: str) -> kernel_suite.SuiteKernel:
    """`softmax:RxC` or `layernorm:RxC`: that op over the last axis of an R x C input."""
    op, _, shape = spec.partition(":")
    r, c = (int(d) for d in shape.split("x"))
    name = f"{op}_{r}x{c}"
    if op == "softmax":
        return kernel_suite.SuiteKernel(name, (("X", (r, c)),), (r, c),
                                        lambda: helper.make_node("Softmax", ["X"], ["Y"], axis=-1),
                                        kernel_suite._softmax)
    if op == "layernorm":
        return kernel_suite.SuiteKernel(
            name, (("X", (r, c)), ("gamma", (c,)), ("beta", (c,))), (r, c),
            lambda: helper.make_node("LayerNormalization", ["X", "gamma", "beta"], ["Y"], axis=-1, epsilon=1e-5),
            kernel_suite._layernorm)
    raise SystemExit(f"unknown kernel {spec!r}: softmax:RxC or layernorm:RxC")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernels", default="softmax:2364x197,softmax:924x77,layernorm:197x100")
    parser.add_argument("--target", default=None, help="cpu (default) or cuda")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--records-dir", default=None, help="keep (and resume) each variant's records here")
    args = parser.parse_args()
    timer, times = bk._time_side_by_side, {}
    bk._time_side_by_side = _keeping(timer, times)
    try:
        compare(args, times)
    finally:  # as it was (the tests run this in their process)
        bk._time_side_by_side = timer
        use_tails(True)


def compare(args, times: dict) -> None:
    library = "PyTorch" if args.target == "cuda" else "ONNX Runtime"
    print(f"{'kernel':20s} {'round':>5s} {'variant':>8s} {'nestor us':>10s} {'library us':>10s} {library + ' / nestor':>22s}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.records_dir or scratch
        for spec in args.kernels.split(","):
            suite = suite_kernel(spec)
            kernel_suite.EXTRA[suite.name] = suite
            for n in range(args.rounds):
                for variant, on in (("without", False), ("with", True)):
                    use_tails(on)
                    bk.bench_kernels([suite.name], trials=args.trials, repeat=args.repeat, target=args.target,
                                     metaschedule=False, out=lambda line: None,
                                     records=os.path.join(folder, f"{suite.name}_{variant}.sqlite"))
                    ours, _, lib = times["last"][:3]
                    print(f"{suite.name:20s} {n:5d} {variant:>8s} {ours * 1e6:10.2f} {lib * 1e6:10.2f} "
                          f"{lib / ours:22.2f}", flush=True)


def _keeping(time_side_by_side, times: dict):
    def timed(*args, **kwargs):
        times["last"] = time_side_by_side(*args, **kwargs)
        return times["last"]
    return timed


if __name__ == "__main__":
    main()
