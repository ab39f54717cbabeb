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


def test_the_oracles_curve_lies_above_every_model_with_graded_scores():
    """Found by review: with judge-graded (0-1) scores the oracle was one point, joined to the
    cheapest model by a straight line, and a mid-priced model's point rose above that line, so
    `thrifty eval` printed an oracle AIQ below the models' own (0.789 vs 0.856)."""
    from thrifty.evaluation.dataset import Item, Outcome, OutcomeSet
    from thrifty.evaluation.evaluate import figures
    from thrifty.evaluation.reference import oracle_curve, reference_rows

    cost = {"small": 0.0001, "mid": 0.001, "big": 0.01}
    items = []
    for i in range(40):
        # mid is nearly as good as big everywhere; big is better by a hair, so the oracle's one
        # point takes big on every prompt: expensive, and the line to it lies below mid.
        graded = {"small": 0.4, "mid": 0.95, "big": 1.0}
        items.append(Item("g.jsonl", i, [{"role": "user", "content": f"q{i}"}], "t",
                          {m: Outcome("a", c) for m, c in cost.items()}, dict(graded)))
    data = OutcomeSet(items, list(cost))
    rows = reference_rows(data, "big")
    curve = oracle_curve(data, "big")
    assert any(c == pytest.approx(0.1) and a == pytest.approx(0.95) for c, a in curve)  # mid's own choice
    got = figures(rows, "big", curve)
    assert got["aiq_oracle"] >= got["aiq_models_only"] - 1e-12
    assert figures(rows, "big")["aiq_oracle"] < got["aiq_models_only"]  # the one point alone: below
