"""Lowerings of ONNX ops to Nestor kernels; importing this package registers all of them."""
from .registry import (NESTOR_DOMAIN, Alias, Lowered, OpContext, TensorInfo, UnsupportedOpError, lowering_for,
                       make_context, register_op, supported_ops)
from . import common  # noqa: F401
from . import elementwise, shape  # noqa: F401
from . import nn, linalg, reduce  # noqa: F401
from . import blocked  # noqa: F401  (Nestor's own domain: frontend/layout.py writes these)
from . import winograd  # noqa: F401  (Nestor's own domain: frontend/winograd.py writes these)
from . import resize  # noqa: F401  (what frontend/resize.py did not rewrite)
from . import grid_sample, quantize, scatter  # noqa: F401
from . import rnn  # noqa: F401  (what frontend/rnn.py unrolls LSTM, GRU and RNN into)
