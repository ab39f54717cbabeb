"""Route splits (routing/split.py) and the budget's mix of two hull policies (routing/frontier.py)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fixtures.routing_data import SPEC, synthetic
from thrifty.errors import ConfigError
from thrifty.routing.config import parse_routing
from thrifty.routing.fit import fit_frontier, fit_policy
from thrifty.routing.frontier import Candidate, choose, upper_hull
from thrifty.routing.simulate import simulate
from thrifty.routing.split import resolve_split, split_point


def _routes(share: float = 0.3) -> dict[str, Any]:
    return {"default_route": "a", "routes": {"a": {"model": "m1", "split": {"share": share, "route": "b"}},
                                              "b": {"model": "m2"}}}


def test_a_split_sends_its_share_of_prompts_and_the_same_prompt_always_the_same_way() -> None:
    cfg = parse_routing(_routes(0.3))
    texts = [f"question number {i}: what is {i} + {i}?" for i in range(4000)]
    served = [resolve_split(cfg.routes, "a", t)[0] for t in texts]
    assert abs(served.count("b") / len(texts) - 0.3) < 0.03
    assert served == [resolve_split(cfg.routes, "a", t)[0] for t in texts]  # deterministic
    # Independent of Python's salted hash: a fixed value for a fixed input.
    assert split_point("a", "hello") == split_point("a", "hello") and 0 <= split_point("a", "hello") < 1
    route, why = resolve_split(cfg.routes, "b", texts[0])
    assert (route, why) == ("b", None)  # no split: no note
    assert "split" in (resolve_split(cfg.routes, "a", texts[0])[1] or "")


def test_two_split_routes_split_independently() -> None:
    texts = [f"prompt {i}" for i in range(4000)]
    both = sum(1 for t in texts if split_point("x", t) < 0.5 and split_point("y", t) < 0.5)
    assert abs(both / len(texts) - 0.25) < 0.03


@pytest.mark.parametrize(("split", "problem"), [
    ({"share": 0.3, "route": "nope"}, "unknown route 'nope'"),
    ({"share": 0.3, "route": "a"}, "cannot split to itself"),
    ({"share": 0.0, "route": "b"}, "greater than 0"),
    ({"share": 1.0, "route": "b"}, "less than 1"),
])
def test_bad_splits_are_refused_with_their_key(split: dict[str, Any], problem: str) -> None:
    section = _routes()
    section["routes"]["a"]["split"] = split
    with pytest.raises(ConfigError) as err:
        parse_routing(section)
    assert "routes.a.split" in str(err.value) and problem in str(err.value)


def test_splits_do_not_chain() -> None:
    section = _routes()
    section["routes"]["b"]["split"] = {"share": 0.5, "route": "c"}
    section["routes"]["c"] = {"model": "m3"}
    with pytest.raises(ConfigError, match="has a split of its own"):
        parse_routing(section)


def _policy(cost: float, correct: float, name: str) -> list[Candidate]:
    return [Candidate("g", correct, cost, 0.0, [name], {"": "next", "0": "stop:0"}, False, name, correct, cost)]


def test_the_budget_buys_the_hull_point_between_two_policies() -> None:
    # Pareto frontier; (2, 6) lies below the line from (1, 5) to (4, 9), so it is not on the hull.
    pols = [_policy(1, 5, "p1"), _policy(2, 6, "p2"), _policy(4, 9, "p3")]
    assert [p[0].kind for p in upper_hull(pols)] == ["p1", "p3"]
    mix = choose(pols, 2.5, mix=True)
    assert mix.low[0].kind == "p1" and mix.high is not None and mix.high[0].kind == "p3"
    assert mix.p == pytest.approx(0.5)
    assert mix.total("cost") == pytest.approx(2.5) and mix.total("correct") == pytest.approx(7.0)
    # Without mix: the most accurate policy within the budget, which leaves 0.5 unspent.
    plain = choose(pols, 2.5, mix=False)
    assert plain.high is None and plain.low[0].kind == "p2"
    # Past the dearest policy, or under the cheapest: no split.
    assert choose(pols, 10, mix=True).high is None and choose(pols, 10, mix=True).low[0].kind == "p3"
    assert choose(pols, 0.5, mix=True).low[0].kind == "p1"


def test_a_fitted_mix_spends_the_budget_and_replays_as_estimated() -> None:
    data = synthetic(400)
    front = fit_frontier(data, baseline="big", spec=SPEC)
    costs = sorted(sum(c.cost for c in p) / front.base_cost for p in front.by_task or front.policies)
    # A budget between two frontier policies' costs.
    share = next((a + b) / 2 for a, b in itertools.pairwise(costs) if b - a > 0.02)
    spec = {"fit": {**SPEC["fit"], "budget_margin": 1.0}}
    mixed = fit_policy(data, max_cost_share=share, baseline="big", spec=spec)
    plain = fit_policy(data, max_cost_share=share, baseline="big", spec={"fit": {**spec["fit"], "mix": False}})
    assert any("split" in r for r in mixed["routes"].values())
    assert not any("split" in r for r in plain["routes"].values())
    assert mixed["fitted"]["estimated_cost_share"] == pytest.approx(share, abs=1e-3)
    assert mixed["fitted"]["estimated_accuracy"] >= plain["fitted"]["estimated_accuracy"]
    # The hash split realises the mix on the data (in-sample: the estimates of fixed cascades are exact).
    r = simulate(mixed, data, "big")
    assert r.cost_share == pytest.approx(mixed["fitted"]["train_cost_share"], abs=0.03)
