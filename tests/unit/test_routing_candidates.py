"""Fixed-structure candidates, inner-CV valuation and the vectorised state tables (synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.routing_data import SPEC, synthetic
from thrifty.routing.candidates import FIXED_TABLES
from thrifty.routing.fit import fit_frontier, fit_policy
from thrifty.routing.simulate import simulate
from thrifty.routing.tables import NEXT, STRONG, FamilyData, OrderModel


def tiny() -> FamilyData:
    # 4 rows: a and b agree on rows 0-1 (and are right), differ on 2, b unusable on 3.
    return FamilyData(
        answers={"a": ["A", "B", "A", "C"], "b": ["A", "B", "C", None], "s": ["A", "B", "D", "C"]},
        scores={"a": np.array([1.0, 1.0, 0.0, 1.0]), "b": np.array([1.0, 1.0, 1.0, 0.0]),
                "s": np.array([1.0, 1.0, 1.0, 0.0])},
        costs={"a": np.full(4, 1.0), "b": np.full(4, 2.0), "s": np.full(4, 10.0)},
    )


def test_fixed_agreement_table_replays_by_hand() -> None:
    om = OrderModel(["a", "b"], tiny(), "s")
    correct, cost = om.run(om.codes(FIXED_TABLES[2]["agree: serve 1st"]))
    # rows 0, 1 served by a (right); rows 2, 3 escalate to s (right, wrong).
    assert correct[0] == 3.0 and cost[0] == 4 * 3.0 + 2 * 10.0
    assert om.table(om.codes(FIXED_TABLES[2]["agree: serve 1st"])[:, 0])["0,0"] == "stop:0"


def test_solve_prices_accuracy_against_cost() -> None:
    om = OrderModel(["a", "b"], tiny(), "s", shrink=0.0)
    act = om.solve(np.array([0.0, 1e6]))
    assert act[0, 0] == NEXT or act[0, 0] == STRONG  # free: ask whatever is most accurate
    free, dear = om.run(act)
    assert free[0] >= free[1] and dear[0] >= dear[1]
    assert act[0, 1] == NEXT and om.table(act[:, 1])["0"].startswith("stop")  # dear: one cheap answer


def test_estimates_with_inner_cv_are_not_above_in_sample() -> None:
    front = fit_frontier(synthetic(200), baseline="big", spec=SPEC)
    for policy in front.policies:
        for c in policy:
            assert c.cost >= c.train_cost - 1e-9  # cost estimate is never below in-sample cost
    in_sample = fit_frontier(synthetic(200), baseline="big",
                             spec={"fit": {**SPEC["fit"], "inner_folds": 0, "fixed": False}})
    for policy in in_sample.policies:
        for c in policy:
            assert c.correct == pytest.approx(c.train_correct) and c.cost == pytest.approx(c.train_cost)


def test_fitted_policy_is_never_estimated_below_the_agreement_cascade() -> None:
    data = synthetic(200)
    pair = {"state_table": {"order": ["mid", "weak"], "table": FIXED_TABLES[2]["agree: serve 1st"], "strong": "big"}}
    agree = simulate({"default_route": "mc_multi", "routes": {"mc_multi": pair}}, data, "big")  # not fitted: honest
    # The whole budget, one policy (no split), so the training figures replay exactly.
    spec = {"fit": {**SPEC["fit"], "budget_margin": 1.0, "mix": False}}
    section = fit_policy(data, max_cost_share=agree.cost_share, baseline="big", spec=spec)
    # The fixed cascade is a candidate, so the chosen policy is estimated at least as accurate.
    assert section["fitted"]["estimated_accuracy"] >= round(agree.accuracy, 4) - 1e-4
    r = simulate(section, data, "big")
    assert section["fitted"]["train_accuracy"] == pytest.approx(r.accuracy, abs=1e-3)
    assert r.cost_share <= agree.cost_share + 1e-9
