"""The `.nestor` file: a zip of plan.json, constants.npz and kernels.so, written whole, read checked.

kernels.so is native code, and loading it runs it. So `read` checks everything else first, with
no native code touched: the zip (its CRC-32s catch a flipped byte), the plan against its schema,
the format version, every tensor's shape, dtype and place, the constants against the plan, the
SHA-256 of kernels.so that the plan recorded at save time, and that the library exports every
kernel the steps call.
That hash ties the library to its plan; it is no signature (whoever can write the file can write
the plan too): an artifact is to be loaded only from a trusted source.

Versions 1 and 2, saved before the hash, still load: their zip CRC-32s catch corruption as well
as the hash does, and refusing them would only force recompiling (after hours of tuning perhaps)
for no gain in trust.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass

import numpy as np

from ..ir.dtypes import SHORT, itemsize
from ..ir.errors import DAMAGED_ARRAY_FILE, ModelError
from ..ir.files import atomic_write

FORMAT_VERSION = 3   # 3: kernels.so's SHA-256; 2: the target (1: for the CPU)
_LIBRARY_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"MZ")   # ELF, Mach-O (64-bit), PE

# field -> accepted types, for the plan, each of its tensors and each of its steps
_PLAN = {"version": int, "name": str, "inputs": list, "outputs": list, "tensors": dict,
         "arena_bytes": int, "steps": list, "constant_names": list}
_TENSOR = {"shape": list, "dtype": str, "place": str, "key": (int, str)}
_STEP = {"node": str, "op": str, "func": str, "args": list}


@dataclass
class Artifact:
    plan: dict                      # without constant_names
    constants: dict[str, np.ndarray]
    kernels: bytes | None           # kernels.so, checked against the plan's hash


def write(path: str, plan: dict, constants: dict[str, np.ndarray], kernels: bytes | None) -> None:
    """Save atomically: an existing file at `path` is replaced only by a complete new one."""
    consts = io.BytesIO()
    np.savez(consts, **{f"c{i}": v for i, v in enumerate(constants.values())})
    plan = {**plan, "version": FORMAT_VERSION, "constant_names": list(constants)}
    if kernels is not None:
        plan["kernels_sha256"] = hashlib.sha256(kernels).hexdigest()
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr("plan.json", json.dumps(plan))
        z.writestr("constants.npz", consts.getvalue())
        if kernels is not None:
            z.writestr("kernels.so", kernels)


def read(path: str) -> Artifact:
    """Read and check an artifact; any fault is one ModelError naming `path`."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            for need in ("plan.json", "constants.npz"):
                if need not in names:
                    raise _Bad(f"it has no {need}")
            plan = _plan(z.read("plan.json"))
            kernels = z.read("kernels.so") if "kernels.so" in names else None
            constants = _constants(z.read("constants.npz"), plan.pop("constant_names"))
    except _Bad as bad:
        raise ModelError(f"'{path}' is not a valid Nestor compiled model: {bad}") from None
    except _Version as v:
        raise ModelError(f"'{path}' has format version {v}, this Nestor reads 1 to {FORMAT_VERSION}; "
                         f"compile the model again with this Nestor") from None
    except DAMAGED_ARRAY_FILE as err:  # zipfile's own failures are among numpy's
        raise ModelError(f"cannot load compiled model '{path}': {err}") from None
    try:
        _check_tensors(plan, constants)
        _check_kernels(plan, kernels)
    except _Bad as bad:
        raise ModelError(f"'{path}' is not a valid Nestor compiled model: {bad}") from None
    return Artifact(plan, constants, kernels)


class _Bad(Exception):
    """What is wrong inside an artifact (read adds the file's name)."""


class _Version(Exception):
    """A format version this Nestor does not read."""


def _fields(obj, spec: dict, what: str) -> None:
    if not isinstance(obj, dict):
        raise _Bad(f"{what} is not an object")
    for key, types in spec.items():
        if key not in obj:
            raise _Bad(f"{what} has no '{key}'")
        if not isinstance(obj[key], types) or isinstance(obj[key], bool):
            raise _Bad(f"{what}'s '{key}' is a {type(obj[key]).__name__}")


