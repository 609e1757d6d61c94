"""The Nestor IR: kernels as explicit loop nests over named buffers. Imports nothing of Nestor."""
from .dtypes import canonical, short, is_float, is_int, itemsize, bits, storage, INDEX
from .expr import (Expr, Const, Var, Buffer, Load, Binary, Compare, Logic, Not, Select, Cast, Call,
                   as_expr, const, eq, ne, lt, le, gt, ge, logical_and, logical_or, select,
                   minimum, maximum, call, cast, bitwise, bitwise_not, BINARY_OPS, BITWISE_OPS,
                   COMPARE_OPS, INTRINSICS)
from .stmt import (Stmt, For, Store, Seq, If, Allocate, Kernel, seq, store, loop_nest,
                   LOOP_KINDS, AXES, REDUCE_OPS)
from .visit import (rewrite, rewrite_stmt, substitute, walk, walk_stmts, loads, replace_body, variables)
from .interval import index_bounds
from .errors import NestorError, ModelError, InputError
from .graph import Graph, Node, TensorType
from .printer import print_kernel, print_stmt, print_expr
from .parser import parse_kernel, IRSyntaxError
from .hashing import structural_hash, structural_equal
from .verify import verify, VerifyError
