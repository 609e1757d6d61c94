"""The passes' contract, as property tests (hypothesis): schedules preserve semantics.

- Random kernels from the frontend (conv, matmul, gemm, pooling, softmax, layernorm, reductions,
  elementwise chains, transpose/concat; tests/kernel_gen.py) at small random shapes get random
  legal schedules of 1-8 steps, drawn from the schedule spaces of every registered pass (plugins
  included); the scheduled kernel must compute what the unscheduled one does.
- Every transformed kernel verifies, prints and parses back equal, and the schedule's JSON (and
  pipeline string) replays to an equal kernel, also on a copy of the kernel with other loop names.
- Random, mostly illegal steps (any loop or buffer name, any factor, any permutation, annotations
  anywhere) either raise ScheduleError or, if accepted, still compute the same values; any other
  exception is a bug.

The default profile is derandomized and database-free (CI is reproducible) and takes well under a
minute; the `slow` variants run many more random examples (`pytest -m slow
tests/test_pass_properties.py`). A failure prints the kernel's Spec (one line rebuilds it), the
schedule as a pipeline string, and the IR before and after.
"""
from __future__ import annotations

import re
import typing

import numpy as np
import pytest
import hypothesis
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.control import currently_in_test_context

from nestor.codegen import run_kernel
from nestor.codegen.tir import to_primfunc
from nestor.ir import (Allocate, For, Kernel, parse_kernel, print_kernel, structural_equal, verify,
                       walk_stmts)
from nestor.passes import Schedule, ScheduleError, canonical_loops, list_passes, parse_pipeline
from nestor.passes.base import loop_ref, loop_sites
from tests.kernel_gen import Spec, random_inputs, specs

GPU_PASSES = {"bind"}  # their kernels need a GPU to run; the CPU comparison leaves them out
RTOL = ATOL = 1e-4     # reductions may be reassociated (reorder, tile, split of a reduce loop)

CI = dict(database=None, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
SLOW = dict(database=None, deadline=None, print_blob=True,
            suppress_health_check=CI["suppress_health_check"])


def note(text: str) -> None:  # hypothesis' note and event, also usable outside a hypothesis test
    if currently_in_test_context():
        hypothesis.note(text)


def event(text: str) -> None:
    if currently_in_test_context():
        hypothesis.event(text)


def cpu_passes() -> dict:
    return {n: c for n, c in list_passes().items() if n not in GPU_PASSES}


# reporting

def ir(kernel: Kernel) -> str:
    return print_kernel(kernel).rstrip()


def report(spec: Spec, schedule: Schedule, kernel: Kernel | None = None, extra: str = "") -> str:
    parts = [f"kernel: {spec.describe()}", f"  rebuild: {spec!r}.kernel()",
             f"schedule: {schedule}", f"  replay: parse_pipeline({str(schedule)!r}).apply(kernel)"]
    if extra:
        parts.append(extra)
    parts.append("--- unscheduled (canonical loops) ---\n" + ir(canonical_loops(spec.kernel())))
    if kernel is not None:
        parts.append("--- scheduled ---\n" + ir(kernel))
    return "\n".join(parts)


# checks

def renamed(kernel: Kernel) -> Kernel:
    """The kernel with every loop renamed (through the text form): only the structure is shared."""
    text = print_kernel(kernel)
    loops = list(dict.fromkeys(re.findall(r"for (\w+) in", text)))
    names = {old: f"zz{len(loops) - n}" for n, old in enumerate(loops)}
    return parse_kernel(re.sub(r"\b\w+\b", lambda m: names.get(m.group(0), m.group(0)), text))


def check_ir(kernel: Kernel, why) -> None:
    """Verifies, and prints and parses back equal."""
    try:
        verify(kernel)
    except Exception as err:
        raise AssertionError(f"the kernel does not verify: {type(err).__name__}: {err}\n{why()}") from err
    back = parse_kernel(print_kernel(kernel))
    assert structural_equal(back, kernel) and back == kernel, f"print/parse round trip differs\n{why()}"


def check_replay(spec: Spec, schedule: Schedule, scheduled: Kernel, why) -> None:
    """The schedule's JSON and pipeline string replay to the kernel that was built step by step,
    on the frontend's kernel and on a copy with other loop names."""
    again = Schedule.from_json(schedule.to_json())
    assert again == schedule, f"JSON round trip of the schedule differs: {again}\n{why()}"
    assert parse_pipeline(str(schedule)) == schedule, f"pipeline round trip differs\n{why()}"
    replayed = again.apply(spec.kernel(), debug=True)
    assert structural_equal(replayed, scheduled) and replayed == scheduled, \
        f"JSON replay differs\n{why()}\n--- replayed ---\n{ir(replayed)}"
    elsewhere = again.apply(renamed(spec.kernel()))
    assert structural_equal(elsewhere, scheduled), \
        f"replay on a renamed kernel differs\n{why()}\n--- replayed ---\n{ir(elsewhere)}"


def check_results(spec: Spec, scheduled: Kernel, seed: int, why) -> None:
    """The scheduled kernel compiles, and computes what the unscheduled one does."""
    kernel = spec.kernel()
    args = random_inputs(kernel, seed)
    want = run_kernel(kernel, args)
    try:
        got = run_kernel(scheduled, args)
    except Exception as err:
        raise AssertionError(f"the scheduled kernel fails to compile or run: "
                             f"{type(err).__name__}: {str(err)[:2000]}\n{why()}") from err
    for out, g, w in zip(kernel.outputs, got, want):
        bad = ~np.isclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"wrong result: {out.name} differs at {int(bad.sum())} of {bad.size} elements, first "
                f"at {list(first)}: got {g[first]}, want {w[first]} (input seed {seed})\n{why()}")


