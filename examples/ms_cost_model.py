"""MetaSchedule's evolutionary search ranking its candidates with its own XGBoost model and with
Nestor's cost model (nestor.tvm.cost_model), the same trials per kernel of the kernel suite.

Each kernel is tuned twice by `ms.tune_tir` (same design spaces, mutators, builder, runner and
seed; only the cost model differs), both results are checked against ONNX Runtime and timed
interleaved in this process (medians). MetaSchedule measures batches of 64 and the first is
ranked by neither model (both untrained: random scores), so the trials should span several
batches (MetaSchedule's XGBModel scores at random until it has 100 samples). Per kernel: both
medians, the ratio (XGBModel's time / Nestor's model's: above 1, Nestor's model found the faster
kernel) and both tuning times.
    python examples/ms_cost_model.py [--kernels matmul512,conv3x3] [--trials 256] [--repeat 20]
                                     [--seed 0] [--pretrained nestor_records.sqlite]
`--pretrained` pretrains Nestor's model on Nestor's records (of other kernels, for a fair race).
The last line reads `geomean speedup of Nestor's cost model over XGBModel: <X>`.
"""
import argparse
import tempfile

import numpy as np


def compare(name: str, trials: int, repeat: int, target, seed: int, pretrained=None):
    """Medians (s) of the kernel tuned with XGBModel and with Nestor's model, and their tuning s."""
    import tvm
    from nestor.autotune.kernel_suite import kernels_named
    from nestor.ir.errors import NestorError

    import nestor.tvm
    from nestor.bench import interleaved_medians, ort_session
    from nestor.bench_kernels import _tune_metaschedule
    suite = kernels_named([name])[name]
    built, tune_s = {}, {}
    for label, cost_model in (("XGBModel", "xgb"), ("Nestor", nestor.tvm.cost_model(pretrained=pretrained))):
        print(f"-- {name}: MetaSchedule with {label}'s ranking ({trials} trials)", flush=True)
        with tempfile.TemporaryDirectory() as work_dir:
            tuned = _tune_metaschedule(suite.prim_func(), trials, work_dir, target, cost_model, seed)
        built[label], tune_s[label] = tuned
    xs = suite.random_inputs()
    want = ort_session(suite.onnx_model()).run(None, {n: x for (n, _), x in zip(suite.inputs, xs)})[0]
    args = [tvm.runtime.tensor(x) for x in xs]
    outs = {label: tvm.runtime.tensor(np.zeros(suite.output, np.float32)) for label in built}
    fns = [lambda label=label: built[label](*args, outs[label]) for label in built]
    for label, fn in zip(built, fns):
        fn()
        err = float(np.max(np.abs(outs[label].numpy() - want))) / (float(np.max(np.abs(want))) or 1.0)
        if err > 1e-3:
            raise NestorError(f"{name}: the kernel tuned with {label}'s ranking differs from ONNX Runtime's "
                              f"(max rel err {err:.1e})")
    t_xgb, t_nestor = interleaved_medians(fns, repeat)
    return t_xgb, t_nestor, tune_s["XGBModel"], tune_s["Nestor"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", help="comma-separated suite kernels (default: the suite)")
    p.add_argument("--trials", type=int, default=256, help="trials of each side per kernel (default 256)")
    p.add_argument("--seed", type=int, default=0, help="MetaSchedule's seed, the same for both sides (default 0)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--pretrained", metavar="FILE", action="append",
                   help="pretrain Nestor's model on these records (.sqlite) or saved cost models (repeatable)")
    args = p.parse_args()
    from nestor.autotune.kernel_suite import kernels_named
    from nestor.codegen import host_target
    names = list(kernels_named(args.kernels.split(",") if args.kernels else None))
    target, rows = host_target(), []
    for name in names:
        t_xgb, t_nestor, s_xgb, s_nestor = compare(name, args.trials, args.repeat, target, args.seed, args.pretrained)
        rows.append(f"{name:<14} {t_xgb * 1e3:>9.3f} {t_nestor * 1e3:>9.3f} {t_xgb / t_nestor:>7.2f} {s_xgb:>10.0f} "
                    f"{s_nestor:>13.0f}")
        print(rows[-1], flush=True)
    ratios = [float(row.split()[3]) for row in rows]
    print(f"{'kernel':<14} {'xgb ms':>9} {'nestor ms':>9} {'speedup':>7} {'xgb tune s':>10} {'nestor tune s':>13}")
    print("\n".join(rows))
    print(f"geomean speedup of Nestor's cost model over XGBModel: {np.exp(np.mean(np.log(ratios))):.2f}")


if __name__ == "__main__":
    main()
