"""Element types: canonical names (numpy/TVM spelling) and the short names of the text form."""

SHORT = {
    "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "bool": "bool",
}
LONG = {short: long for long, short in SHORT.items()}
INDEX = "int32"  # dtype of loop variables and index arithmetic


def canonical(dtype) -> str:
    """Accept 'f32', 'float32' or a numpy dtype; return the canonical long name."""
    name = str(getattr(dtype, "name", dtype))
    name = LONG.get(name, name)
    if name not in SHORT:
        raise ValueError(f"unsupported element type {dtype!r}")
    return name


def short(dtype: str) -> str:
    return SHORT[dtype]


def is_float(dtype: str) -> bool:
    return dtype.startswith("float") or dtype == "bfloat16"


def is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def itemsize(dtype: str) -> int:
    return 1 if dtype == "bool" else int("".join(c for c in dtype if c.isdigit())) // 8