def _plan(text: bytes) -> dict:
    try:
        plan = json.loads(text)
    except ValueError as err:   # also a UnicodeDecodeError
        raise _Bad(f"plan.json is not JSON ({err})") from None
    if isinstance(plan, dict) and plan.get("version") not in (1, 2, FORMAT_VERSION):
        raise _Version(plan.get("version"))
    _fields(plan, _PLAN, "the plan")
    if plan["version"] >= 2:
        _fields(plan, {"target": str}, "the plan")
    for key in ("inputs", "outputs", "constant_names"):
        _names(plan[key], f"the plan's '{key}'")
    for name, t in plan["tensors"].items():
        _fields(t, _TENSOR, f"tensor '{name}'")
    for i, step in enumerate(plan["steps"]):
        _fields(step, _STEP, f"step {i}")
        _names(step["args"], f"step {i}'s 'args'")
    return plan


def _names(items: list, what: str) -> None:
    if not all(isinstance(n, str) for n in items):
        raise _Bad(f"{what} holds something other than names")


def _constants(data: bytes, names) -> dict[str, np.ndarray]:
    npz = np.load(io.BytesIO(data), allow_pickle=False)
    if sorted(npz.files) != sorted(f"c{i}" for i in range(len(names))):
        raise _Bad(f"constants.npz holds {len(npz.files)} arrays, the plan names {len(names)}")
    return {str(n): npz[f"c{i}"] for i, n in enumerate(names)}


def tensor_bytes(shape, dtype) -> int:
    """The bytes a plan's tensor of `shape` and `dtype` takes."""
    return math.prod(shape) * itemsize(dtype)


def _check_tensors(plan: dict, constants: dict[str, np.ndarray]) -> None:
    """Every tensor a known dtype and a shape of sizes, inside the buffer it is a view of."""
    tensors, inputs = plan["tensors"], plan["inputs"]
    for name in inputs + plan["outputs"] + [a for s in plan["steps"] for a in s["args"]]:
        if name not in tensors:
            raise _Bad(f"tensor '{name}' is used but not described")
    for name, value in constants.items():
        if str(value.dtype) not in SHORT:
            raise _Bad(f"constant '{name}' has dtype {value.dtype}")
    for name, t in tensors.items():
        shape, dtype, place, key = t["shape"], t["dtype"], t["place"], t["key"]
        if dtype not in SHORT:
            raise _Bad(f"tensor '{name}' has dtype '{dtype}'")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _Bad(f"tensor '{name}' has shape {shape}")
        size = tensor_bytes(shape, dtype)
        if place == "arena":
            room = plan["arena_bytes"] - key if isinstance(key, int) and key >= 0 else -1
        elif place == "input":
            owner = inputs[key] if isinstance(key, int) and 0 <= key < len(inputs) else None
            room = tensor_bytes(tensors[owner]["shape"], tensors[owner]["dtype"]) if owner in tensors else -1
        elif place == "constant":
            room = constants[key].nbytes if key in constants else -1
        else:
            raise _Bad(f"tensor '{name}' has place '{place}'")
        if size > room:
            raise _Bad(f"tensor '{name}' ({size} bytes) does not fit in its {place} place {key!r}")
    for name in inputs:
        if tensors[name]["place"] != "input":
            raise _Bad(f"input '{name}' is placed in the {tensors[name]['place']}")


def _check_kernels(plan: dict, kernels: bytes | None) -> None:
    """The library is the one saved with this plan, and exports every function a step calls."""
    if kernels is None:
        if plan["steps"]:
            raise _Bad(f"its {len(plan['steps'])} steps call kernels but it has no kernels.so")
        return
    if plan["version"] >= 3:
        recorded = plan.get("kernels_sha256")
        if recorded != hashlib.sha256(kernels).hexdigest():
            raise _Bad("kernels.so is not the library saved with its plan (SHA-256 mismatch)")
    if not kernels.startswith(_LIBRARY_MAGIC):
        raise _Bad("kernels.so is not a shared library")
    # TVM exports kernel f as the symbol __tvm_ffi_f (CPU and CUDA alike): its name is in the
    # library's string table, which a byte search finds without loading it.
    missing = sorted(f for f in {s["func"] for s in plan["steps"]}
                     if f"__tvm_ffi_{f}\0".encode() not in kernels)
    if missing:
        raise _Bad(f"its steps call {missing}, which kernels.so does not export")