def gpu_bound(kernel: Kernel) -> bool:
    return any(isinstance(s, For) and s.kind not in ("serial", "parallel", "vectorized", "unrolled")
               for s in walk_stmts(kernel.body))


# legal schedules: drawn from the passes' own schedule spaces

def draw_legal_schedule(data, spec: Spec, passes: dict, max_steps: int = 8) -> tuple[Schedule, Kernel]:
    """1..max_steps steps, each a pass (uniformly among those with a non-empty space on the current
    kernel) and one instance of its space; applied as drawn, each result checked."""
    kernel = canonical_loops(spec.kernel())
    schedule = Schedule()
    for _ in range(data.draw(st.sampled_from(range(1, max_steps + 1)), label="steps")):
        names = list(passes)
        while names:
            name = data.draw(st.sampled_from(names), label="pass")
            space = passes[name].schedule_space(kernel)
            if space:
                break
            names.remove(name)
        else:
            break  # nothing applies any more
        step = data.draw(st.sampled_from(space), label="step")
        try:
            kernel = step.apply(kernel)
        except Exception as err:
            raise AssertionError(f"{step}, offered by {name}.schedule_space, fails: "
                                 f"{type(err).__name__}: {err}\n"
                                 f"{report(spec, schedule.then(step), kernel)}") from err
        schedule = schedule.then(step)
        note(f"step {len(schedule.steps)}: {step}")
        event(f"applied {name}")
        check_ir(kernel, lambda: report(spec, schedule, kernel))
    return schedule, kernel


def legal_schedules_preserve_results(spec: Spec, seed: int, data) -> None:
    note(f"kernel: {spec!r}")
    event(f"kernel {spec.op}")
    schedule, scheduled = draw_legal_schedule(data, spec, cpu_passes())
    why = lambda: report(spec, schedule, scheduled)  # noqa: E731
    check_replay(spec, schedule, scheduled, why)
    event(f"{len(schedule.steps)} steps")
    check_results(spec, scheduled, seed, why)


@settings(max_examples=70, **CI)
@given(specs(), st.integers(0, 2 ** 16), st.data())
def test_legal_schedules_preserve_results(spec, seed, data):
    legal_schedules_preserve_results(spec, seed, data)


@pytest.mark.slow
@settings(max_examples=1500, **SLOW)
@given(specs(), st.integers(0, 2 ** 16), st.data())
def test_legal_schedules_preserve_results_slow(spec, seed, data):
    legal_schedules_preserve_results(spec, seed, data)


def gpu_schedules_lower(spec: Spec, data) -> None:
    """With the GPU passes in the draw: verified, round-tripped, replayed and lowered to TIR (no
    GPU here to run them)."""
    note(f"kernel: {spec!r}")
    schedule, scheduled = draw_legal_schedule(data, spec, list_passes())
    why = lambda: report(spec, schedule, scheduled)  # noqa: E731
    check_replay(spec, schedule, scheduled, why)
    try:
        to_primfunc(scheduled)
    except Exception as err:
        raise AssertionError(f"lowering to TIR fails: {type(err).__name__}: {err}\n{why()}") from err


@settings(max_examples=40, **CI)
@given(specs(), st.data())
def test_schedules_with_gpu_passes_replay_and_lower(spec, data):
    gpu_schedules_lower(spec, data)


# arbitrary (mostly illegal) steps: ScheduleError, or a kernel that computes the same values

