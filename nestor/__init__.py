"""Nestor: an autotuning tensor compiler with its own loop-nest IR, lowering to TVM."""
from importlib.metadata import PackageNotFoundError, version as _version

from .api import compile, import_onnx, load  # noqa: A004 (nestor.compile is the public name)
from .ir.errors import FileError, InputError, ModelError, NestorError, UsageError

try:
    __version__ = _version("nestor")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
