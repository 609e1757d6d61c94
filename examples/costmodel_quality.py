"""The cost model's ranking quality on held-out records (also `nestor bench costmodel --records DB`).

    python examples/bench_kernels.py --trials 256 --records kernels.sqlite   # or nestor tune ...
    python examples/costmodel_quality.py kernels.sqlite [--folds 4] [--pool 64]

Every correct record gets a score from a model trained without it (k-fold, all tasks together);
per task the table shows pairwise ranking accuracy, top-1 and top-5 recall among `pool` random
candidates, `transfer` (a model trained on the other tasks only) and, with --pretrained
(records of other models), `pretrained` (a model trained on those alone; with them every model
above is pretrained too). Models learn from each record's fastest repeat and are judged against
its median, or with --truth fastest its fastest repeat, or with --truth DB the median DB holds for
the same schedule (`nestor records retime kernels.sqlite -o DB`: measured again, steadier).
MetaSchedule's own cost model (its features of each schedule's TIR, its XGBModel) is scored on
the same folds beside it, unless --no-metaschedule. The last line reads
`cost model pairwise accuracy on held-out records: <X>`.
"""
import argparse

from nestor.autotune.model_quality import evaluate, report

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", help="a records database")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--pool", type=int, default=64)
    p.add_argument("--pretrained", action="append", help="records of other models or a saved cost model")
    p.add_argument("--truth", default="median", metavar="median|fastest|DB",
                   help="judge against each record's median, its fastest repeat, or the same schedules' medians "
                        "in DB (nestor records retime)")
    p.add_argument("--no-metaschedule", dest="metaschedule", action="store_false",
                   help="leave out MetaSchedule's cost model, scored beside Nestor's on the same folds")
    args = p.parse_args()
    report(evaluate(args.records, folds=args.folds, pool=args.pool, pretrained=args.pretrained, truth=args.truth,
                    metaschedule=args.metaschedule), pool=args.pool)
