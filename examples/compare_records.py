"""Two tuning runs side by side: each model (or suite kernel) compiled from records A and from
records B, timed with ONNX Runtime in one process, interleaved, medians; the ratio B / A says
whether B's tuning (another Nestor version, budget or setting) made faster code than A's.

    nestor tune model.onnx --time-budget 3m --records a.sqlite     # one version or setting
    nestor tune model.onnx --time-budget 3m --records b.sqlite     # the other
    python examples/compare_records.py a.sqlite b.sqlite --models resnet50,squeezenet
    python examples/compare_records.py a.sqlite b.sqlite --kernels conv3x3,matmul512

Schedules are replayed by the Nestor that runs this script, so records of an older version
compare with a newer one's as long as its schedules still replay (tests/test_space.py checks).
"""
import argparse

import numpy as np

import nestor
from nestor.autotune.kernel_suite import SUITE
from nestor.bench import MODELS, example_model, interleaved_medians, ort_session


def compare(name: str, model, records_a: str, records_b: str, repeat: int) -> float:
    a = nestor.compile(model, records=records_a)
    b = nestor.compile(model, records=records_b)
    session = ort_session(model)
    inputs = a.random_inputs()
    want = session.run(None, inputs)
    for compiled in (a, b):
        for got, w in zip(compiled.run(inputs), want):
            np.testing.assert_allclose(got, w, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(w)) + 1))
    t_a, t_b, t_ort = interleaved_medians([lambda: a.run(inputs), lambda: b.run(inputs),
                                          lambda: session.run(None, inputs)], repeat)
    print(f"{name:<14} {t_a * 1e3:>9.3f} {t_b * 1e3:>9.3f} {t_ort * 1e3:>9.3f} {t_b / t_a:>7.3f} "
          f"{t_a / t_ort:>7.3f} {t_b / t_ort:>7.3f}", flush=True)
    return t_b / t_a


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records_a")
    p.add_argument("records_b")
    p.add_argument("--models", default="", help=f"comma-separated, of {','.join(MODELS)}")
    p.add_argument("--kernels", default="", help=f"comma-separated, of {','.join(SUITE)}")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    print(f"{'model':<14} {'A ms':>9} {'B ms':>9} {'ort ms':>9} {'B/A':>7} {'A/ort':>7} {'B/ort':>7}")
    ratios = [compare(m, example_model(m), args.records_a, args.records_b, args.repeat)
              for m in args.models.split(",") if m]
    ratios += [compare(k, SUITE[k].onnx_model(), args.records_a, args.records_b, args.repeat)
               for k in args.kernels.split(",") if k]
    if ratios:
        print(f"geomean B/A: {float(np.exp(np.mean(np.log(ratios)))):.3f}")


if __name__ == "__main__":
    main()
