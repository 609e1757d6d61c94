"""Bad input gets one clear error naming what is wrong."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nestor
from nestor.cli import main
from nestor.frontend import UnsupportedOpError


def tiny_model(op="Relu", opset=17, **attrs):
    node = helper.make_node(op, ["x"], ["y"], name="the_node", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_names_op_node_and_opset():
    node = helper.make_node("RandomUniformLike", ["x"], ["y"], name="rand_node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match=r"RandomUniformLike.*rand_node.*opset 17"):
        nestor.compile(model)


def test_missing_model_file():
    with pytest.raises(nestor.ModelError, match="no such file"):
        nestor.compile("/nonexistent/model.onnx")


def test_garbage_model_file(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xfe")
    with pytest.raises(nestor.ModelError, match="bad.onnx"):
        nestor.compile(str(path))


def test_model_failing_onnx_checks():
    model = tiny_model()
    model.graph.node[0].input[0] = "undefined_tensor"
    with pytest.raises(nestor.ModelError, match="checks"):
        nestor.compile(model)


def test_wrong_input_shape_and_dtype():
    compiled = nestor.compile(tiny_model())
    with pytest.raises(nestor.InputError, match=r"'x'.*shape \(2, 3\)"):
        compiled.run({"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(nestor.InputError, match=r"'x'.*float32"):
        compiled.run({"x": np.zeros((2, 3), np.float64)})
    with pytest.raises(nestor.InputError, match="missing"):
        compiled.run({})


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "missing.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.onnx" in err
    path = tmp_path / "m.onnx"
    onnx.save(tiny_model(), str(path))
    out = tmp_path / "m.nestor"
    assert main(["compile", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", str(out), "--input", f"x={tmp_path / 'nope.npy'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.npy" in err
    np.save(tmp_path / "wrong.npy", np.zeros((5,), np.float32))
    assert main(["run", str(out), "--input", f"x={tmp_path / 'wrong.npy'}"]) == 1
    assert "shape" in capsys.readouterr().err


# --- the command line: every bad input is one line, exit 2 (usage) or 1, before any work -------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small files of every kind the commands take, good and bad."""
    from nestor.ir import print_kernel
    from tests.test_passes import _onnx
    d = tmp_path_factory.mktemp("bad")
    onnx.save(tiny_model(), str(d / "m.onnx"))
    dynamic = tiny_model()
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(dynamic, str(d / "dyn.onnx"))
    nestor.compile(str(d / "m.onnx")).save(str(d / "m.nestor"))
    (d / "mm.ir").write_text(print_kernel(_onnx("MatMul", {"X": [8, 8], "W": [8, 8]}, [8, 8])))
    (d / "empty.ir").write_text("")
    (d / "latin1.ir").write_bytes(b"kernel caf\xe9() {}")
    (d / "bad.ir").write_text("kernel oops(")
    (d / "text.txt").write_text("hello")
    (d / "adir").mkdir()
    (d / "afile").write_text("a file, not a folder")
    np.save(d / "x.npy", np.ones((2, 3), np.float32))
    np.save(d / "x5.npy", np.ones(5, np.float32))
    np.save(d / "x64.npy", np.ones((2, 3), np.float64))
    np.savez(d / "xs.npz", x=np.ones((2, 3), np.float32))
    header = bytearray((d / "x.npy").read_bytes())
    header[20:30] = b"(((((((((("  # the dict header no longer parses (a tokenize error, not a ValueError)
    (d / "xbad.npy").write_bytes(header)
    return d


