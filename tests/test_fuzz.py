"""Fuzzing: mutated bytes for every file Nestor reads (ONNX models, compiled artifacts, records
databases, cost models) and random or mutated text for its parsers (the IR, schedule pipelines,
schedule JSON). Every outcome is a success or a NestorError, never another exception, and the
file read is left as it was.

The default run tries FUZZ_EXAMPLES examples per fuzzer, derandomized (the same ones each run).
A longer, random run: `NESTOR_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py`.
"""
import hashlib
import io
import json
import os
import sqlite3
import string
import warnings
import zipfile

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor.autotune.records import Records
from nestor.costmodel.model import CostModel
from nestor.ir import parse_kernel, print_kernel
from nestor.ir.errors import NestorError
from nestor.passes import Schedule, canonical_loops, parse_pipeline
from nestor.passes.model_schedule import read_model_schedule
from tests.test_gpu_runtime import tiny_model

LONG = int(os.environ.get("NESTOR_FUZZ_EXAMPLES", "0"))
FUZZ_EXAMPLES = LONG or 60
fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

KERNEL = parse_kernel("""
kernel mm(A: f32[16, 8], B: f32[8, 12]) -> (C: f32[16, 12]) {
  for i in 0..16 { for j in 0..12 { C[i, j] = 0.0 } }
  for i in 0..16 { for j in 0..12 { for k in 0..8 reduce { C[i, j] += A[i, k] * B[k, j] } } }
}""")
PIPELINE = "split(i2, 4); reorder(i2_o, i3, r0, i2_i); vectorize(i2_i); parallel(i2_o); unroll(r0)"


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` with 1-4 mutations: a byte flipped or set, a cut, random bytes inserted, a range
    deleted, a range repeated."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "repeat"]))
        pos = draw(st.integers(0, max(len(b) - 1, 0)))
        if kind == "flip" and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and b:
            b[pos] = draw(st.sampled_from([0, 1, 0x7f, 0x80, 0xff, draw(st.integers(0, 255))]))
        elif kind == "cut":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del b[pos:pos + draw(st.integers(1, 64))]
        elif kind == "repeat":
            b[pos:pos] = b[pos:pos + draw(st.integers(1, 64))]
    return bytes(b)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def only_nestor_errors(read, path) -> None:
    """`read(path)` succeeds or raises a NestorError, and leaves the file as it was."""
    before = _digest(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a skipped records row warns: fine
        try:
            read(str(path))
        except NestorError as err:
            assert str(err).strip(), "an empty error message"
    assert _digest(path) == before, f"{read.__name__} modified the file it read"


# ---- files ----

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files of each kind, as bytes: the seeds the fuzzers mutate."""
    d = tmp_path_factory.mktemp("seeds")
    onnx_bytes = tiny_model().SerializeToString()
    (d / "m.onnx").write_bytes(onnx_bytes)
    artifact = d / "m.nestor"
    nestor.compile(str(d / "m.onnx")).save(str(artifact))
    records = d / "r.sqlite"
    with Records(records) as r:
        r.add_task("t0", print_kernel(KERNEL), 2 * 16 * 12 * 8)
        r.add("t0", "llvm", parse_pipeline(PIPELINE).to_json(), 1e-5, [1e-5, 2e-5])
        r.add("t0", "llvm", Schedule().to_json(), None, [], "crashed (signal 11, SIGSEGV)")
    model = CostModel(seed=0)
    kernels = [parse_pipeline(p).apply(KERNEL) for p in ("", PIPELINE, "vectorize(i1)", "parallel(i2)")]
    model.update(kernels, [4e-5, 1e-5, 2e-5, 3e-5], ["t0"] * 4)
    model.save(str(d / "m.costmodel"))
    return {"onnx": onnx_bytes, "nestor": artifact.read_bytes(), "records": records.read_bytes(),
            "costmodel": (d / "m.costmodel").read_bytes()}


def _import(path):
    nestor.import_onnx(path)


def _load_artifact(path):
    nestor.load(path)


def _read_records(path):
    with Records(path, create=False) as r:
        for task in r.tasks():
            r.task_kernel(task), r.task_flops(task)
        found = r.records()
        for rec in found:
            r.best(rec.task, rec.target), r.latest(rec.task, rec.target), r.measured(rec.task, rec.target)
        r.meta_items()


def _load_cost_model(path):
    model = CostModel.load(path)
    model.predict([KERNEL])


@pytest.mark.parametrize("kind, read", [("onnx", _import), ("nestor", _load_artifact),
                                        ("records", _read_records), ("costmodel", _load_cost_model)])
def test_mutated_files(files, tmp_path, kind, read):
    path = tmp_path / f"fuzzed.{kind}"

    @fuzz
    @given(data=mutated(files[kind]))
    def check(data):
        for leftover in tmp_path.iterdir():
            leftover.unlink()
        path.write_bytes(data)
        only_nestor_errors(read, path)

    check()


SQL_VALUES = st.one_of(st.none(), st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(), st.text(max_size=20),
                       st.binary(max_size=20), st.sampled_from(["[]", "[1e-05]", '["x"]', "{}", "nan", "[null]"]))


@fuzz
@given(row=st.tuples(*[SQL_VALUES if n in (3, 5) else SQL_VALUES.filter(lambda v: v is not None and v == v)  # NOT NULL (NaN is stored as NULL)
                       for n in range(9)]))
def test_records_rows_of_any_values(files, tmp_path_factory, row):
    """A row whose columns hold any SQLite value (a hand edit, another program's bug): the reader
    returns it well typed or skips it."""
    path = tmp_path_factory.mktemp("rows") / "r.sqlite"
    path.write_bytes(files["records"])
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO records (task, target, schedule, median, repeats, error, timestamp, version, "
                   "device) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    db.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Records(path, create=False) as r:
            found = r.records() + r.latest("t0", "llvm") + r.latest(str(row[0]), str(row[1]))
    for rec in found:
        assert isinstance(rec.schedule, str) and isinstance(rec.task, str) and isinstance(rec.target, str)
        assert rec.median is None or isinstance(rec.median, float)
        assert all(isinstance(t, float) for t in rec.repeats)
        assert rec.error is None or isinstance(rec.error, str)
        assert isinstance(rec.timestamp, float) and isinstance(rec.version, str) and isinstance(rec.device, str)
        assert rec.fastest is None or isinstance(rec.fastest, float)


def many_ops_model() -> onnx.ModelProto:
    """One model of many ops with the attributes, constant inputs and shapes the fuzzer changes."""
    f = numpy_helper.from_array
    inits = [f(np.ones((6, 8), np.float32), "G"), f(np.ones(6, np.float32), "GB"), f(np.array([0, 1]), "st"),
             f(np.array([2, 4]), "en"), f(np.array([0, 1]), "ax"), f(np.array([0, 2, 1]), "idx"),
             f(np.array([0, 0, 1, 1]), "pads"), f(np.array([2, 1]), "reps"), f(np.array([1]), "ua"),
             f(np.ones(3, np.float32), "sc"), f(np.zeros(3, np.float32), "bi"), f(np.ones(8, np.float32), "sc8"),
             f(np.ones((3, 2, 2, 2), np.float32), "CW"), f(np.array([3, 5]), "spl"), f(np.array([1, -1]), "sh")]
    node = helper.make_node
    nodes = [node("Gemm", ["A", "G", "GB"], ["g"], transB=1), node("Slice", ["g", "st", "en", "ax"], ["s"]),
             node("Gather", ["A", "idx"], ["ga"], axis=0), node("Pad", ["A", "pads"], ["p"], mode="constant"),
             node("Tile", ["A", "reps"], ["t"]), node("Unsqueeze", ["A", "ua"], ["u"]),
             node("Split", ["A", "spl"], ["sp0", "sp1"], axis=1), node("ReduceSum", ["A", "ax"], ["rs"], keepdims=0),
             node("BatchNormalization", ["I", "sc", "bi", "bi", "sc"], ["bn"]),
             node("AveragePool", ["bn"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1]),
             node("ConvTranspose", ["ap", "CW"], ["ct"], strides=[2, 2], output_padding=[1, 1]),
             node("Conv", ["I", "CW"], ["cv"], pads=[1, 1, 0, 0], dilations=[1, 2], group=1),
             node("MaxPool", ["cv"], ["mp"], kernel_shape=[2, 2], strides=[1, 1]),
             node("Flatten", ["ct"], ["fl"], axis=1), node("Expand", ["sc", "reps"], ["ex"]),
             node("LeakyRelu", ["fl"], ["lr"], alpha=0.1), node("ArgMax", ["A"], ["am"], axis=1, keepdims=1),
             node("Cast", ["am"], ["ca"], to=TensorProto.FLOAT), node("Where", ["wc", "A", "A"], ["wh"]),
             node("Softmax", ["A"], ["sm"], axis=-1), node("Transpose", ["mp"], ["tr"], perm=[0, 2, 3, 1]),
             node("Reshape", ["tr", "sh"], ["rh"]), node("Concat", ["A", "wh"], ["cc"], axis=0),
             node("LayerNormalization", ["A", "sc8", "sc8"], ["ln"], axis=-1)]
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [4, 8]),
              helper.make_tensor_value_info("I", TensorProto.FLOAT, [1, 3, 7, 7]),
              helper.make_tensor_value_info("wc", TensorProto.BOOL, [4, 8])]
    outputs = ["s", "ga", "p", "t", "u", "sp0", "sp1", "rs", "lr", "ex", "ca", "sm", "rh", "cc", "ln"]
    model = helper.make_model(helper.make_graph(nodes, "many", inputs, [
        helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs], inits),
        opset_imports=[helper.make_opsetid("", 18)])
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type for v in list(inferred.value_info) + list(inferred.output)}
    for o in model.graph.output:
        o.type.CopyFrom(types[o.name])
    return model


MANY_OPS = many_ops_model()
assert nestor.import_onnx(MANY_OPS).nodes  # the fuzzer starts from a model that imports
INTS = st.sampled_from([0, 1, -1, 2, 3, -2, 5, 7, 100, 2 ** 31, -(2 ** 40)])


@st.composite
def model_changes(draw) -> onnx.ModelProto:
    """MANY_OPS with 1-3 changes: an attribute, an input's dimension, a constant's value or
    shape, a node's input, or the opset."""
    model = onnx.ModelProto.FromString(MANY_OPS.SerializeToString())
    g = model.graph
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["attribute", "dimension", "constant", "input", "opset"]))
        if kind == "attribute":
            a = draw(st.sampled_from([a for n in g.node for a in n.attribute]))
            if a.ints:
                a.ints[draw(st.integers(0, len(a.ints) - 1))] = draw(INTS)
                if draw(st.booleans()):
                    del a.ints[-1]
            elif a.type == onnx.AttributeProto.INT:
                a.i = draw(INTS)
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = draw(st.sampled_from([0.0, -1.0, float("inf"), float("nan"), 1e30]))
            elif a.type == onnx.AttributeProto.STRING:
                a.s = draw(st.sampled_from([b"", b"reflect", b"edge", b"wrap", b"x"]))
        elif kind == "dimension":
            dims = draw(st.sampled_from(g.input)).type.tensor_type.shape.dim
            dims[draw(st.integers(0, len(dims) - 1))].dim_value = draw(st.sampled_from([0, 1, 2, 5, 9]))
        elif kind == "constant":
            t = draw(st.sampled_from(g.initializer))
            value = numpy_helper.to_array(t).copy()
            if value.dtype == np.int64 and value.size and draw(st.booleans()):
                value.flat[draw(st.integers(0, value.size - 1))] = draw(INTS)
            else:
                shape = list(value.shape)
                shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from([0, 1, 2, 5]))
                value = np.ones(shape, value.dtype)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
        elif kind == "input":
            n = draw(st.sampled_from(g.node))
            if len(n.input) > 1 and draw(st.booleans()):
                del n.input[-1]
            else:
                n.input[draw(st.integers(0, len(n.input) - 1))] = draw(st.sampled_from(["A", "I", "wc", "sc", "ax", ""]))
        else:
            model.opset_import[0].version = draw(st.sampled_from([7, 11, 13, 18, 21]))
    return model


@fuzz
@given(model=model_changes())
def test_onnx_models_with_changed_attributes_shapes_and_constants(model):
    """Past the protobuf: what the checker lets through reaches shape inference and the ops."""
    try:
        nestor.import_onnx(model)
    except NestorError as err:
        assert str(err).strip()


def _one_node_model(node, inputs, output) -> onnx.ModelProto:
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(n, t, [4, 4]) for n, t in inputs],
                              [helper.make_tensor_value_info(node.output[0], output, [4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("node, inputs, output, match", [
    # found by the fuzzers: a TypeError in the lowering, an IndexError, a ValueError
    (helper.make_node("LeakyRelu", ["B"], ["y"]), [("B", TensorProto.BOOL)], TensorProto.FLOAT,
     "LeakyRelu.*unsupported type"),
    (helper.make_node("Transpose", ["X"], ["y"], perm=[1]), [("X", TensorProto.FLOAT)], TensorProto.FLOAT,
     "perm \\[1\\] is not an order of the input.s 2 axes"),
    (helper.make_node("Equal", ["S", "S"], ["y"]), [("S", TensorProto.STRING)], TensorProto.BOOL,
     "unsupported element type"),
])
def test_models_the_fuzzers_found_are_nestor_errors(node, inputs, output, match):
    with pytest.raises(NestorError, match=match):
        nestor.import_onnx(_one_node_model(node, inputs, output))


def test_an_initializer_whose_data_does_not_fill_its_dims_is_a_model_error():
    w = numpy_helper.from_array(np.ones(16, np.float32), "W")
    w.dims[:] = [1, 8]
    graph = helper.make_graph([helper.make_node("Add", ["X", "W"], ["y"])], "init",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    with pytest.raises(NestorError, match="initializer 'W' cannot be read"):
        nestor.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("damage", [(b"'shape': (", b"'shape': (("),   # tokenize.TokenError
                                    (b"'descr'", b"'de\x00cr'")])     # SyntaxError: a null byte
@pytest.mark.parametrize("kind, archive, member", [("costmodel", None, "x.npy"),
                                                   ("nestor", "constants.npz", "c0.npy")])
def test_npy_headers_numpy_cannot_parse(files, tmp_path, damage, kind, archive, member):
    """Found by the fuzzers: numpy's header parser lets its tokenizer's errors through."""
    outer = files[kind]
    inner = outer if archive is None else zipfile.ZipFile(io.BytesIO(outer)).read(archive)
    npy = zipfile.ZipFile(io.BytesIO(inner)).read(member)
    assert damage[0] in npy[:128]
    inner = _zip_with(inner, member, npy.replace(damage[0], damage[1], 1))
    path = tmp_path / f"damaged.{kind}"
    path.write_bytes(inner if archive is None else _zip_with(outer, archive, inner))
    with pytest.raises(NestorError, match=f"damaged\\.{kind}"):
        (CostModel.load if kind == "costmodel" else nestor.load)(str(path))


def test_conv_of_group_zero_is_a_nestor_error():
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["X", "W"], ["y"], group=0)], "conv",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    with pytest.raises(NestorError, match="Conv.*group 0 does not divide its 4 channels"):
        nestor.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_concat_of_empty_tensors_imports():
    """Its kernel is an empty sequence, which the elementwise fusion must pass over."""
    graph = helper.make_graph([helper.make_node("Concat", ["X", "X"], ["y"], axis=0)], "empty",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [0, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 8])])
    (node,) = nestor.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])).nodes
    assert node.kernel.outputs[0].shape == (0, 8)


@pytest.mark.slow
def test_every_onnx_node_test_case_imports_or_gives_a_nestor_error():
    """ONNX's 1,884 node test cases (valid models, many of ops or types Nestor does not take)."""
    from nestor.conformance import node_cases
    for case in node_cases():
        try:
            nestor.import_onnx(case.model)
        except NestorError:
            pass


def _zip_with(data: bytes, name: str, content: bytes) -> bytes:
    """The zip archive `data` with entry `name` replaced by `content`."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries[name] = content
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, c in entries.items():
            z.writestr(n, c)
    return out.getvalue()


@pytest.mark.parametrize("entry", ["plan.json", "constants.npz"])
def test_artifacts_with_a_mutated_entry(files, tmp_path, entry):
    """A whole zip whose plan or constants are damaged: reaches the checks behind the zip's."""
    with zipfile.ZipFile(io.BytesIO(files["nestor"])) as z:
        original = z.read(entry)
    path = tmp_path / "fuzzed.nestor"

    @fuzz
    @given(content=mutated(original))
    def check(content):
        path.write_bytes(_zip_with(files["nestor"], entry, content))
        only_nestor_errors(_load_artifact, path)

    check()


# ---- text ----

IR_TEXT = print_kernel(parse_pipeline(PIPELINE).apply(KERNEL))
IR_ALPHABET = string.ascii_letters[:12] + string.digits + " \n{}[]()<>,.:;=+-*/%!&|#" + "ïé\x00"
PIPE_ALPHABET = "ijr0123456789_o., ;()[]=-#" + "splitreodvcuaz"


def text_near(seed: str, alphabet: str, max_size: int):
    """Random text over `alphabet`, or `seed` with its bytes mutated."""
    return st.one_of(st.text(alphabet, max_size=max_size),
                     mutated(seed.encode()).map(lambda b: b.decode("utf-8", "replace")))


@fuzz
@given(text=text_near(IR_TEXT, IR_ALPHABET, 200))
def test_ir_parser_on_random_text(text):
    try:
        kernel = parse_kernel(text)
    except NestorError:
        return
    assert parse_kernel(print_kernel(kernel)) == kernel


@fuzz
@given(text=text_near(PIPELINE, PIPE_ALPHABET, 80))
def test_pipelines_parse_and_apply_or_give_a_nestor_error(text):
    try:
        schedule = parse_pipeline(text)
        kernel = schedule.apply(KERNEL, debug=True)
    except NestorError:
        return
    assert Schedule.from_json(schedule.to_json()).apply(KERNEL) == kernel


SCHEDULE_JSON = parse_pipeline(PIPELINE).to_json()


@fuzz
@given(text=mutated(SCHEDULE_JSON.encode()).map(lambda b: b.decode("utf-8", "replace")))
def test_schedule_json_from_records(text):
    """A records row's schedule, damaged: read as the tuner and the compiler replay it."""
    try:
        Schedule.from_json(text).apply(canonical_loops(KERNEL))
    except NestorError:
        pass


@fuzz
@given(data=mutated(json.dumps({"kernels": {"mm": "vectorize(i1)", "1254cbea": [
    {"pass": "parallel", "params": {"loop": "i0"}}]}}).encode()))
def test_model_schedule_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sched") / "s.json"
    path.write_bytes(data)
    only_nestor_errors(read_model_schedule, path)
