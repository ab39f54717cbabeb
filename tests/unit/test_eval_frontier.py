import pytest

from thrifty.evaluation.frontier import aiq, cost_to_reach, hull_value, pareto, upper_hull


def test_pareto_drops_dominated_points():
    pts = [(0.1, 0.5), (0.2, 0.4), (0.3, 0.7), (0.3, 0.6), (1.0, 0.7)]
    assert pareto(pts) == [(0.1, 0.5), (0.3, 0.7)]


def test_upper_hull_removes_points_below_the_chord():
    pts = [(0.0, 0.0), (0.5, 0.4), (1.0, 1.0)]
    assert upper_hull(pts) == [(0.0, 0.0), (1.0, 1.0)]
    pts = [(0.0, 0.0), (0.5, 0.8), (1.0, 1.0)]
    assert upper_hull(pts) == pts


def test_hull_value_interpolates_and_is_flat_after_the_last_point():
    hull = [(0.2, 0.5), (0.6, 0.9)]
    assert hull_value(hull, 0.1) == 0.0
    assert hull_value(hull, 0.4) == pytest.approx(0.7)
    assert hull_value(hull, 5.0) == 0.9


def test_aiq_of_a_flat_curve_is_its_accuracy():
    assert aiq([(0.0, 0.8), (1.0, 0.8)], 0.0, 1.0) == pytest.approx(0.8)


def test_aiq_integrates_the_hull_exactly():
    # Linear from (0, 0.5) to (0.5, 1.0), then flat at 1.0 up to 1.0: area 0.375 + 0.5.
    assert aiq([(0.0, 0.5), (0.5, 1.0)], 0.0, 1.0) == pytest.approx(0.875)
    # A curve that starts at 0.5 offers nothing before it.
    assert aiq([(0.5, 1.0)], 0.0, 1.0) == pytest.approx(0.5)
    assert aiq([(2.0, 1.0)], 0.0, 1.0) == 0.0


def test_cost_to_reach_takes_the_cheapest_measured_point():
    pts = [(0.05, 0.80), (0.1, 0.86), (0.3, 0.90)]
    assert cost_to_reach(pts, 0.85) == 0.1
    assert cost_to_reach(pts, 0.95) is None
