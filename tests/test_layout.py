"""Blocked layouts (frontend/layout.py): convolutions and their neighbours in NCHW<b>c, layout
conversions only where a consumer needs the plain layout; every graph checked against ONNX
Runtime (test_models.py runs the nine light models with the layouts on, the default)."""
import numpy as np
import pytest
from onnx import helper

import nestor
from nestor.autotune.space import Sketch
from nestor.ir.machine import AVX2, AVX512
from nestor.frontend.layout import to_blocked
from nestor.frontend.ops.blocked import pack_conv_weight, pack_depthwise_weight
from nestor.ir import NestorError
from tests.test_graph_passes import make_model, weights
from tests.test_models import assert_close_to_ort

CONV3 = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}


def ops(model, blocked=True) -> list[str]:
    return [n.op_type for n in nestor.import_onnx(model, blocked=blocked).nodes]


def conv_net():
    """conv 3->16, relu, conv 16->32 (3x3), residual-style add of a 1x1 branch, max pool,
    concat of two pools, global average pool, flatten: one conversion, after the pool."""
    nodes = [("Conv", ["x", "w1", "b1"], ["c1"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
             ("Relu", ["c1"], ["r1"], {}),
             ("Conv", ["r1", "w2"], ["c2"], CONV3),
             ("Conv", ["r1", "w3"], ["c3"], {"kernel_shape": [1, 1]}),
             ("Add", ["c2", "c3"], ["a"], {}),
             ("Mul", ["a", "scale"], ["m"], {}),
             ("MaxPool", ["m"], ["p1"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
             ("AveragePool", ["m"], ["p2"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
             ("Concat", ["p1", "p2"], ["cat"], {"axis": 1}),
             ("GlobalAveragePool", ["cat"], ["g"], {}),
             ("Flatten", ["g"], ["y"], {})]
    inits = {"w1": weights((16, 3, 3, 3)), "b1": weights((16,)), "w2": weights((32, 16, 3, 3)),
             "w3": weights((32, 16, 1, 1)), "scale": weights((1, 32, 1, 1))}
    return make_model(nodes, {"x": [1, 3, 12, 12]}, {"y": [1, 64]}, inits)


def test_convolutions_and_their_neighbours_run_blocked_with_one_conversion():
    model = conv_net()
    graph = nestor.import_onnx(model)
    # the 3x3 conv of a blocked 12x12 input runs as Winograd (three kernels; the add joins the last)
    assert [n.op_type for n in graph.nodes] == [
        "ConvNCHWc+Relu", "WinogradInput", "MatMul", "ConvNCHWc", "WinogradOutput+Add+Mul", "MaxPool",
        "AveragePool", "Concat", "GlobalAveragePoolNCHWc", "FromNCHWc", "Flatten"]
    convert = next(n for n in graph.nodes if n.op_type == "FromNCHWc")
    assert graph.types[convert.inputs[0]].shape == (1, 4, 1, 1, 16)  # the pooled concat, blocked
    assert_close_to_ort(model, nestor.compile(model))


def test_blocked_layout_can_be_turned_off():
    model = conv_net()
    assert "ConvNCHWc" not in ops(model, blocked=False) and "FromNCHWc" not in ops(model, blocked=False)
    assert_close_to_ort(model, nestor.compile(nestor.import_onnx(model, blocked=False)))


def test_a_tensor_read_plain_and_blocked_is_converted_once_and_outputs_keep_their_names():
    """c1 feeds a conv (blocked), an LRN and a graph output (plain): one FromNCHWc makes c1."""
    nodes = [("Conv", ["x", "w1"], ["c1"], CONV3),
             ("Conv", ["c1", "w2"], ["c2"], CONV3),
             ("LRN", ["c1"], ["l"], {"size": 3}),
             ("Add", ["l", "c2"], ["y"], {})]
    inits = {"w1": weights((16, 4, 3, 3)), "w2": weights((16, 16, 3, 3))}
    model = make_model(nodes, {"x": [1, 4, 5, 5]}, {"y": [1, 16, 5, 5], "c1": [1, 16, 5, 5]}, inits)
    graph = nestor.import_onnx(model)
    converted = [n.outputs[0] for n in graph.nodes if n.op_type == "FromNCHWc"]
    assert converted == ["c1", "c2"]  # c2 meets a plain tensor in the Add
    assert graph.outputs == ["y", "c1"]
    assert_close_to_ort(model, nestor.compile(model))


def test_block_of_eight_where_sixteen_does_not_divide_and_none_where_eight_does_not():
    nodes = [("Conv", ["x", "w1"], ["c1"], CONV3), ("Relu", ["c1"], ["r"], {}),
             ("Conv", ["r", "w2"], ["y"], CONV3)]
    inits = {"w1": weights((24, 3, 3, 3)), "w2": weights((20, 24, 3, 3))}
    model = make_model(nodes, {"x": [1, 3, 7, 7]}, {"y": [1, 20, 7, 7]}, inits)
    graph = nestor.import_onnx(model)
    first = next(n for n in graph.nodes if n.kernel is not None)
    assert first.kernel.outputs[0].shape == (1, 3, 7, 7, 8)
    assert [n.op_type for n in graph.nodes][-2:] == ["FromNCHWc", "Conv"]  # 20 channels: plain
    assert_close_to_ort(model, nestor.compile(model))


def test_per_channel_constants_are_reblocked_and_other_operands_convert():
    nodes = [("Conv", ["x", "w"], ["c0"], CONV3),
             ("Relu", ["c0"], ["c"], {}),               # (an Add right after the conv folds into it)
             ("Add", ["c", "bias"], ["a"], {}),         # per channel: blocked
             ("Mul", ["a", "rows"], ["y"], {})]         # varies along H: plain
    inits = {"w": weights((16, 2, 3, 3)), "bias": weights((16, 1, 1)), "rows": weights((1, 1, 4, 1))}
    model = make_model(nodes, {"x": [1, 2, 4, 4]}, {"y": [1, 16, 4, 4]}, inits)
    assert ops(model) == ["ConvNCHWc+Relu+Add", "FromNCHWc+Mul"]
    assert_close_to_ort(model, nestor.compile(model))


def test_packed_weights_follow_the_blocked_layouts():
    w = np.arange(32 * 16 * 3 * 3, dtype=np.float32).reshape(32, 16, 3, 3)
    p = pack_conv_weight(w, 8, 16)
    assert p.shape == (2, 2, 3, 3, 8, 16)
    assert p[1, 1, 2, 0, 5, 3] == w[1 * 16 + 3, 1 * 8 + 5, 2, 0]
    q = pack_conv_weight(w, 0, 16)
    assert q.shape == (2, 16, 3, 3, 16) and q[1, 7, 0, 2, 9] == w[25, 7, 0, 2]
    x = np.arange(2 * 32 * 3 * 2).reshape(2, 32, 3, 2)
    assert to_blocked(x, 16)[1, 1, 2, 0, 4] == x[1, 20, 2, 0]


def test_blocked_convolution_tiles_keep_the_channel_block_in_the_vector():
    """The sketch's rule tiles for a blocked conv: the 16-channel block is the vector loop (no
    lanes on other loops), a row tile that fills the accumulator registers: AVX-512's 16 (a
    block one register): 14 pixels x 1 block, 7 x 2; AVX2's 12 (a block two): 8 of them as
    2 pixels x 2 blocks or 2 rows x 2 pixels, a 7-pixel row (14: two spill) and all 12 in 6
    pixels (its last tile peeled: 6 does not divide 14)."""
    nodes = [("Conv", ["x", "w"], ["y"], CONV3)]
    model = make_model(nodes, {"x": [1, 32, 14, 14]}, {"y": [1, 64, 14, 14]}, {"w": weights((64, 32, 3, 3))})
    conv = next(n.kernel for n in nestor.import_onnx(model).nodes if n.op_type == "ConvNCHWc")
    sketch = Sketch.of(conv, AVX512)
    assert sketch.info.lanes == ()
    tiles = {d.decisions.factors for d in sketch.rule_decisions()}
    assert (1, 1, 1, 14, 16) in tiles and (1, 2, 1, 7, 16) in tiles
    assert {d.decisions.factors for d in Sketch.of(conv, AVX2).rule_decisions()} == {
        (1, 2, 1, 2, 16), (1, 1, 2, 2, 16), (1, 1, 1, 7, 16), (1, 1, 1, 6, 16)}
    # 8-channel blocks (one AVX2 register) on a 13-pixel row, which no 4-8 divides: the whole
    # row, 13 accumulators (SqueezeNet's 1000-class conv)
    nodes = [("Conv", ["x", "w"], ["y"], CONV3)]
    model = make_model(nodes, {"x": [1, 16, 13, 13]}, {"y": [1, 40, 13, 13]}, {"w": weights((40, 16, 3, 3))})
    conv = next(n.kernel for n in nestor.import_onnx(model).nodes if n.op_type == "ConvNCHWc")
    assert {d.decisions.factors for d in Sketch.of(conv, AVX2).rule_decisions()} == {(1, 1, 1, 13, 8)}


def test_nestor_domain_ops_are_not_accepted_from_a_model():
    node = helper.make_node("FromNCHWc", ["x"], ["y"], name="sneaky", domain="nestor")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 1, 2, 2, 16])],
                              [helper.make_tensor_value_info("y", 1, [1, 16, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nestor", 1)])
    with pytest.raises(NestorError, match="sneaky.*only the default ONNX domain"):
        nestor.import_onnx(model)


@pytest.mark.parametrize("size, winograd", [((12, 10), True), ((7, 7), False)])
def test_a_3x3_conv_on_a_blocked_input_runs_as_winograd_where_its_tiles_are_whole(size, winograd):
    h, w = size
    nodes = [("Conv", ["x", "w1"], ["a"], {"kernel_shape": [1, 1]}),
             ("Conv", ["a", "w2", "b2"], ["b"], CONV3),                                  # Winograd
             ("Conv", ["b", "w3"], ["c"], {**CONV3, "strides": [2, 2]}),                 # stride 2: direct
             ("Relu", ["c"], ["y"], {})]
    inits = {"w1": weights((32, 8, 1, 1)), "w2": weights((48, 32, 3, 3)), "b2": weights((48,)),
             "w3": weights((16, 48, 3, 3))}
    model = make_model(nodes, {"x": [1, 8, h, w]}, {"y": [1, 16, (h + 1) // 2, (w + 1) // 2]}, inits)
    kinds = ops(model)
    assert kinds[-2:] == ["ConvNCHWc+Relu", "FromNCHWc"]
    assert (kinds[1:4] == ["WinogradInput", "MatMul", "WinogradOutput"]) == winograd
    assert_close_to_ort(model, nestor.compile(model))
    direct = [n.op_type for n in nestor.import_onnx(model, winograd=False).nodes]
    assert direct[:2] == ["ConvNCHWc", "ConvNCHWc"] and "MatMul" not in direct


def test_winograd_transforms_compute_a_3x3_correlation():
    from nestor.frontend.ops.winograd import input_transform_matrix, output_transform_matrix, transform_weights
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((1, 1, 3, 3))
    m = transform_weights(g)[:, 0, 0] * (input_transform_matrix() @ d.reshape(16))
    y = (output_transform_matrix() @ m).reshape(2, 2)
    want = [[(d[i:i + 3, j:j + 3] * g[0, 0]).sum() for j in range(2)] for i in range(2)]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def depthwise_net(channels=32, size=14, kernel=3, stride=2, dilation=1, bias=True):
    """1x1 expand conv, relu, depthwise conv (stride, pads, dilation as given), x*sigmoid(x),
    1x1 project conv: the MobileNet/EfficientNet block."""
    pad = dilation * (kernel // 2)
    dw = {"kernel_shape": [kernel, kernel], "strides": [stride] * 2, "pads": [pad] * 4,
          "dilations": [dilation] * 2, "group": channels}
    nodes = [("Conv", ["x", "w1"], ["c1"], {"kernel_shape": [1, 1]}),
             ("Relu", ["c1"], ["r1"], {}),
             ("Conv", ["r1", "wd"] + (["bd"] if bias else []), ["d"], dw),
             ("Sigmoid", ["d"], ["s"], {}),
             ("Mul", ["d", "s"], ["m"], {}),
             ("Conv", ["m", "w2"], ["y"], {"kernel_shape": [1, 1]})]
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    inits = {"w1": weights((channels, 8, 1, 1)), "wd": weights((channels, 1, kernel, kernel)),
             "bd": weights((channels,)), "w2": weights((16, channels, 1, 1))}
    return make_model(nodes, {"x": [1, 8, size, size]}, {"y": [1, 16, out, out]}, inits)


@pytest.mark.parametrize("kernel,stride,dilation,bias", [(3, 2, 1, True), (3, 1, 1, False), (5, 1, 1, True),
                                                        (5, 2, 1, False), (3, 1, 2, True)])
def test_a_depthwise_conv_on_a_blocked_input_runs_blocked(kernel, stride, dilation, bias):
    model = depthwise_net(kernel=kernel, stride=stride, dilation=dilation, bias=bias)
    assert ops(model) == ["ConvNCHWc+Relu", "DepthwiseNCHWc+Sigmoid+Mul", "ConvNCHWc", "FromNCHWc"]
    assert_close_to_ort(model, nestor.compile(model))


def test_depthwise_with_eight_channel_blocks_and_a_plain_input_stays_plain():
    model = depthwise_net(channels=24, size=9)  # 16 does not divide 24: blocks of 8
    graph = nestor.import_onnx(model)
    dw = next(n for n in graph.nodes if n.op_type.startswith("DepthwiseNCHWc"))
    assert graph.types[dw.outputs[0]].shape == (1, 3, 5, 5, 8)
    assert_close_to_ort(model, nestor.compile(model))
    nodes = [("Conv", ["x", "wd"], ["y"], {"kernel_shape": [3, 3], "pads": [1] * 4, "group": 16})]
    plain = make_model(nodes, {"x": [1, 16, 8, 8]}, {"y": [1, 16, 8, 8]}, {"wd": weights((16, 1, 3, 3))})
    assert ops(plain) == ["Conv"]  # the model's own input is plain: nothing to gain from a conversion


def test_depthwise_weights_pack_channel_blocks_last():
    w = np.arange(32 * 3 * 3, dtype=np.float32).reshape(32, 1, 3, 3)
    p = pack_depthwise_weight(w, 16)
    assert p.shape == (2, 3, 3, 16) and p[1, 2, 0, 5] == w[21, 0, 2, 0]


def test_blocked_depthwise_tiles_keep_the_channel_block_in_the_vector():
    conv = next(n.kernel for n in nestor.import_onnx(depthwise_net(size=28)).nodes
                if n.op_type.startswith("DepthwiseNCHWc"))
    for machine in (AVX2, AVX512):
        sketch = Sketch.of(conv, machine)
        v = sketch.info.vector
        assert v is not None and sketch.info.main.spatial[v].extent == 16


def test_a_squeeze_excite_block_stays_blocked():
    """dw conv, global pool, two 1x1 convs, sigmoid gate, gate * dw output, project conv: the
    pooled tensor, the gate and the product keep the block; one conversion, at the output."""
    c = 32
    nodes = [("Conv", ["x", "w1"], ["e"], {"kernel_shape": [1, 1]}),
             ("Conv", ["e", "wd"], ["d"], {"kernel_shape": [3, 3], "pads": [1] * 4, "group": c}),
             ("GlobalAveragePool", ["d"], ["p"], {}),
             ("Conv", ["p", "wf1"], ["f1"], {"kernel_shape": [1, 1]}),
             ("Relu", ["f1"], ["r"], {}),
             ("Conv", ["r", "wf2"], ["f2"], {"kernel_shape": [1, 1]}),
             ("Sigmoid", ["f2"], ["g"], {}),
             ("Mul", ["g", "d"], ["m"], {}),
             ("GlobalMaxPool", ["m"], ["q"], {}),
             ("Add", ["m", "q"], ["y"], {})]
    inits = {"w1": weights((c, 8, 1, 1)), "wd": weights((c, 1, 3, 3)), "wf1": weights((8, c, 1, 1)),
             "wf2": weights((c, 8, 1, 1))}
    model = make_model(nodes, {"x": [1, 8, 10, 10]}, {"y": [1, c, 10, 10]}, inits)
    assert ops(model) == ["ConvNCHWc", "DepthwiseNCHWc", "GlobalAveragePoolNCHWc", "ConvNCHWc+Relu",
                          "ConvNCHWc+Sigmoid", "Mul", "GlobalMaxPoolNCHWc", "Add", "FromNCHWc"]
    assert_close_to_ort(model, nestor.compile(model))
