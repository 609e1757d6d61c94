"""Resize and Upsample as ops Nestor lowers: interpolation is separable, so each resized axis is
an (m x n) matrix of weights on the input's n positions, computed here from the ONNX spec
(coordinate transformation, nearest rounding, linear, cubic, antialias, exclude_outside,
tf_crop_and_resize's extrapolation). An axis whose rows each pick one input is one Gather (nearest
mode: exact); otherwise a Sum of K Gathers (the row's K taps), each times a constant weight
column. Scales, sizes and roi must be constants, as they are in every model Nestor compiles.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ..ir import TensorType, canonical, is_float
from .ops import UnsupportedOpError


def expand_resizes(nodes, opset: int, consts: dict, types: dict[str, TensorType]):
    """`nodes` with each Resize/Upsample whose parameters are known replaced by Gathers, Muls
    and Sums (their constant tables added to `consts` and `types`); and whether any was."""
    out, changed = [], False
    produced = {o for n in nodes for o in n.output}
    for node in nodes:
        if node.op_type not in ("Resize", "Upsample"):
            out.append(node)
            continue
        for k, i in enumerate(node.input[1:], 1):
            if i and i not in consts and i not in produced:  # a graph input: never known here
                raise UnsupportedOpError(f"{node.op_type} node '{node.name}': input {k} ('{i}') "
                                         "must be a constant")
        new = _expand(node, opset, consts, types)
        out.extend([node] if new is None else new)
        changed |= new is not None
    return out, changed


def _expand(node, opset, consts, types):
    x, y = node.input[0], node.output[0]
    params = [i for i in node.input[1:] if i]
    if x not in types or y not in types or any(i not in consts for i in params):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    n_in, m_out, dtype = types[x].shape, types[y].shape, types[x].dtype
    scales, roi = _scales(node, opset, attrs, consts, n_in)
    legacy = node.op_type == "Upsample" or opset < 11  # asymmetric coordinates, floor rounding
    spec = dict(mode=attrs.get("mode", "nearest"),
                ctm="asymmetric" if legacy else attrs.get("coordinate_transformation_mode", "half_pixel"),
                nearest=("floor" if legacy else attrs.get("nearest_mode", "round_prefer_floor")),
                a=attrs.get("cubic_coeff_a", -0.75), exclude=attrs.get("exclude_outside", 0),
                antialias=attrs.get("antialias", 0), extrapolation=attrs.get("extrapolation_value", 0.0))
    new, cur = [], x
    for d, (n, m, s) in enumerate(zip(n_in, m_out, scales)):
        w, b = axis_weights(n, m, s, roi[d], **spec)
        if m == n and not b.any() and np.array_equal(w, np.eye(n)):
            continue
        out = f"{node.name}__axis{d}"
        if not b.any() and (w == (w > 0)).all() and (w.sum(1) == 1).all():  # each row picks one
            new.append(_gather(node, cur, _const(consts, types, f"{out}_idx", w.argmax(1)), d, out))
        elif is_float(dtype):
            new.extend(_taps(node, cur, w, b, d, len(n_in), dtype, consts, types, out))
        else:
            return None  # interpolating integers: the lowering reports it unsupported
        cur = out
    if not new:
        return [helper.make_node("Identity", [x], [y], name=node.name)]
    new[-1].output[0] = y  # the last axis's Gather or Sum
    return new


def _scales(node, opset, attrs, consts, shape):
    """Per-axis scale factors and (start, end) roi, from scales or sizes, axes and the
    keep_aspect_ratio_policy."""
    r = len(shape)
    if node.op_type == "Upsample" or opset < 11:
        s = attrs["scales"] if opset < 9 and "scales" in attrs else consts[node.input[1]]
        return [float(v) for v in s], [(0.0, 1.0)] * r
    axes = [a + r if a < 0 else a for a in attrs.get("axes", range(r))]
    given = lambda i: len(node.input) > i and node.input[i] and consts[node.input[i]].size
    roi = [(0.0, 1.0)] * r
    if given(1):
        v = consts[node.input[1]].astype(float)
        for k, a in enumerate(axes):
            roi[a] = (v[k], v[len(axes) + k])
    scales = [1.0] * r
    if given(2):
        for k, a in enumerate(axes):
            scales[a] = float(consts[node.input[2]][k])
        return scales, roi
    sizes = consts[node.input[3]]
    ratios = {a: int(sizes[k]) / shape[a] for k, a in enumerate(axes)}
    policy = attrs.get("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        one = (min if policy == "not_larger" else max)(ratios.values())
        ratios = {a: one for a in axes}
    for a, v in ratios.items():
        scales[a] = v
    return scales, roi


def axis_weights(n, m, s, roi, mode, ctm, nearest, a, exclude, antialias, extrapolation):
    """The (m, n) weights and (m,) offsets of one axis resized from n to m at scale s."""
    x = _source(np.arange(m, dtype=np.float64), n, m, s, roi, ctm)
    floor = np.floor(x)
    ratio = np.where(x == floor, 1.0, x - floor)  # an exact position is the right tap at 1
    coeffs = np.array([_coeffs(r, s, mode, nearest, a, antialias) for r in ratio]).reshape(m, -1)
    k = coeffs.shape[1]
    pad = math.ceil(k / 2)
    padded = x + pad
    p, frac = np.floor(padded), padded - np.floor(padded)
    if k % 2 == 0:  # the k taps nearest x, ties to the lower index (as ONNX's reference)
        offset = np.where(frac == 0, -(k // 2), -(k // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((k - 1) // 2), -((k - 1) // 2) + 1)
    idx = (p + offset).astype(np.int64)[:, None] + np.arange(k) - pad
    if exclude:
        coeffs = np.where((idx < 0) | (idx >= n), 0.0, coeffs)
        total = coeffs.sum(1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    w = np.zeros((m, n))
    np.add.at(w, (np.repeat(np.arange(m), k), np.clip(idx, 0, n - 1).ravel()), coeffs.ravel())
    b = np.zeros(m)
    if ctm == "tf_crop_and_resize":
        outside = (x < 0) | (x > n - 1)
        w[outside], b[outside] = 0.0, extrapolation
    return w, b


def _source(y, n, m, s, roi, ctm):
    """Input coordinate of each output position y."""
    width = s * n
    if ctm == "align_corners":
        return np.zeros(m) if width == 1 else y * (n - 1) / (width - 1)
    if ctm == "asymmetric":
        return y / s
    if ctm == "tf_crop_and_resize":
        lo, hi = roi
        x = (np.full(m, (hi - lo) * (n - 1) / 2) if width == 1
             else y * (hi - lo) * (n - 1) / (width - 1))
        return x + lo * (n - 1)
    if ctm == "pytorch_half_pixel":
        return np.full(m, -0.5) if width == 1 else (y + 0.5) / s - 0.5
    if ctm == "half_pixel":
        return (y + 0.5) / s - 0.5
    if ctm == "half_pixel_symmetric":
        return n / 2 * (1 - m / width) + (y + 0.5) / s - 0.5
    raise ValueError(f"coordinate_transformation_mode {ctm!r}")


def _coeffs(r, s, mode, nearest, a, antialias):
    if mode == "nearest":
        if r == 1.0:
            return [0, 1]
        down = {"round_prefer_floor": r <= 0.5, "round_prefer_ceil": r < 0.5,
                "floor": True, "ceil": False}[nearest]
        return [float(down), float(not down)]
    if mode == "linear" and not antialias:
        return [1 - r, r]
    if mode == "cubic" and not antialias:
        t = [r + 1, r, 1 - r, 2 - r]
        return [_cubic(v, a) for v in t]
    scale = min(s, 1.0)  # antialias widens the kernel by 1/scale when downsampling
    if mode == "linear":
        start = int(np.floor(-1 / scale) + 1)
        c = np.clip(1 - np.abs((np.arange(start, 2 - start) - r) * scale), 0, 1)
    else:
        start = int(np.floor(-2 / scale) + 1)
        c = np.array([_cubic(scale * (i - r), a) for i in range(start, 2 - start)])
    return list(c / c.sum())


def _cubic(t, a):
    t = abs(t)
    if t <= 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    if t < 2:
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return 0.0


def _gather(node, data, idx, axis, out):
    return helper.make_node("Gather", [data, idx], [out], axis=axis, name=f"{out}_gather")


def _taps(node, cur, w, b, d, rank, dtype, consts, types, out):
    """sum_k w[o, idx_k[o]] * cur[.., idx_k[o], ..] (+ b[o]) along axis d."""
    k = int((w != 0).sum(1).max()) or 1
    order = np.argsort(w == 0, axis=1, kind="stable")[:, :k]  # each row's nonzero columns
    weights = np.take_along_axis(w, order, 1)
    column = (w.shape[0],) + (1,) * (rank - d - 1)
    terms, nodes = [], []
    for j in range(k):
        g, t = f"{out}_g{j}", f"{out}_t{j}"
        nodes.append(_gather(node, cur, _const(consts, types, f"{out}_idx{j}", order[:, j]), d, g))
        wj = _const(consts, types, f"{out}_w{j}", weights[:, j].reshape(column).astype(dtype))
        nodes.append(helper.make_node("Mul", [g, wj], [t], name=f"{t}_mul"))
        terms.append(t)
    if b.any():
        terms.append(_const(consts, types, f"{out}_b", b.reshape(column).astype(dtype)))
    nodes.append(helper.make_node("Sum", terms, [out], name=f"{out}_sum"))
    return nodes


def _const(consts, types, name, value):
    value = np.ascontiguousarray(value)
    if value.dtype.kind in "iu":
        value = value.astype(np.int64)
    consts[name], types[name] = value, TensorType(tuple(value.shape), canonical(value.dtype))
    return name