# (argv with {d} for the files' folder, exit status, a piece of the one line)
BAD_COMMANDS = [
    # values: usage errors, exit 2
    ("tune {d}/mm.ir --trials -3", 2, "argument --trials: must be at least 1, not -3"),
    ("tune {d}/mm.ir --trials 0", 2, "must be at least 1, not 0"),
    ("compile {d}/m.onnx --tune --trials -3", 2, "must be at least 1"),
    ("tune {d}/mm.ir --time-budget ''", 2, "'' is not a positive duration"),
    ("tune {d}/mm.ir --time-budget inf", 2, "'inf' is not a positive duration"),
    ("tune {d}/mm.ir --time-budget nan", 2, "'nan' is not a positive duration"),
    ("tune {d}/mm.ir --time-budget=-5s", 2, "'-5s' is not a positive duration"),
    ("tune {d}/mm.ir --time-budget -5s", 2, "'-5s' is not a positive duration"),
    ("tune {d}/mm.ir --time-budget 1e400", 2, "'1e400' is not a positive duration"),
    ("bench models --models nope", 2, "--models: unknown model(s) ['nope']"),
    ("bench kernels --kernels nope", 2, "--kernels: unknown kernel(s) ['nope']"),
    ("tune {d}/mm.ir --time-budget 0", 2, "'0' is not a positive duration"),
    ("tune {d}/mm.ir --time-budget 10x", 2, "'10x' is not a positive duration"),
    ("bench models --time-budget nan", 2, "'nan' is not a positive duration"),
    ("bench kernels --trials -3", 2, "must be at least 1, not -3"),
    ("bench models --repeat 0", 2, "must be at least 1, not 0"),
    ("bench costmodel", 2, "bench costmodel needs --records"),
    ("run {d}/m.nestor --repeat 0", 2, "must be at least 1, not 0"),
    ("run {d}/m.nestor --repeat abc", 2, "argument --repeat: 'abc' is not a whole number"),
    ("run {d}/m.nestor --profile -1", 2, "must be at least 1, not -1"),
    ("compile {d}/m.onnx --trials 5", 2, "--trials needs --tune"),
    ("compile {d}/m.onnx --time-budget 5s", 2, "--time-budget needs --tune"),
    ("compile {d}/m.onnx --cost-model {d}/cm.npz", 2, "--cost-model needs --tune"),
    ("compile {d}/m.onnx --rpc-tracker 127.0.0.1:9190 --rpc-key k", 2, "--rpc-tracker needs --tune"),
    ("run {d}/m.nestor --input x.npy", 2, "'x.npy' is not NAME=FILE.npy"),
    ("run {d}/m.nestor --input x={d}/x.npy --input x={d}/x.npy", 2, "--input names 'x' twice"),
    ("run {d}/m.nestor --input-shape x=2,3", 2, "--input-shape applies to an ONNX model"),
    ("run {d}/m.nestor --schedule none", 2, "--schedule applies to an ONNX model"),
    ("tune {d}/mm.ir --input-shape x=2,3", 2, "--input-shape applies to an ONNX model"),
    ("ir {d}/dyn.onnx --input-shape x=a,b", 2, "'x=a,b' is not NAME=D0,D1,..."),
    ("ir {d}/dyn.onnx --input-shape x=-1,3", 2, "dimensions are at least 1"),
    ("ir {d}/dyn.onnx --input-shape x=0,3", 2, "dimensions are at least 1"),
    ("ir {d}/dyn.onnx --input-shape x=4,3 --input-shape x=5,3", 2, "--input-shape names 'x' twice"),
    ("compile {d}/m.onnx -o {d}/out.onnx", 2, "name it .nestor"),
    # paths to read
    ("compile {d}/missing.onnx", 1, "model '{d}/missing.onnx' does not exist"),
    ("compile {d}/adir", 1, "model '{d}/adir' is a directory"),
    ("bench kernels --via-tvm --target cuda", 1, "--via-tvm: Nestor tunes through MetaSchedule for CPU (llvm) targets only"),
    ("run {d}/missing.nestor", 1, "does not exist"),
    ("run {d}/adir", 1, "is a directory"),
    ("tune {d}/missing.ir", 1, "does not exist"),
    ("compile {d}/m.onnx --records {d}/typo.sqlite", 1, "records file '{d}/typo.sqlite' does not exist"),
    ("compile {d}/m.onnx --records {d}/adir", 1, "records file '{d}/adir' is a directory"),
    ("bench costmodel --records {d}/typo.sqlite", 1, "does not exist"),
    ("tune {d}/mm.ir --pretrained {d}/missing.sqlite", 1, "pretraining file '{d}/missing.sqlite' does not exist"),
    ("compile {d}/m.onnx --schedule {d}/missing.json", 1, "schedule file '{d}/missing.json' does not exist"),
    ("run {d}/m.nestor --input x={d}/missing.npy", 1, "--input 'x' '{d}/missing.npy' does not exist"),
    ("run {d}/m.nestor --input x={d}/adir", 1, "is a directory"),
    # paths to write: checked before compiling or tuning
    ("compile {d}/m.onnx -o {d}/nodir/m.nestor", 1, "no such directory"),
    ("compile {d}/m.onnx -o {d}/afile/m.nestor", 1, "no such directory"),
    ("compile {d}/m.onnx -o {d}/adir", 1, "-o '{d}/adir' is a directory"),
    ("compile {d}/m.onnx --tune --records {d}/r.sqlite -o {d}/nodir/m.nestor", 1, "no such directory"),
    ("tune {d}/mm.ir --records {d}/nodir/r.sqlite", 1, "no such directory"),
    ("tune {d}/mm.ir --records {d}/adir", 1, "is a directory"),
    ("tune {d}/mm.ir --cost-model {d}/nodir/cm.npz", 1, "no such directory"),
    ("run {d}/m.nestor --save-outputs {d}/nodir/o.npz", 1, "no such directory"),
    ("run {d}/m.nestor --save-outputs {d}/adir", 1, "is a directory"),
    ("run {d}/m.nestor --input x={d}/x.npy --save-outputs {d}/x.npy", 1, "is also an input"),
    # files of the wrong kind
    ("compile {d}/m.nestor", 1, "is a compiled model; this command takes .onnx"),
    ("ir {d}/m.nestor", 1, "is a compiled model"),
    ("run {d}/mm.ir", 1, "is a kernel; this command takes .nestor or .onnx"),
    ("compile {d}/text.txt", 1, "is not a valid ONNX model"),
    ("run {d}/text.txt", 1, "text.txt"),
    ("tune {d}/empty.ir", 1, "'{d}/empty.ir' is empty"),
    ("tune {d}/latin1.ir", 1, "is not UTF-8 text"),
    ("tune {d}/bad.ir", 1, "'{d}/bad.ir', line 1, column 13: unexpected end of input"),
    ("compile {d}/m.onnx --records {d}/text.txt", 1, "is not a Nestor records database"),
    ("tune {d}/mm.ir --pretrained {d}/text.txt", 1, "is neither a records database (.sqlite) nor a saved cost model"),
    ("compile {d}/m.onnx --schedule {d}/text.txt", 1, "text.txt"),
    ("run {d}/m.nestor --input x={d}/text.txt", 1, "is not a NumPy .npy file"),
    ("run {d}/m.nestor --input x={d}/xbad.npy", 1, "--input 'x': cannot read"),
    ("run {d}/m.nestor --input x={d}/xs.npz", 1, "is an .npz archive"),
    # inputs and shapes
    ("run {d}/m.nestor --input nope={d}/x.npy", 1, "--input 'nope': the model's inputs are ['x']"),
    ("run {d}/m.nestor --input x={d}/x5.npy", 1, "input 'x' must have shape (2, 3), got (5,)"),
    ("run {d}/m.nestor --input x={d}/x64.npy", 1, "input 'x' must have dtype float32, got float64"),
    ("ir {d}/m.onnx --input-shape nope=1,2", 1, "a shape is given for 'nope', which the model does not take"),
    ("ir {d}/m.onnx --input-shape x=4,3", 1, "changes dimension 0"),
    ("ir {d}/dyn.onnx --input-shape x=4", 1, "has rank 2"),
    ("ir {d}/dyn.onnx", 1, "has dynamic shape"),
    # schedules
    ("compile {d}/m.onnx --schedule 'bind(i0, blockIdx.x)' -o {d}/b.nestor", 1,
     "loop i0: bound to blockIdx.x, but the target (llvm) is a CPU"),
    ("ir {d}/m.onnx --schedule 'frobnicate(i0)'", 1, "frobnicate"),
    ("ir {d}/m.onnx --schedule 'split(i0, '", 1, "pipeline, column"),
    ("ir {d}/m.onnx --schedule 'split(zz, 4)'", 1, "loop zz: no such loop"),
    ("ir {d}/m.onnx --node nope", 1, "no kernel node named 'nope'"),
]


