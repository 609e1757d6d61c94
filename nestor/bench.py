"""Side-by-side benchmarks against ONNX Runtime on the CPU and PyTorch on the GPU (same
process, interleaved runs, medians)."""
from __future__ import annotations

import importlib
import os
import time

import numpy as np
import onnx

from .codegen.target import host_cores
from .ir.errors import NestorError
from .zoo import LIGHT_MODELS, encoder_block, light_model
from .zoo_breadth import BREADTH_MODELS
from .zoo_cnn import CNN_MODELS
from .zoo_transformers import TRANSFORMER_MODELS

SEEN = LIGHT_MODELS + ("bert_layer",)       # the models the sketch rules were written and tuned on
# The wider zoo (issue 20): no rule constant may cite these. HELD_OUT stay out of rule work
# altogether and are reported last, as the test of what the rules do on models nobody looked at.
HELD_OUT = ("regnet_y_400mf", "gpt2_77")
UNSEEN = tuple(n for n in (*CNN_MODELS, *TRANSFORMER_MODELS, *BREADTH_MODELS) if n not in HELD_OUT) + HELD_OUT
MODELS = SEEN + UNSEEN
# Largest max |nestor - competitor| / max |competitor| of an output that still counts as correct:
# float32 sums in another order and the fast-math polynomials stay orders of magnitude below it.
ERROR_LIMIT = 1e-3


def example_model(name: str):
    if name == "bert_layer":
        return encoder_block()
    builder = CNN_MODELS.get(name) or TRANSFORMER_MODELS.get(name) or BREADTH_MODELS.get(name)
    return builder() if builder else light_model(name)


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy that also outputs the input of every Softmax or LogSoftmax whose result is a graph
    output. With seeded random weights the logits are large and a softmax saturates to exact 0s
    and a 1, where any error in the kernels before it vanishes; the logits keep it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    outputs = {o.name: o for o in out.graph.output}
    for node in out.graph.node:
        if node.op_type in ("Softmax", "LogSoftmax") and node.output[0] in outputs and node.input[0] not in outputs:
            logits = out.graph.output.add()
            logits.CopyFrom(outputs[node.output[0]])   # a softmax keeps its input's type and shape
            logits.name = node.input[0]
    return out


def output_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The largest, over the outputs, of max |got - want| / max |want|."""
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        worst = max(worst, float(np.max(np.abs(g - w), initial=0.0) / (np.max(np.abs(w), initial=0.0) + 1e-30)))
    return worst


def ort_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session with `threads` intra-op threads (default: the cores this
    process may use, as Nestor's own thread pool takes them), nodes run one at a time."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise NestorError("this benchmark needs onnxruntime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or host_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def interleaved_medians(fns: list, repeat: int, warmup: int = 2, block: int = 3,
                        pause: float = 0.2, wake: float = 0.02) -> list[float]:
    """Median seconds of each callable, timed in alternation so machine noise hits all alike.

    Runtimes' worker threads (TVM's pool, ONNX Runtime's, OpenBLAS's) spin for a while after a
    call; a competitor timed right after another would share the cores with those spinning
    threads. So each turn pauses (0.2 s: enough here for both to match their times measured
    alone), wakes its runtime and the cores with untimed calls for `wake` seconds (at least
    one call: a sub-millisecond kernel timed right after the pause ran 2-2.5x slower than in
    steady state here, which hid most of the difference between fast competitors), then times
    `block` calls; turns alternate until every callable has `repeat` timings.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    while len(times[0]) < repeat:
        for t, fn in zip(times, fns):
            time.sleep(pause)
            woken = time.perf_counter()
            fn()
            while time.perf_counter() - woken < wake:
                fn()
            for _ in range(min(block, repeat - len(t))):
                start = time.perf_counter()
                fn()
                t.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def gpu_interleaved_medians(fns: list, syncs: list, repeat: int, warmup: int = 3, block: int = 3,
                            batch: float = 2e-3) -> list[float]:
    """Median seconds per call of each callable that queues work on the GPU, timed in alternation
    (turns of `block` timings) until each has `repeat`. One timing is the wall time of n calls
    back to back and the device synchronization after them (`syncs[i]`), over n; n is chosen
    per callable so that a timing lasts about `batch` seconds: the sync's own cost is spread
    out, and a kernel shorter than its launch (a few microseconds) is timed at the launch rate,
    as it would run in a stream of kernels. No pauses: a GPU has no spinning host threads."""
    counts = []
    for fn, sync in zip(fns, syncs):
        for _ in range(warmup):
            fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        counts.append(max(1, min(10_000, int(batch / max(time.perf_counter() - start, 1e-7)))))
    times = [[] for _ in fns]
    while len(times[0]) < repeat:
        for t, fn, sync, n in zip(times, fns, syncs, counts):
            for _ in range(min(block, repeat - len(t))):
                sync()
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                sync()
                t.append((time.perf_counter() - start) / n)
    return [float(np.median(t)) for t in times]