JUNK_NAMES = ("nope", "i0#7", "r9", "")
GPU_AXES = ("blockIdx.x", "threadIdx.x", "threadIdx.y", "warp.x")
SCOPES = ("local", "shared", "global", "register")


def _loops_and_buffers(kernel: Kernel):
    sites = loop_sites(kernel.body)
    refs = [loop_ref(s, sites) for s in sites]
    bare = sorted({s.loop.var for s in sites})  # ambiguous where a name repeats
    buffers = [b.name for b in kernel.params] + [s.buffer.name for s in walk_stmts(kernel.body)
                                                 if isinstance(s, Allocate)]
    return sites, refs, list(dict.fromkeys(refs + bare)), buffers


@st.composite
def loop_list(draw, kernel: Kernel):
    """Loops for reorder / tile: mostly a subset of one nest (a loop and loops inside it), in any
    order, so perfect and imperfect bands and spatial/reduce mixes all come up; sometimes any
    names, repeats included."""
    sites, refs, names, _ = _loops_and_buffers(kernel)
    if not sites or draw(st.integers(0, 5), label="any names") == 0:
        return draw(st.lists(st.sampled_from(names + list(JUNK_NAMES)), min_size=0, max_size=4))
    top = draw(st.sampled_from(sites))
    inside = [s for s in sites if s.index > top.index and top.loop in s.outer]
    chosen = [top] + draw(st.lists(st.sampled_from(inside), max_size=3, unique_by=lambda s: s.index)) \
        if inside else [top]
    order = draw(st.permutations(chosen))
    return [refs[s.index] for s in order]


def value_for(name: str, tp, kernel: Kernel, params: dict):
    """A strategy for a parameter `name` of type `tp` (any pass: plugins' too) on `kernel`."""
    _, _, names, buffers = _loops_and_buffers(kernel)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str:
        if "buffer" in name:
            return st.sampled_from(buffers + ["Nope"])
        if "axis" in name:
            return st.sampled_from(GPU_AXES)
        if "scope" in name:
            return st.sampled_from(SCOPES)
        return st.sampled_from(names + list(JUNK_NAMES)) if names else st.sampled_from(JUNK_NAMES)
    if tp is int:
        return st.one_of(st.integers(1, 8), st.integers(-2, 40))
    if tp is bool:
        return st.booleans()
    if tp is float:
        return st.floats(-4, 4)
    if origin is tuple and args and args[0] is str:
        return loop_list(kernel)
    if origin is tuple and args and args[0] is int:  # a dimension order, mostly a permutation
        return st.integers(1, 5).flatmap(lambda n: st.one_of(
            st.permutations(range(n)).map(list), st.lists(st.integers(-1, 5), max_size=5)))
    if origin is tuple and args and typing.get_origin(args[0]) is tuple:  # factors per loop
        level = st.lists(st.one_of(st.integers(1, 9), st.integers(-1, 40)), min_size=1, max_size=2)
        return st.lists(level, min_size=0, max_size=4)
    return st.nothing()  # an unknown parameter type: such a pass only gets legal steps


@st.composite
def any_step(draw, kernel: Kernel, passes: dict):
    """A step of any pass with arbitrary (type-correct) parameters, or now and then one from its
    schedule space, so that the kernel grows tiles and annotations to stumble over."""
    name = draw(st.sampled_from(list(passes)), label="pass")
    cls = passes[name]
    if draw(st.integers(0, 3), label="from the space") == 0:
        space = cls.schedule_space(kernel)
        if space:
            return draw(st.sampled_from(space))
    params = {}
    for pname, tp in cls.parameters().items():
        params[pname] = draw(value_for(pname, tp, kernel, params), label=pname)
    if name == "tile" and draw(st.booleans(), label="matching factors"):  # mostly as many as loops
        params["factors"] = (params["factors"] + [[2]] * 4)[:len(params["loops"])]
    return cls.from_params(params)


class Stepper:
    """Applies steps one at a time: a refused step (ScheduleError) is skipped, any other exception
    fails; an accepted one must give a kernel that verifies and round-trips."""

    def __init__(self, spec: Spec):
        self.spec, self.kernel = spec, canonical_loops(spec.kernel())
        self.accepted, self.refused = Schedule(), []

    def step(self, step) -> None:
        try:
            out = step.apply(self.kernel)
        except ScheduleError as err:
            self.refused.append(f"{step}  ->  {err}")
            event(f"refused {step.name}")
            note(f"refused: {step}: {err}")
            return
        except Exception as err:
            raise AssertionError(
                f"{step} raised {type(err).__name__} instead of ScheduleError: {err}\n"
                + report(self.spec, self.accepted.then(step), self.kernel,
                         "(the kernel shown is the one the step was applied to)")) from err
        self.accepted, self.kernel = self.accepted.then(step), out
        event(f"accepted {step.name}")
        note(f"accepted: {step}")
        check_ir(out, self.why)

    def why(self) -> str:
        return report(self.spec, self.accepted, self.kernel,
                      "refused steps:\n  " + "\n  ".join(self.refused or ["none"]))

    def finish(self, seed: int) -> None:
        """What was accepted replays, and computes what the unscheduled kernel does."""
        if not self.accepted.steps:
            return
        check_replay(self.spec, self.accepted, self.kernel, self.why)
        if gpu_bound(self.kernel):
            to_primfunc(self.kernel)
        else:
            check_results(self.spec, self.kernel, seed, self.why)