@pytest.mark.parametrize("command, status, message", BAD_COMMANDS, ids=[c[0].replace("{d}/", "") for c in BAD_COMMANDS])
def test_a_bad_command_line_is_one_line(files, capsys, command, status, message):
    import shlex
    before = sorted(p.name for p in files.iterdir())
    assert main(shlex.split(command.format(d=files))) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message.format(d=files) in err, err
    assert sorted(p.name for p in files.iterdir()) == before   # nothing written, nothing created


def test_compile_never_writes_over_its_input_model(tmp_path, capsys):
    path = tmp_path / "model.bin"
    onnx.save(tiny_model(), str(path))
    data = path.read_bytes()
    assert main(["compile", str(path), "-o", str(path)]) == 1
    assert "is also an input; it would be overwritten" in capsys.readouterr().err
    assert path.read_bytes() == data


def test_broken_pipe_is_quiet():
    import subprocess
    import sys
    done = subprocess.run(f"'{sys.executable}' -m nestor.cli passes | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "built-in passes:" and done.stderr == ""


def test_a_warning_is_one_line(tmp_path, capsys):
    """A records row that cannot be read is skipped with one warning line; compiling goes on."""
    import sqlite3
    from nestor.autotune.budget import Budget
    from nestor.autotune.tune import tune_graph
    path = tmp_path / "m.onnx"
    onnx.save(tiny_model(), str(path))
    records = tmp_path / "r.sqlite"
    tune_graph(nestor.import_onnx(str(path)), Budget(trials=2), records_path=str(records), show_progress=False)
    with sqlite3.connect(records) as db:
        db.execute("UPDATE records SET schedule = '{not json'")
    capsys.readouterr()
    assert main(["compile", str(path), "--records", str(records), "-o", str(tmp_path / "m.nestor")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("nestor: warning: ") and "unreadable" in err and "Traceback" not in err
    assert all(line.startswith("nestor: warning: ") for line in err.splitlines())


# --- the Python API: arguments of the wrong type or value are NestorErrors naming the argument -----

def _compiled():
    return nestor.compile(tiny_model())


BAD_CALLS = [
    (lambda: nestor.compile(123), "model must be str or PathLike or ModelProto or Graph, not int"),
    (lambda: nestor.compile(None), "model must be"),
    (lambda: nestor.compile(tiny_model(), input_shapes="x"), "input_shapes must be a dict"),
    (lambda: nestor.compile(tiny_model(), input_shapes={"x": "ab"}), "input_shapes['x'] must be a sequence"),
    (lambda: nestor.compile(tiny_model(), input_shapes={"nope": (1, 2)}), "a shape is given for 'nope'"),
    (lambda: nestor.compile(tiny_model(), schedule=5), "schedule must be"),
    (lambda: nestor.compile(tiny_model(), records=5), "records must be"),
    (lambda: nestor.compile(tiny_model(), target=5), "unknown target 5"),
    (lambda: nestor.compile(tiny_model(), schedule="bind(i0, threadIdx.x)"), "bound to threadIdx.x"),
    (lambda: nestor.load(123), "path must be str or PathLike, not int"),
    (lambda: nestor.load("/nonexistent/m.nestor"), "m.nestor"),
    (lambda: _compiled().run("x"), "not str"),
    (lambda: _compiled().run(None), "not NoneType"),
    (lambda: _compiled().run([np.ones((2, 3), np.float32)] * 2), "takes 1 inputs"),
    (lambda: _compiled().run({"x": [[1.0, 2.0], [3.0]]}), "input 'x' is not an array"),
    (lambda: _compiled().run({"x": np.ones((2, 3), np.float32), "nope": 1}), "unknown ['nope']"),
    (lambda: _compiled().save("/nonexistent/folder/m.nestor"), "cannot write compiled model"),
]


@pytest.mark.parametrize("call, message", BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_a_bad_api_call_is_a_nestor_error(call, message):
    with pytest.raises(nestor.NestorError) as info:
        call()
    assert message in str(info.value)


def test_a_loaded_model_saves_again(tmp_path):
    """Its kernels.so is kept as loaded (TVM cannot export a library it loaded)."""
    nestor.compile(tiny_model()).save(str(tmp_path / "a.nestor"))
    nestor.load(str(tmp_path / "a.nestor")).save(str(tmp_path / "b.nestor"))
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(nestor.load(str(tmp_path / "b.nestor")).run([x])[0], np.maximum(x, 0))
