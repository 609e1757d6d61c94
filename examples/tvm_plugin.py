"""A TVM user's flow tuned by MetaSchedule and by Nestor (nestor.tvm), compiled by TVM both times,
timed beside ONNX Runtime.

The ONNX model goes through TVM's Relax frontend and `relax.get_pipeline("static_shape_tuning")`
twice with the same number of trials: once as TVM ships it, once after `nestor.tvm.install()`.
    python examples/tvm_plugin.py [--model resnet50 | --onnx model.onnx] [--trials 64] [--repeat 20]
The last line reads `<model> via TVM: Nestor <a> ms, MetaSchedule <b> ms, ONNX Runtime <c> ms`.
Trials are the budget (MetaSchedule's tuning takes no time limit); --trials 0 compiles untuned.
"""
import argparse
import statistics
import tempfile
import time

import numpy as np
import onnx

import nestor.tvm


def tuned(onnx_model, target, trials: int, work_dir: str, nestor_tuning: bool):
    """The model through the Relax frontend and the static_shape_tuning pipeline, compiled."""
    import tvm
    import tvm.relax.frontend.onnx
    from tvm import relax
    mod = relax.frontend.onnx.from_onnx(onnx_model, keep_params_in_input=False)
    pipeline = relax.get_pipeline("static_shape_tuning", target=target, total_trials=trials, work_dir=work_dir)
    if nestor_tuning:
        with nestor.tvm.installed():
            mod = pipeline(mod)
    else:
        mod = pipeline(mod)
    return relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())


def median_ms(run, repeat: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a model of nestor.bench (default resnet50)")
    p.add_argument("--onnx", help="an ONNX file instead (one float input)")
    p.add_argument("--trials", type=int, default=64, help="trials of each tuner (default 64)")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()

    import tvm
    from nestor.bench import example_model, ort_session
    from nestor.codegen import host_target
    onnx_model = onnx.load(args.onnx) if args.onnx else example_model(args.model)
    name = args.onnx or args.model
    graph_input = onnx_model.graph.input[0]
    shape = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    session = ort_session(onnx_model)
    want = session.run(None, {graph_input.name: x})[0]
    target = host_target()

    ms = {}
    for label, nestor_tuning in (("MetaSchedule", False), ("Nestor", True)):
        with tempfile.TemporaryDirectory() as work_dir:
            vm = tuned(onnx_model, target, args.trials, work_dir, nestor_tuning)
        data = tvm.runtime.tensor(x)
        out = vm["main"](data)
        out = out if hasattr(out, "numpy") else out[0]  # a model of several outputs: the first
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-3, atol=1e-3)
        ms[label] = median_ms(lambda: vm["main"](data), args.repeat)
        print(f"{label}: {ms[label]:.3f} ms", flush=True)
    ort_ms = median_ms(lambda: session.run(None, {graph_input.name: x}), args.repeat)
    print(f"{name} via TVM: Nestor {ms['Nestor']:.3f} ms, MetaSchedule {ms['MetaSchedule']:.3f} ms, "
          f"ONNX Runtime {ort_ms:.3f} ms")


if __name__ == "__main__":
    main()
