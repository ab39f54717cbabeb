"""Fitting a policy per task label (routing.fit ``by_task``): tasks that share a prompt format
but want different models each get their own route; prompts without a known label keep the
per-format routes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from thrifty.evaluation.dataset import load_outcomes
from thrifty.routing.fit import fit_policy, task_route
from thrifty.routing.simulate import simulate

# P(right) per task: each cheap model is good at one task only; the baseline at both.
SKILL = {"alpha": {"a-cheap": 0.95, "b-cheap": 0.2, "big": 0.97},
         "beta": {"a-cheap": 0.2, "b-cheap": 0.95, "big": 0.97}}
COST = {"a-cheap": 1e-6, "b-cheap": 1e-6, "big": 3e-5}


def outcomes(path: Path, n: int = 120, seed: int = 3, labelled: bool = True) -> Path:
    rng = random.Random(seed)
    rows = []
    for task in SKILL:
        for i in range(n):
            right = f"The answer to {task} question {i} is {rng.randint(0, 999)}."
            out = {}
            for m, p in SKILL[task].items():
                ok = rng.random() < p
                out[m] = {"score": float(ok), "response": right if ok else f"Not sure ({m}, {i}).", "cost": COST[m]}
            row = {"prompt": f"Please answer {task} question number {i} in one sentence.", "outcomes": out}
            if labelled:
                row["task"] = task
            rows.append(row)
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_each_label_gets_the_model_good_at_it(tmp_path: Path) -> None:
    train = load_outcomes(outcomes(tmp_path / "train.jsonl"))
    test = load_outcomes(outcomes(tmp_path / "test.jsonl", seed=4))
    by_task = fit_policy(train, max_cost_share=0.10, baseline="big")
    by_format = fit_policy(train, max_cost_share=0.10, baseline="big", spec={"fit": {"by_task": False}})
    assert by_task["tasks"] == {"alpha": "alpha", "beta": "beta"} and "tasks" not in by_format
    assert by_task["routes"]["alpha"]["state_table"]["order"][0] == "a-cheap"
    assert by_task["routes"]["beta"]["state_table"]["order"][0] == "b-cheap"
    per_task, per_format = simulate(by_task, test, "big"), simulate(by_format, test, "big")
    assert per_task.cost_share <= 0.12 and per_format.cost_share <= 0.12
    assert per_task.accuracy > per_format.accuracy + 0.15, (per_task, per_format)
    # Without a label, a prompt takes its format's route, fitted on every prompt of that format.
    unlabelled = load_outcomes(outcomes(tmp_path / "plain.jsonl", seed=4, labelled=False))
    assert simulate(by_task, unlabelled, "big").accuracy == pytest.approx(
        simulate(by_format, unlabelled, "big").accuracy)


def test_a_label_named_like_a_format_route_gets_its_own_name() -> None:
    assert task_route("open") == "task:open" and task_route("strong") == "task:strong"
    assert task_route("support-faq") == "support-faq"


def test_labels_with_too_few_prompts_stay_with_their_format(tmp_path: Path) -> None:
    train = load_outcomes(outcomes(tmp_path / "train.jsonl", n=20))  # under min_family_prompts (30) each
    section = fit_policy(train, max_cost_share=0.10, baseline="big")
    # (a format's route may split a share of its prompts to a second route of its own, "open-mix")
    assert "tasks" not in section and {r.removesuffix("-mix") for r in section["routes"]} <= {"strong", "open"}


def test_a_label_named_like_a_format_does_not_take_that_formats_unlabelled_prompts(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # "open" is a team's label here and the format of every prompt. The router looks a prompt's
    # format up in the same `tasks:` map as a label, so `tasks: {open: task:open}` sent every
    # unlabelled prompt to the label's policy (b-cheap), not to the format's (fitted on all).
    monkeypatch.setitem(SKILL, "beta", SKILL["alpha"])  # the big task: a-cheap is good at it
    monkeypatch.setitem(SKILL, "open", {"a-cheap": 0.2, "b-cheap": 0.95, "big": 0.97})
    monkeypatch.delitem(SKILL, "alpha")
    train = load_outcomes(outcomes(tmp_path / "train.jsonl"))
    section = fit_policy(train, max_cost_share=0.10, baseline="big")
    assert "open" not in section.get("tasks", {}) and "task:open" not in section["routes"]
    plain = [json.loads(line) for line in outcomes(tmp_path / "p.jsonl", seed=4, labelled=False).open()]
    (tmp_path / "beta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain if "beta" in r["prompt"]))
    unlabelled = load_outcomes(tmp_path / "beta.jsonl")
    assert simulate(section, unlabelled, "big").accuracy > 0.8
