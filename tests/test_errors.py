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
    node = helper.make_node("Det", ["x"], ["y"], name="det_node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match=r"Det.*det_node.*opset 17"):
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