def arbitrary_steps_are_refused_or_correct(spec: Spec, seed: int, data, passes: dict) -> None:
    note(f"kernel: {spec!r}")
    run = Stepper(spec)
    for _ in range(data.draw(st.sampled_from(range(1, 9)), label="steps")):
        run.step(data.draw(any_step(run.kernel, passes), label="step"))
    run.finish(seed)


@settings(max_examples=70, **CI)
@given(specs(), st.integers(0, 2 ** 16), st.data())
def test_arbitrary_steps_are_refused_or_correct(spec, seed, data):
    arbitrary_steps_are_refused_or_correct(spec, seed, data, list_passes())


@pytest.mark.slow
@settings(max_examples=1500, **SLOW)
@given(specs(), st.integers(0, 2 ** 16), st.data())
def test_arbitrary_steps_are_refused_or_correct_slow(spec, seed, data):
    arbitrary_steps_are_refused_or_correct(spec, seed, data, list_passes())


# Counterexamples these properties found, kept as plain regression cases (minimal: the kernel and
# the pipeline that broke a pass). Each step must be refused with ScheduleError or keep the results.

MATMUL_1x3x4 = Spec(inputs=(("A", (1, 3)), ("B", (3, 4))), nodes=(("MatMul", ("A", "B"), ()),), pick=0)
REDUCE_MEAN_4 = Spec(inputs=(("X", (4,)),), nodes=(("ReduceMean", ("X",), (("axes", (0,)), ("keepdims", 0))),),
                     pick=0)
CONV_1D = Spec(inputs=(("X", (1, 1, 3)), ("W", (2, 1, 1))),
               nodes=(("Conv", ("X", "W"), (("kernel_shape", (1,)),)),), pick=0)
PREFIX_SUM = Spec(ir="kernel prefix(X: f32[5]) -> (Y: f32[5]) {\n  Y[0] = X[0]\n"
                     "  for i in 0..4 { Y[i + 1] = Y[i] + X[i + 1] }\n}")
STENCIL = Spec(ir="kernel stencil(X: f32[2, 4]) -> (Y: f32[2, 6]) {\n  for i in 0..2 {\n"
                  "    for j in 0..4 { Y[i, j + 1] = X[i, j] }\n"
                  "    for j in 0..4 { Y[i, j + 1] = Y[i, j] + Y[i, j + 2] }\n  }\n}")

COUNTEREXAMPLES = [
    # an empty band: IndexError in _band instead of ScheduleError
    pytest.param(MATMUL_1x3x4, "tile([], [])", id="tile-empty"),
    pytest.param(MATMUL_1x3x4, "reorder([])", id="reorder-empty"),
    # cache_write of a buffer allocated inside the loop (offered by its schedule space): the
    # write-back lands outside that buffer's allocation
    pytest.param(REDUCE_MEAN_4, "cache_write(Out, r0); cache_write(Out_local, r0)", id="cache_write-local"),
    # compute_at of a local copy (cache_read / cache_write) at a loop outside the loops the copy's
    # producer uses: the moved producer reads undefined loop variables
    pytest.param(MATMUL_1x3x4, "split(i1, 2); cache_write(Out, i1_o); compute_at(Out_local, i0)",
                 id="compute_at-local-cache_write"),
    pytest.param(CONV_1D, "cache_read(W, i1); compute_at(W_local, i0)", id="compute_at-local-cache_read"),
    # default(loop) vectorizes a loop carrying a dependence (it checks only the stores' indices)
    pytest.param(PREFIX_SUM, "default(i0)", id="default-recurrence"),
    pytest.param(STENCIL, "default(i0)", id="default-stencil"),
]


@pytest.mark.parametrize("spec,pipeline", COUNTEREXAMPLES)
def test_counterexamples(spec, pipeline):
    run = Stepper(spec)
    for step in parse_pipeline(pipeline).steps:
        run.step(step)
    run.finish(seed=0)