def import_torch(*extra: str):
    """PyTorch (TF32 off: the competitor computes in float32 as Nestor does) and the modules
    named in `extra`, or a one-line NestorError saying what to install."""
    try:
        torch, *others = [importlib.import_module(m) for m in ("torch", *extra)]
    except ImportError as err:
        name = (err.name or "torch").split(".")[0]
        raise NestorError(f"the GPU benchmark compares with PyTorch and needs {name}: "
                          f"pip install {name}") from None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return (torch, *others)


def need_gpu(target) -> None:
    """One line, before any tuning, where `target` is a GPU that this machine lacks."""
    from .codegen import gpu_present
    if not gpu_present():
        raise NestorError(f"target {target.kind.name} {target.attrs.get('arch', '')}: the benchmark "
                          "times on the GPU, and no NVIDIA GPU is present here")


def bench_models(names: list[str] | None = None, repeat: int = 20, schedule: str = "default",
                 time_budget: float | None = None, records: str | None = None, out=print,
                 target=None, seed: int = 0) -> float:
    """With `time_budget` (seconds per model), each model is first tuned (task scheduler, random
    `seed`) into `records` (default: a temporary database per run). Each model is compiled from
    the best schedules in `records` when given (without a budget: re-time what an earlier run
    tuned).
    `target`: anything codegen.as_target takes (default: this CPU); on a GPU the competitor is
    PyTorch eager on the same ONNX model (through onnx2torch) instead of ONNX Runtime.
    Both run each model with its logits as extra outputs (`with_logits`); the error column is
    `output_error` against the competitor, and a model above ERROR_LIMIT fails the benchmark
    (a NestorError after the table)."""
    import tempfile
    from .api import compile as nestor_compile, import_onnx
    from .codegen import as_target, is_gpu
    target = as_target(target)
    names = names or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise NestorError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if records and not time_budget and not os.path.exists(records):
        raise NestorError(f"{records}: no such records file (without --time-budget, bench models "
                          f"compiles from the records of an earlier run)")
    competitor = _TorchEager() if is_gpu(target) else _OnnxRuntime()  # fails here, before any tuning
    if is_gpu(target):
        need_gpu(target)
    workdir = tempfile.TemporaryDirectory() if time_budget and not records else None
    records = records or (f"{workdir.name}/records.sqlite" if workdir else None)
    header = (f"{'model':<18} {'tune s':>7} {'compile s':>9} {'nestor ms':>10} {competitor.label + ' ms':>9} "
              f"{'ratio':>7} {'max rel err':>11}")
    groups = [("", [n for n in names if n in SEEN]),
              (f"unseen (the wider zoo, which no rule was written for; held out, last: {', '.join(HELD_OUT)})",
               [n for n in UNSEEN if n in names])]
    ratios, wrong = [], []
    for title, group in groups:
        if not group:
            continue
        if title:
            out(f"-- {title}")
        out(header)
        table = []
        for name in group:
            model = with_logits(example_model(name))
            tune_s = 0.0
            if time_budget:
                from .autotune.budget import Budget
                from .autotune.tune import tune_graph
                start = time.perf_counter()
                tune_graph(import_onnx(model, target=target), Budget(seconds=time_budget), records_path=records,
                           target=target, seed=seed)
                tune_s = time.perf_counter() - start
            start = time.perf_counter()
            compiled = nestor_compile(model, schedule=schedule, records=records, target=target)
            compile_s = time.perf_counter() - start
            inputs = compiled.random_inputs()
            try:
                want, t_nestor, t_other = competitor.compare(model, compiled, inputs, repeat)
            except _CannotConvert as err:
                out(f"{name:<18} skipped: {err}")
                continue
            got = compiled.run(inputs)
            err = output_error(got, want)
            if not err <= ERROR_LIMIT:
                wrong.append(f"{name} ({err:.1e})")
            table.append(t_nestor / t_other)
            out(f"{name:<18} {tune_s:>7.0f} {compile_s:>9.1f} {t_nestor * 1e3:>10.2f} {t_other * 1e3:>9.2f} "
                f"{table[-1]:>7.2f} {err:>11.1e}")
        if table and len(table) < len(names):  # one of two tables: its own geomean
            out(f"{'unseen ' if title else 'seen '}geomean vs {competitor.name}: {_geomean(table):.2f}")
        ratios += table
    if not ratios:
        raise NestorError(f"no model could be compared with {competitor.name}")
    geomean = _geomean(ratios)
    out(f"geomean latency ratio vs {competitor.name}: {geomean:.2f}")
    if wrong:
        raise NestorError(f"outputs differ from {competitor.name}'s by more than {ERROR_LIMIT:g} "
                          f"(max relative error): {', '.join(wrong)}")
    return geomean


