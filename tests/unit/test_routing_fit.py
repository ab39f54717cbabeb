"""fit_policy / calibrate / learned router on synthetic outcome data (fast), including the
guarantee that decisions never depend on scores."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fixtures.routing_data import MODELS, SPEC, synthetic, write_jsonl
from thrifty.cli.main import build_app
from thrifty.config import load_config
from thrifty.evaluation.dataset import load_outcomes
from thrifty.routing import build_router
from thrifty.routing.calibrate import Target, calibrate, parse_target
from thrifty.routing.config import parse_routing
from thrifty.routing.fit import fit_many, fit_policy
from thrifty.routing.learned import LearnedRouter, train_router
from thrifty.routing.simulate import decide, simulate


def test_fit_policy_is_loadable_and_cheaper_than_the_baseline() -> None:
    data = synthetic()
    section = fit_policy(data, max_cost_share=0.5, baseline="big", spec=SPEC)
    json.dumps(section)  # JSON-serialisable
    from thrifty.catalog import Catalog, ModelInfo

    router = build_router(section, Catalog([ModelInfo(m, "p", m, None) for m in MODELS]))
    assert router is not None and "route:mc_multi" in router.route_names()
    r = simulate(section, data, "big")
    assert r.cost_share <= 0.5 + 1e-9
    assert section["fitted"]["train_cost_share"] == pytest.approx(r.cost_share, abs=1e-3)
    assert r.accuracy >= 0.8


def test_budgets_are_monotone_and_fit_many_matches() -> None:
    data = synthetic()
    many = fit_many(data, max_cost_shares=[0.05, 0.3, 1.0], baseline="big", spec=SPEC)
    shares = [s["fitted"]["train_cost_share"] for s in many]
    accs = [s["fitted"]["train_accuracy"] for s in many]
    assert shares == sorted(shares) and accs == sorted(accs)
    assert many[1]["routes"] == fit_policy(data, max_cost_share=0.3, baseline="big", spec=SPEC)["routes"]


def test_decisions_do_not_change_when_scores_are_shuffled() -> None:
    data, test = synthetic(seed=1), synthetic(n=60, seed=2)
    section = fit_policy(data, max_cost_share=0.3, baseline="big", spec=SPEC)
    before = [decide(parse_routing(section), i.blind()) for i in test]
    rng = random.Random(0)
    for item in test.items:
        vals = list(item.scores.values())
        rng.shuffle(vals)
        item.scores = dict(zip(item.scores, vals, strict=True))
    assert [decide(parse_routing(section), i.blind()) for i in test] == before


def test_calibrate_meets_a_relative_target() -> None:
    assert parse_target("accuracy>=0.95*baseline") == Target(0.95, True)
    assert parse_target("accuracy >= 0.8") == Target(0.8, False)
    cal = calibrate(synthetic(), Target(0.95, True), baseline="big", spec=SPEC, folds=3,
                    budgets=(0.05, 0.2, 0.5, 1.0))
    assert cal.chosen_budget is not None
    assert cal.cv[-1]["accuracy"] >= cal.required_accuracy
    assert cal.section["fitted"]["calibration"]["met"] is True



def test_calibrate_cli_writes_a_config_that_loads(tmp_path: Path) -> None:
    data_path = tmp_path / "outcomes.jsonl"
    write_jsonl(synthetic(), data_path)
    out = tmp_path / "calibrated.yaml"
    runner = CliRunner()
    res = runner.invoke(build_app(), ["calibrate", "--data", str(data_path), "--out", str(out), "--baseline", "big",
                                      "--folds", "3", "--target", "accuracy>=0.9*baseline"])
    assert res.exit_code == 0, res.output
    assert "CV accuracy" in res.output
    check = runner.invoke(build_app(), ["config", "check", str(out)])
    assert check.exit_code == 0, check.output
    cfg = load_config(out)
    assert build_router(cfg, cfg.build_catalog()) is not None
    explain = runner.invoke(build_app(), ["route", "explain", "Pick one\nA) x\nB) y\nC) z", "--config", str(out)])
    assert explain.exit_code == 0 and "route:  mc_multi  (state table" in explain.output


def test_learned_router_round_trip(tmp_path: Path) -> None:
    data = synthetic(200)
    out = tmp_path / "router.json"
    data_path = tmp_path / "o.jsonl"
    write_jsonl(data, data_path)
    res = CliRunner().invoke(build_app(), ["router", "train", "--data", str(data_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    router = LearnedRouter.load(out)
    assert router.models == MODELS
    again = train_router(load_outcomes(data_path))
    prompt = data.items[0].prompt
    assert router.predict(prompt).keys() == again.predict(prompt).keys()
    p = router.predict(prompt)
    assert p["big"][0] > p["weak"][0] and p["big"][1] == pytest.approx(0.05)
    assert router.choose(prompt, target=0.0).model == "weak"  # cheapest meeting any target
    assert router.choose(prompt, lam=0.0).model == "big"      # most likely right when cost is free
    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {m: {"provider": "p"} for m in MODELS},
        "routing": {"default_route": "l", "routes": {"l": {"learned": {"file": str(out), "target": 0.8}}}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(tmp_path / "c.yaml")
    r = build_router(loaded, loaded.build_catalog())
    assert r is not None
    # The gateway's plan for the prompt is the saved router's choice at the configured target.
    from thrifty.pipeline.context import RequestContext
    from thrifty.types import ChatRequest

    ctx = RequestContext(request=ChatRequest.from_body({"model": "auto",
                                                        "messages": [{"role": "user", "content": prompt}]}))
    plan = r.plan(ctx)
    assert plan is not None and ctx.route == "l"
    assert [t.model for t in plan.tiers] == [router.choose(prompt, target=0.8).model]
