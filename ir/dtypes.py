"""Element types: canonical names (numpy/TVM spelling) and the short names of the text form."""
import re

from .errors import NestorError

SHORT = {
    "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "bool": "bool",
    "int4": "i4", "uint4": "u4", "int2": "i2", "uint2": "u2",
    "float8_e4m3fn": "f8e4m3fn", "float8_e4m3fnuz": "f8e4m3fnuz", "float8_e5m2": "f8e5m2",
    "float8_e5m2fnuz": "f8e5m2fnuz", "float4_e2m1fn": "f4e2m1fn",
}
# Sub-byte integers: one element a byte, the value in its low bits (ml_dtypes' layout of
# numpy arrays), computed in the byte type; a cast into one keeps the value's low bits.
# Narrow floats (float8 and float4 formats, as ml_dtypes defines them): one element a byte, its
# bits in the low bits, computed in float32; a cast into one rounds to nearest even and
# saturates (a value beyond the largest finite one becomes it; NaN stays NaN).
NARROW_FLOATS = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn")
STORAGE = {"int4": "int8", "int2": "int8", "uint4": "uint8", "uint2": "uint8",
           **{name: "uint8" for name in NARROW_FLOATS}}
LONG = {short: long for long, short in SHORT.items()}
INDEX = "int32"  # dtype of loop variables and index arithmetic


class DtypeError(NestorError, ValueError):
    """An element type Nestor does not compile (a model's string tensor, a float8 E8M0)."""


def canonical(dtype) -> str:
    """Accept 'f32', 'float32' or a numpy dtype; return the canonical long name."""
    name = str(getattr(dtype, "name", dtype))
    name = LONG.get(name, name)
    if name not in SHORT:
        raise DtypeError(f"unsupported element type {dtype!r}")
    return name


def short(dtype: str) -> str:
    return SHORT[dtype]


def is_float(dtype: str) -> bool:
    return dtype.startswith("float") or dtype == "bfloat16"


def is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def storage(dtype: str) -> str:
    """The byte-addressable type that holds `dtype`'s elements in memory and registers."""
    return STORAGE.get(dtype, dtype)


def bits(dtype: str) -> int:
    """The width of a value of the type (float8_e4m3fn: 8, int4: 4; bool: 8, as stored)."""
    return 8 if dtype == "bool" else int(re.match(r"[a-z]+(\d+)", dtype)[1])


def int_range(dtype: str) -> tuple[int, int]:
    """The least and greatest value of an integer type."""
    width = bits(dtype)
    return (0, (1 << width) - 1) if dtype.startswith("u") else (-(1 << (width - 1)), (1 << (width - 1)) - 1)


def itemsize(dtype: str) -> int:
    return bits(storage(dtype)) // 8
