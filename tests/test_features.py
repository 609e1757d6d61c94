"""The interval and variable analyses that the cost-model features share with the verifier and
the passes (ir/)."""
import pytest

from nestor.ir import Binary, Buffer, Cast, Compare, Const, Load, Select, Var, index_bounds, parse_kernel, variables, verify

i, j = Var("i"), Var("j")


@pytest.mark.parametrize("expr, extents, bounds", [
    (i * 8 + j, {"i": 4, "j": 8}, (0, 31)),
    (j - j + 3, {"j": 8}, (3, 3)),                          # affine: exact, variables cancel
    (3 - i, {"i": 4}, (0, 3)),
    (i + j, {"i": 4}, (0, 3)),                               # a variable with no extent counts as 0
    ((i * 8 + j) // 8, {"i": 4, "j": 8}, (0, 3)),
    ((i * 8 + j) % 8, {"i": 4, "j": 8}, (0, 7)),
    ((i + 8) % 16, {"i": 4}, (8, 11)),                       # mod inside one period: exact
    ((i - 8) % 16, {"i": 4}, (8, 11)),                       # ... also below zero (mod rounds down)
    ((i + 6) % 8, {"i": 4}, (0, 7)),                         # crossing a multiple of 8
    ((i - 3) // 2, {"i": 4}, (-2, 0)),                       # floordiv rounds down
    (Binary("div", i - 3, Const(2)), {"i": 4}, (-1, 0)),    # div truncates
    (Binary("min", i, j + 2), {"i": 4, "j": 2}, (0, 3)),
    (Select(Compare("lt", i, j), i, j * 2), {"i": 4, "j": 3}, (0, 4)),
    (Cast("int64", i * 2), {"i": 4}, (0, 6)),
    (i // j, {"i": 4, "j": 3}, None),                        # division by a range
    (Load(Buffer("X", (4,), "int32"), (i,)) + 1, {"i": 4}, None),
])
def test_index_bounds(expr, extents, bounds):
    assert index_bounds(expr, extents) == bounds


def test_verifier_uses_the_exact_mod_rule():
    # (i - 8) % 16 lies in [8, 11]: in bounds of a 12-element buffer
    verify(parse_kernel("""
    kernel wrap(X: f32[12]) -> (Y: f32[4]) { for i in 0..4 { Y[i] = X[(i - 8) % 16] } }"""))


def test_variables():
    x = Buffer("X", (4, 4))
    assert variables([i * 2 + j, Load(x, (Var("k"), Const(0)))]) == {"i", "j", "k"}
    assert variables([Const(1)]) == set()
