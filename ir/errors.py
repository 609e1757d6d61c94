"""Errors every layer raises. The CLI prints a NestorError as one line and exits non-zero."""


class NestorError(Exception):
    """A user-facing error: the message alone must say what is wrong and where."""


class ModelError(NestorError):
    """A model that cannot be read, fails ONNX's checks, or has a shape Nestor cannot handle."""


class InputError(NestorError):
    """A runtime input with a missing name, a wrong shape or a wrong dtype."""
