"""Nestor's tuner against TVM's MetaSchedule, kernel by kernel, at an equal trial budget.

For each kernel of autotune.kernel_suite: tune with Nestor (records in a temporary database)
and with MetaSchedule (`tune_tir` on the same computation as a tensor expression), check both
outputs against ONNX Runtime's, then time Nestor's best, MetaSchedule's best and a third
opinion interleaved in this process: on the CPU ONNX Runtime (as many threads as Nestor) and,
for matmuls, NumPy; on a GPU the same op in PyTorch (float32, no TF32), where PyTorch is installed. The
last line reads `geomean speedup vs MetaSchedule: <X>`.

With `via_tvm`, each kernel is tuned a third time the way a TVM user plugs Nestor in: `tune_tir`
with Nestor's strategy, database, builder and runner (nestor.tvm.tuning), compiled by
`compile_tir` from that database, and timed beside the others; a line before the last gives its
geomean speedup over MetaSchedule's own search and its time against Nestor's own tuning.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import onnx

from .bench import gpu_interleaved_medians, import_torch, interleaved_medians, need_gpu, ort_session
from .ir.errors import NestorError


def _tune_nestor(kernel, trials: int, records_path: str, target, seed: int = 0):
    """The best schedule after `trials` measurements in all (those already in the records count:
    a run cut short resumes where it stopped; None: none measured), and the seconds taken."""
    from .autotune.budget import Budget
    from .autotune.records import Records
    from .autotune.tune import best_schedules, target_key, tune_kernels
    from .ir import structural_hash
    start = time.perf_counter()
    with Records(records_path) as records:
        left = trials - records.count(structural_hash(kernel), target_key(target))
    if left > 0:
        (task,) = tune_kernels({"k": kernel}, Budget(left), records_path=records_path, target=target,
                               show_progress=True, seed=seed)
    return best_schedules(records_path, target, similar=False)(kernel), time.perf_counter() - start


def metaschedule_target(target):
    """`target` as MetaSchedule tunes for it: a CUDA target gets the limits its GPU rules and
    GPU-code check read (TVM's "cuda" kind leaves two unset), those Nestor's rules read too."""
    import tvm

    from .codegen import machine_params
    if target.kind.name != "cuda":
        return target
    gpu = machine_params(target)
    limits = {"max_threads_per_block": gpu.max_threads_per_block,
              "max_shared_memory_per_block": gpu.shared_memory_per_block, "thread_warp_size": gpu.warp_size}
    return tvm.target.Target({**limits, **dict(target.export())})  # what the target sets wins


def _tune_metaschedule(prim_func, trials: int, workdir: str, target, cost_model="xgb", seed: int | None = None,
                       nestor_search: bool = False):
    """MetaSchedule's best build after `trials` measurements in all (those already in its
    database in `workdir` count, as Nestor's records do), and the seconds taken. `cost_model`:
    what ranks its evolutionary search's candidates, and `seed` its random state (ms.tune_tir's
    arguments). `nestor_search`: tune_tir searches with Nestor instead (nestor.tvm.tuning: its
    strategy, database, builder and runner; batches of Nestor's own size) and `compile_tir`
    gives Nestor's kernel."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    target = metaschedule_target(target)
    mod = tvm.IRModule({"main": prim_func})
    start = time.perf_counter()
    left = trials - _metaschedule_count(workdir)
    if nestor_search:
        from . import tvm as plugin
        from .autotune.ms_database import NestorDatabase
        if left > 0:  # batches of 16, as Nestor's own tuning measures
            args = plugin.tuning(workdir, seed=seed or 0)
            try:
                database = ms.tune_tir(mod, target, workdir, max_trials_global=left,
                                       num_trials_per_iter=min(plugin.TIMED_BATCH, left), **args)
            finally:
                plugin.close_measurement(args)
        else:
            database = NestorDatabase(workdir)
    elif left > 0:
        # a longer build timeout than the default 30 s: a builder's first import of TVM takes
        # longer on a loaded 2-core machine, and every candidate then "fails" to build
        database = ms.tune_tir(mod, target, workdir, max_trials_global=left,
                               num_trials_per_iter=min(64, left), builder=ms.builder.LocalBuilder(timeout_sec=120),
                               cost_model=cost_model, seed=seed)
    else:
        database = ms.database.JSONDatabase(work_dir=workdir)
    seconds = time.perf_counter() - start
    sch = ms.tir_integration.compile_tir(database, mod, target)
    if sch is None:
        raise NestorError("MetaSchedule found no valid schedule")
    return tvm.compile(sch.mod, target=target)["main"], seconds


def _metaschedule_count(workdir: str) -> int:
    """Measurements in MetaSchedule's database in `workdir` (one line each)."""
    path = os.path.join(workdir, "database_tuning_record.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def torch_op(node: onnx.NodeProto, torch):
    """The PyTorch call that computes a suite kernel's ONNX node (inputs in the node's order),
    or None where PyTorch has no single op for it."""
    F = torch.nn.functional
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        return torch.matmul
    if node.op_type == "Conv":
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            return None  # torch pads both sides alike
        return lambda x, w: F.conv2d(x, w, stride=tuple(attrs.get("strides", (1, 1))), padding=tuple(pads[:2]),
                                     dilation=tuple(attrs.get("dilations", (1, 1))), groups=attrs.get("group", 1))
    if node.op_type == "Softmax":
        return lambda x: torch.softmax(x, attrs.get("axis", -1))
    if node.op_type == "LayerNormalization" and attrs.get("axis", -1) == -1:
        return lambda x, gamma, beta: F.layer_norm(x, gamma.shape, gamma, beta, attrs.get("epsilon", 1e-5))
    return None


def _optional_torch(out):
    """PyTorch for the GPU table's third column, or None (then that column shows "-")."""
    try:
        (torch,) = import_torch()
    except NestorError as err:
        out(f"-- no PyTorch column: {err}")
        return None
    return torch


def bench_kernels(names: list[str] | None = None, trials: int = 256, repeat: int = 20,
                  records: str | None = None, out=print, target=None, metaschedule: bool = True,
                  via_tvm: bool = False, seed: int = 0) -> float:
    """`records`: keep Nestor's measurements in this database and MetaSchedule's beside it
    (`<records>.ms/<kernel>/`); both resume from what is there up to `trials` measurements in
    all, so a run cut short goes on where it stopped and a finished one only times again (the
    tune-seconds columns count this run's tuning). By default both go to a
    temporary directory. `target`: anything codegen.as_target takes (default: this CPU).
    `seed`: every tuning's random seed. Without `metaschedule`, Nestor is timed against the
    library alone (what a long tuning of one kernel against cuBLAS or cuDNN needs) and the last
    line is the geomean share of its speed."""
    from .api import import_onnx
    from .autotune.kernel_suite import kernels_named
    from .autotune.search import kernel_flops
    from .codegen import as_target, build, is_gpu
    kernels = kernels_named(names)
    target = as_target(target)
    gpu = is_gpu(target)
    if via_tvm and gpu:
        raise NestorError("bench kernels --via-tvm: Nestor tunes through MetaSchedule for CPU (llvm) targets only, "
                          f"not {target.kind.name}")
    if gpu:
        need_gpu(target)
    torch = _optional_torch(out) if gpu else None
    rows, ratios = [], []   # ratios: the geomean's, vs MetaSchedule or (without it) the library
    via = []                # via_tvm: (kernel, its time, MetaSchedule's, Nestor's own, its tuning s)
    for name, suite in kernels.items():
        (node,) = [n for n in import_onnx(suite.onnx_model(), target=target).nodes if n.kernel is not None]
        with tempfile.TemporaryDirectory() as workdir:
            out(f"-- {name}: tuning with Nestor ({trials} trials)")
            schedule, nestor_s = _tune_nestor(node.kernel, trials,
                                              records or os.path.join(workdir, "nestor.sqlite"), target, seed)
            ms_fn, ms_s = None, None
            if metaschedule:
                out(f"-- {name}: tuning with MetaSchedule ({trials} trials)")
                ms_fn, ms_s = _tune_metaschedule(suite.prim_func(), trials,
                                                 f"{records}.ms/{name}" if records else os.path.join(workdir, "ms"),
                                                 target, seed=seed)
            tvm_fn = None
            if via_tvm:
                out(f"-- {name}: tuning with Nestor through ms.tune_tir ({trials} trials)")
                tvm_fn, tvm_s = _tune_metaschedule(suite.prim_func(), trials, f"{records}.tvm/{name}" if records
                                                   else os.path.join(workdir, "tvm"), target, nestor_search=True,
                                                   seed=seed)
        if schedule is None and gpu:  # an unscheduled nest binds no threads: it cannot run
            raise NestorError(f"{name}: Nestor's tuner measured no valid schedule for {target.kind.name}")
        best = schedule.apply(node.kernel) if schedule else node.kernel
        t_nestor, t_ms, t_ref, t_np, t_tvm = _time_side_by_side(name, suite, build([best], target).get(best.name),
                                                                ms_fn, target, torch, repeat, tvm_fn)
        gflops = kernel_flops(node.kernel) / t_nestor / 1e9
        speedup = t_ms / t_nestor if t_ms else None
        ratios.append(speedup if metaschedule else t_ref / t_nestor if t_ref else None)
        rows.append((name, t_nestor, t_ms, speedup, nestor_s, ms_s, t_ref, t_np, gflops))
        if via_tvm:
            via.append((name, t_tvm, t_ms, t_nestor, tvm_s))
            out(f"{name}: Nestor through ms.tune_tir {t_tvm * 1e3:.3f} ms ({tvm_s:.0f} s tuning)")
        _print_table(rows[-1:], out, gpu)
    _print_table(rows, out, gpu)
    known = [x for x in ratios if x]
    geomean = float(np.exp(np.mean(np.log(known)))) if known else float("nan")
    if via:
        _print_via_tvm(via, out)
    if metaschedule:
        out(f"geomean speedup vs MetaSchedule: {geomean:.2f}")
    else:
        out(f"geomean share of {'PyTorch' if gpu else 'ONNX Runtime'}'s speed: {geomean:.0%}")
    return geomean


def _time_side_by_side(name, suite, nestor_fn, ms_fn, target, torch, repeat, tvm_fn=None):
    """Check each competitor's output against ONNX Runtime's, then time them interleaved:
    medians of Nestor, MetaSchedule, the third opinion (ONNX Runtime on the CPU, PyTorch on a
    GPU; None where there is none), NumPy (CPU matmuls, else None) and Nestor through
    ms.tune_tir (`tvm_fn`, else None)."""
    import tvm

    from .codegen import device_of, is_gpu
    dev = device_of(target)
    xs = suite.random_inputs()
    feeds = {n: x for (n, _), x in zip(suite.inputs, xs)}
    session = ort_session(suite.onnx_model())
    want = session.run(None, feeds)[0]
    args = [tvm.runtime.tensor(x, dev) for x in xs]
    y_nestor = tvm.runtime.tensor(np.zeros(suite.output, np.float32), dev)
    y_ms = tvm.runtime.tensor(np.zeros(suite.output, np.float32), dev)
    fns = [lambda: nestor_fn(*args, y_nestor)]
    outputs = {"Nestor": lambda: y_nestor.numpy()}
    if ms_fn:
        fns.append(lambda: ms_fn(*args, y_ms))
        outputs["MetaSchedule"] = lambda: y_ms.numpy()
    if tvm_fn:
        y_tvm = tvm.runtime.tensor(np.zeros(suite.output, np.float32), dev)
        fns.append(lambda: tvm_fn(*args, y_tvm))
        outputs["Nestor through ms.tune_tir"] = lambda: y_tvm.numpy()
    ours = len(fns)  # Nestor's, and MetaSchedule's and Nestor's through TVM where they ran
    op = torch_op(suite.node(), torch) if torch else None
    if op:
        txs = [torch.from_numpy(x).cuda() for x in xs]
        fns.append(lambda: op(*txs))
        outputs["PyTorch"] = lambda: op(*txs).cpu().numpy()
    for fn in fns[:ours]:  # fills the outputs checked below
        fn()
    scale = float(np.max(np.abs(want))) or 1.0
    for who, y in outputs.items():
        err = float(np.max(np.abs(y() - want))) / scale
        if err > 1e-3:
            raise NestorError(f"{name}: {who}'s output differs from ONNX Runtime's (max rel err {err:.1e})")
    if is_gpu(target):
        times = gpu_interleaved_medians(fns, [dev.sync] * ours + ([torch.cuda.synchronize] if op else []), repeat)
        t_ref, t_np = (times[ours] if op else None), None
    else:
        fns.append(lambda: session.run(None, feeds))
        if suite.numpy_matmul:
            fns.append(lambda: np.matmul(*xs))
        times = interleaved_medians(fns, repeat)
        t_ref, t_np = times[ours], (times[ours + 1] if suite.numpy_matmul else None)
    return times[0], (times[1] if ms_fn else None), t_ref, t_np, (times[ours - 1] if tvm_fn else None)


def _print_via_tvm(via, out) -> None:
    """Nestor through ms.tune_tir against MetaSchedule's own search and Nestor's own tuning."""
    out(f"{'kernel':<14} {'via tvm ms':>10} {'vs ms':>7} {'vs own':>7} {'tune s':>7}")
    for name, t_tvm, t_ms, t_own, tune_s in via:
        vs_ms = f"{t_ms / t_tvm:>7.2f}" if t_ms else f"{'-':>7}"
        out(f"{name:<14} {t_tvm * 1e3:>10.3f} {vs_ms} {t_tvm / t_own:>7.2f} {tune_s:>7.0f}")
    own = float(np.exp(np.mean([np.log(t / o) for _, t, _, o, _ in via])))
    line = f"Nestor through ms.tune_tir: its time / Nestor's own tuning's {own:.2f} (geomean)"
    if all(m for _, _, m, _, _ in via):
        line += f", speedup vs MetaSchedule {np.exp(np.mean([np.log(m / t) for _, t, m, _, _ in via])):.2f}"
    out(line)


def _print_table(rows, out, gpu: bool = False) -> None:
    """Third opinions: ONNX Runtime (and NumPy for matmuls) on the CPU, PyTorch on a GPU."""
    ref = "torch" if gpu else "ort"
    pct = max(8, len("% of " + ref))
    numpy_head = "" if gpu else f" {'numpy ms':>8}"
    out(f"{'kernel':<14} {'nestor ms':>10} {'ms ms':>9} {'speedup':>7} {'tune s':>7} {'ms tune s':>9} "
        f"{ref + ' ms':>8} {'% of ' + ref:>{pct}}{numpy_head} {'GFLOP/s':>8}")
    for name, tn, tm, sp, ns, mss, tr, tnp, gf in rows:
        ref_cols = f"{tr * 1e3:>8.3f} {tr / tn * 100:>{pct - 1}.0f}%" if tr else f"{'-':>8} {'-':>{pct}}"
        numpy_col = "" if gpu else f" {tnp * 1e3:>8.3f}" if tnp else f" {'-':>8}"
        ms_cols = f"{tm * 1e3:>9.3f} {sp:>7.2f}" if tm else f"{'-':>9} {'-':>7}"
        ms_tune = f"{mss:>9.0f}" if mss is not None else f"{'-':>9}"
        out(f"{name:<14} {tn * 1e3:>10.3f} {ms_cols} {ns:>7.0f} {ms_tune} {ref_cols}{numpy_col} {gf:>8.1f}")
