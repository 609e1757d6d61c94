"""ONNX → Nestor graph."""
from .functions import defined_as_function
from .importer import import_model, load_model
from .ops import UnsupportedOpError, supported_ops
