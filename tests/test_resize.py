"""Resize and Upsample (frontend/resize.py) against onnx.reference, and the common modes against
ONNX Runtime, over every nearest_mode and coordinate_transformation_mode."""
import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import nestor.backend as backend
from nestor.frontend import import_model
from tests.op_harness import single_node_model

X = np.random.default_rng(0).standard_normal((1, 2, 4, 5)).astype(np.float32)
F, I = np.float32, np.int64


def resize(params: dict, opset=19, x=X, **attrs):
    """A Resize node over x with constant roi/scales/sizes (those given in `params`)."""
    names = ["x"] + [k if k in params else "" for k in ("roi", "scales", "sizes")]
    while not names[-1]:
        names.pop()
    node = helper.make_node("Resize", names, ["y"], **attrs)
    return single_node_model(node, {"x": x}, params, opset=opset)


def up(**attrs):
    return pytest.param(resize({"scales": np.array([1, 1, 2, 1.5], F)}, **attrs),
                        id="up-" + "-".join(f"{v}" for v in attrs.values()))


def down(**attrs):
    return pytest.param(resize({"scales": np.array([1, 1, 0.6, 0.5], F)}, **attrs),
                        id="down-" + "-".join(f"{v}" for v in attrs.values()))


CTMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]
CASES = (
    [up(mode="nearest", nearest_mode=m, coordinate_transformation_mode=c)
     for m in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil") for c in ("half_pixel", "asymmetric")]
    + [down(mode="nearest", nearest_mode="round_prefer_ceil", coordinate_transformation_mode="align_corners")]
    + [f(mode="linear", coordinate_transformation_mode=c) for c in CTMS for f in (up, down)]
    + [up(mode="cubic"), down(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
       up(mode="cubic", coordinate_transformation_mode="align_corners"),
       down(mode="linear", antialias=1), down(mode="cubic", antialias=1)]
    + [pytest.param(resize({"roi": np.array([0.2, 0.4, 1.2, 0.8], F), "scales": np.array([1.5, 2], F)},
                           axes=[2, 3], mode="linear", coordinate_transformation_mode="tf_crop_and_resize",
                           extrapolation_value=7.0), id="tf-crop-extrapolate-axes"),
       pytest.param(resize({"sizes": np.array([7, 3], I)}, axes=[3, 2], mode="nearest",
                           keep_aspect_ratio_policy="not_larger"), id="sizes-not-larger-axes"),
       pytest.param(resize({"sizes": np.array([1, 2, 9, 7], I)}, mode="linear"), id="sizes"),
       pytest.param(single_node_model(helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest"),
                                      {"x": X}, {"s": np.array([1, 1, 2, 3], F)}, opset=9), id="upsample")])


@pytest.mark.parametrize("model", CASES)
def test_resize_matches_the_reference(model):
    want = ReferenceEvaluator(model).run(None, {"x": X})[0]
    np.testing.assert_allclose(backend.prepare(model).run([X])[0], want, rtol=1e-5, atol=1e-5)  # float32 sums


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_matches_onnxruntime(mode):
    ort = pytest.importorskip("onnxruntime")
    model = resize({"scales": np.array([1, 1, 1.7, 0.8], F)}, opset=18, mode=mode)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": X})[0]
    np.testing.assert_allclose(backend.prepare(model).run([X])[0], want, rtol=1e-5, atol=1e-5)


def test_resize_10_repeats():
    """Opset 10's Resize (which onnx.reference cannot run) upsamples by repeating, as Upsample."""
    model = single_node_model(helper.make_node("Resize", ["x", "s"], ["y"]), {"x": X},
                              {"s": np.array([1, 1, 2, 3], F)}, opset=10)
    np.testing.assert_array_equal(backend.prepare(model).run([X])[0], X.repeat(2, 2).repeat(3, 3))


def test_nearest_is_gathers_and_integers_resize_exactly():
    x = np.arange(40, dtype=np.uint8).reshape(1, 2, 4, 5)
    model = resize({"scales": np.array([1, 1, 2, 0.5], F)}, x=x, mode="nearest")
    assert {n.op_type for n in import_model(model).nodes} == {"Gather"}
    np.testing.assert_array_equal(backend.prepare(model).run([x])[0],
                                  ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_scales_fed_at_run_time_are_baked_in():
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear")
    model = single_node_model(node, {"x": X, "s": np.array([1, 1, 2, 2], F)}, opset=19)
    s = np.array([1, 1, 2, 2], F)
    want = ReferenceEvaluator(model).run(None, {"x": X, "s": s})[0]
    np.testing.assert_allclose(backend.prepare(model).run([X, s])[0], want, rtol=1e-5, atol=1e-6)