def _geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


class _CannotConvert(NestorError):
    """The competitor cannot run this model (its row says why; the others go on)."""


class _OnnxRuntime:
    """The CPU competitor. Both sides are timed as a user calls them: inputs in, outputs out."""
    label, name = "ort", "ONNX Runtime"

    def compare(self, model, compiled, inputs, repeat):
        session = ort_session(model)
        want = session.run(None, inputs)
        return (want, *interleaved_medians([lambda: compiled.run(inputs), lambda: session.run(None, inputs)],
                                           repeat))


def inference_dropouts_as_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with each Dropout whose mask nobody reads made an Identity (what it is at inference;
    onnx2torch has no converter for old Dropouts, SqueezeNet's Dropout-7)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    read = {name for node in out.graph.node for name in node.input} | {o.name for o in out.graph.output}
    for node in out.graph.node:
        if node.op_type == "Dropout" and not any(o in read for o in node.output[1:]):
            node.op_type = "Identity"
            del node.input[1:], node.output[1:], node.attribute[:]
    return out


class _TorchEager:
    """The GPU competitor: PyTorch eager (float32, no TF32) on the ONNX model converted by
    onnx2torch. Both sides are timed on inputs already on the GPU, each call waiting for its
    work (kernels_only's function synchronizes at its end), as one inference's latency."""
    label, name = "torch", "PyTorch"

    def __init__(self):
        self.torch, self.onnx2torch = import_torch("onnx2torch")

    def compare(self, model, compiled, inputs, repeat):
        torch = self.torch
        try:
            net = self.onnx2torch.convert(inference_dropouts_as_identity(model)).eval().cuda()
        except Exception as err:  # noqa: BLE001 - an op onnx2torch lacks: NotImplementedError, KeyError, ...
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise _CannotConvert(f"onnx2torch cannot convert it ({first})") from None
        xs = [torch.from_numpy(inputs[n]).cuda() for n in compiled.input_names]

        def infer():
            with torch.no_grad():
                y = net(*xs)
            torch.cuda.synchronize()
            return y
        y = infer()
        want = [t.cpu().numpy() for t in (y if isinstance(y, (list, tuple)) else [y])]
        run = compiled.kernels_only(inputs)
        done = lambda: None  # both callables wait for their own work
        return (want, *gpu_interleaved_medians([run, infer], [done, done], repeat))
