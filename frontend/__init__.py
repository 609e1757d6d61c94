"""ONNX → Nestor graph."""
from .importer import import_model, load_model
from .ops import UnsupportedOpError, supported_ops
