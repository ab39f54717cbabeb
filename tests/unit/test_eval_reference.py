import json
from pathlib import Path

import pytest

from thrifty.evaluation.dataset import load_outcomes
from thrifty.evaluation.metrics import Decision, aggregate, score_decisions
from thrifty.evaluation.reference import (
    best_static_choice,
    oracle_row,
    random_row,
    reference_rows,
    single_model_rows,
)

# Three models, four prompts, two tasks. "big" is right everywhere and costs 1.0;
# "mid" costs 0.1 and is right on q1, q2; "small" costs 0.01 and is right on q1, q4 (task b).
ROWS = [
    ("q1", "a", {"big": 1, "mid": 1, "small": 1}),
    ("q2", "a", {"big": 1, "mid": 1, "small": 0}),
    ("q3", "b", {"big": 1, "mid": 0, "small": 0}),
    ("q4", "b", {"big": 0, "mid": 0, "small": 1}),
]
COST = {"big": 1.0, "mid": 0.1, "small": 0.01}


@pytest.fixture
def data(tmp_path: Path):
    path = tmp_path / "tiny.jsonl"
    with path.open("w") as fh:
        for prompt, task, scores in ROWS:
            outcomes = {m: {"score": s, "response": f"{m} says", "cost": COST[m]} for m, s in scores.items()}
            fh.write(json.dumps({"prompt": prompt, "task": task, "outcomes": outcomes}) + "\n")
    return load_outcomes(path)


def test_single_model_rows(data):
    rows = {r.name: r for r in single_model_rows(data, "big")}
    assert rows["always big"].overall.accuracy == 0.75
    assert rows["always big"].overall.cost == pytest.approx(4.0)
    assert rows["always big"].overall.cost_share == pytest.approx(1.0)
    assert rows["always small"].overall.accuracy == 0.5
    assert rows["always small"].overall.cost_share == pytest.approx(0.01)
    assert rows["always mid"].tasks["a"].accuracy == 1.0
    assert rows["always mid"].tasks["b"].accuracy == 0.0


def test_oracle_takes_the_cheapest_correct_model(data):
    row = oracle_row(data, "big")
    # q1 small, q2 mid, q3 big, q4 small.
    assert row.overall.accuracy == 1.0
    assert row.overall.cost == pytest.approx(0.01 + 0.1 + 1.0 + 0.01)


def test_random_is_the_expected_value(data):
    row = random_row(data, "big")
    assert row.overall.accuracy == pytest.approx((3 / 3 + 2 / 3 + 1 / 3 + 1 / 3) / 4)
    assert row.overall.cost == pytest.approx(4 * (1.11 / 3))


def test_best_static_choice_per_task_breaks_ties_by_cost(data):
    # Task a: big and mid both 2/2, mid is cheaper. Task b: big 1/2, small 1/2: small is cheaper.
    assert best_static_choice(data) == {"a": "mid", "b": "small"}
    names = [r.name for r in reference_rows(data, "big")]
    assert names[:3] == ["oracle", "best per-task model", "random routing"]


def test_decisions_score_the_final_model_and_errors_score_zero(data):
    decisions = [
        Decision("tiny.jsonl", 0, ["small"], "small", 0.01),
        Decision("tiny.jsonl", 1, ["small", "mid"], "mid", 0.11),
        Decision("tiny.jsonl", 2, ["small", "mid", "big"], "big", 1.11),
        Decision("tiny.jsonl", 3, [], None, 0.0, "boom"),
    ]
    base = [i.cost("big") for i in data.items]
    row = aggregate("p", "policy", score_decisions(decisions, data), base)
    assert row.overall.accuracy == 0.75
    assert row.overall.calls_per_prompt == 1.5
    assert row.overall.errors == 1
    assert row.overall.cost_share == pytest.approx(1.23 / 4.0)
    assert decisions[1].to_json() == {"file": "tiny.jsonl", "row": 1, "calls": ["small", "mid"], "final": "mid"}
