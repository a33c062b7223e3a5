"""The straight-line Elligator 2 map (RFC 9380 G.2.1) equals the step-by-step one (6.7.1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.crypto import elligator as e

_EDGE = [0, 1, 2, e.P - 1, e.P, e.P + 1, (1 << 255) - 1, e.A, e.P - e.A]


def _on_curve(x: int, y: int) -> bool:
    return y * y % e.P == (x * x * x + e.A * x * x + x) % e.P


def test_edge_inputs_agree() -> None:
    for u in _EDGE:
        got = e.map_to_curve_elligator2(u)
        assert got == e._map_to_curve_elligator2_reference(u)
        assert _on_curve(*got)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 255) - 1))
def test_random_inputs_agree(u: int) -> None:
    got = e.map_to_curve_elligator2(u)
    assert got == e._map_to_curve_elligator2_reference(u)
    assert _on_curve(*got)
    assert 0 <= got[0] < e.P
    assert 0 <= got[1] < e.P


def test_both_branches_are_taken() -> None:
    # Roughly half the inputs land on x1 (sgn0(y) = 1), half on x2 (sgn0(y) = 0).
    signs = {e.map_to_curve_elligator2(u)[1] & 1 for u in range(3, 40)}
    assert signs == {0, 1}
