"""Errors every layer raises. The CLI prints a NestorError as one line and exits non-zero."""
import tokenize
import zipfile
import zlib


class NestorError(Exception):
    """A user-facing error: the message alone must say what is wrong and where."""


class ModelError(NestorError):
    """A model that cannot be read, fails ONNX's checks, or has a shape Nestor cannot handle."""


class InputError(NestorError):
    """A runtime input with a missing name, a wrong shape or a wrong dtype."""


class UsageError(NestorError):
    """A command-line argument that cannot be right (a bad value, a flag missing the one it
    needs, one given twice): the CLI exits 2, as argparse does for its own errors."""


class FileError(NestorError, OSError):
    """A path Nestor was told to read or write and cannot: missing, a directory where a file is
    wanted, unreadable, in a folder that does not exist or is read-only, or an output over an input.
    An OSError too, for callers that catch those around file work."""


# What numpy raises for a damaged .npy or .npz (a bad zip, a truncated member, a header that is
# not a Python literal: its tokenizer's errors pass through): a reader turns these into its own
# NestorError naming the file.
DAMAGED_ARRAY_FILE = (OSError, EOFError, ValueError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile,
                      zlib.error, NotImplementedError, RuntimeError)
