"""Evaluation honesty on held-out-like data: no in-sample judging, no missing cost read as free,
no missing model read as always wrong (evaluation/hygiene.py, reference.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thrifty.errors import DataError
from thrifty.evaluation.dataset import Item, Outcome, OutcomeSet, load_outcomes
from thrifty.evaluation.evaluate import EvalOptions, Evaluator
from thrifty.evaluation.report import render_text

BASE, CHEAP, OTHER = "big", "small", "medium"
PROMPT = "What is two plus two? Answer with a number."


def _item(file: str, row: int, outcomes: dict[str, tuple[float, float | None]], prompt: str = PROMPT,
          task: str = "math") -> Item:
    """``outcomes``: model -> (score, cost or None)."""
    return Item(file, row, [{"role": "user", "content": prompt}], task,
                {m: Outcome("The answer is 4.", c) for m, (_, c) in outcomes.items()},
                {m: s for m, (s, _) in outcomes.items()})


def _options(**kw: Any) -> EvalOptions:
    return EvalOptions(baseline=BASE, sweep=(), progress=False, concurrency=4, **kw)


def _run(data: OutcomeSet, **kw: Any) -> Any:
    return Evaluator(data, {}, _options(fit=False), **kw).run()


class _Stub:
    """A fitter that remembers what it was fitted on and sends everything to the baseline."""

    def __init__(self) -> None:
        self.seen: list[OutcomeSet] = []

    def __call__(self, train: OutcomeSet, *, max_cost_share: float | None, baseline: str,
                 spec: dict[str, Any]) -> dict[str, Any]:
        self.seen.append(train)
        return {}


def _distinct(file: str, n: int, start: int = 0) -> list[Item]:
    return [_item(file, i, {BASE: (1.0, 0.01), CHEAP: (0.0, 0.001)}, prompt=f"Question {start + i}: what is {i}+1?")
            for i in range(n)]


def test_data_prompts_also_in_train_are_left_out_of_the_judged_set() -> None:
    data = OutcomeSet(_distinct("test.csv", 6), [BASE, CHEAP])
    # Two of the judged prompts are in the training file too (another file name, same text).
    train = OutcomeSet(_distinct("train.csv", 10, start=100) + _distinct("train.csv", 2), [BASE, CHEAP])
    fitter = _Stub()
    result = Evaluator(data, {}, _options(), train=train, fit_fn=fitter).run()
    assert result.prompts == 4
    assert {d.row for d in result.decisions} == {2, 3, 4, 5}
    assert any("2 of the 6 --data prompts are also --train prompts" in w for w in result.warnings)
    assert fitter.seen and all(len(s) == 12 for s in fitter.seen)


def test_judging_only_training_prompts_is_a_data_error() -> None:
    data = OutcomeSet(_distinct("a.csv", 5), [BASE, CHEAP])
    train = OutcomeSet(_distinct("b.csv", 5), [BASE, CHEAP])
    with pytest.raises(DataError, match="judged on the prompts it was fitted on"):
        Evaluator(data, {}, _options(), train=train, fit_fn=_Stub())


def test_a_missing_cost_is_estimated_not_counted_as_free() -> None:
    # Same prompt and answer on every row: every recorded cheap call cost $0.001, so the two
    # rows with no recorded cost (an empty or "nan" cell) cost the same when estimated.
    items = [_item("f.csv", i, {BASE: (1.0, 0.01), CHEAP: (1.0, None if i >= 8 else 0.001)}) for i in range(10)]
    result = _run(OutcomeSet(items, [BASE, CHEAP]))
    assert result.row(f"always {CHEAP}").overall.cost == pytest.approx(0.010, rel=1e-3)
    assert result.row("oracle").overall.cost == pytest.approx(0.010, rel=1e-3)
    assert any("2 outcomes had no recorded cost" in w for w in result.warnings)


def test_usage_only_outcomes_of_an_unpriced_model_are_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    rows = [{"prompt": f"q{i}", "outcomes": {
        BASE: {"score": 1, "response": "4", "cost": 0.01},
        "acme/unpriced-7b": {"score": 1, "response": "4", "usage": {"prompt_tokens": 9, "completion_tokens": 1}}}}
        for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match="no known price for acme/unpriced-7b"):
        _run(load_outcomes(path))


def test_a_model_missing_from_some_files_is_judged_on_the_prompts_that_have_it() -> None:
    # Folder of two files: the second has no column for OTHER (merged models are the union).
    full = [_item("a.csv", i, {BASE: (1.0, 0.01), CHEAP: (0.0, 0.001), OTHER: (1.0, 0.002)}) for i in range(4)]
    part = [_item("b.csv", i, {BASE: (1.0, 0.01), CHEAP: (0.0, 0.001)}) for i in range(4)]
    result = _run(OutcomeSet(full + part, [BASE, CHEAP, OTHER]))
    other = result.row(f"always {OTHER}")
    assert other.overall.prompts == 4
    assert other.overall.accuracy == pytest.approx(1.0)  # not 0.5: missing is not "wrong"
    assert other.overall.cost_share == pytest.approx(0.2)  # not 0.1: missing is not "free"
    assert f"always {OTHER} (on 4 prompts)" in render_text(result)
    # The best per-task model must be one recorded on all of the task's prompts.
    assert result.row("best per-task model").overall.accuracy == pytest.approx(1.0)
    assert OTHER not in result.row("best per-task model").note


def test_a_baseline_missing_on_some_prompts_is_a_data_error() -> None:
    items = [_item("a.csv", 0, {BASE: (1.0, 0.01), CHEAP: (1.0, 0.001)}),
             _item("b.csv", 0, {CHEAP: (1.0, 0.001)})]
    with pytest.raises(DataError, match="no outcome on 1 of the 2 prompts"):
        _run(OutcomeSet(items, [BASE, CHEAP]))


def test_models_of_train_missing_from_data_are_named() -> None:
    data = OutcomeSet([_item("t.csv", i, {BASE: (1.0, 0.01)}, prompt=f"q {i}") for i in range(3)], [BASE])
    train = OutcomeSet(_distinct("train.csv", 4, start=50), [BASE, CHEAP])
    result = Evaluator(data, {}, _options(), train=train, fit_fn=_Stub()).run()
    assert any(f"no outcome on some --data prompts: {CHEAP} (3)" in w for w in result.warnings)


def _pairs_file(path: Path, pairs: list[tuple[str, str, int]]) -> Path:
    path.write_text("".join(json.dumps({"label": y, "text_b": b, "text_a": a, "id": i}) + "\n"
                            for i, (a, b, y) in enumerate(pairs)), encoding="utf-8")
    return path


def test_cache_eval_leaves_out_calibration_pairs_in_either_text_order() -> None:
    from thrifty.cache.evaluation import keep_out_of_sample
    from thrifty.cache.pairs import Pair

    judged = [Pair("how old is the sun?", "what is the age of the sun?", 1), Pair("a b", "c d", 0),
              Pair("x  y", "z", 0)]
    calibration = [Pair("what is the age of the sun?", "how old is the sun?", 1), Pair("x y", "z", 1)]
    kept, _, warning = keep_out_of_sample(judged, calibration)
    assert kept == [judged[1]]
    assert warning is not None and "2 of the 3 --pairs" in warning


def test_cache_eval_refuses_to_judge_on_its_own_calibration_pairs(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures.cli_run import assert_one_line, run_main

    pairs = [(f"how do I learn topic {i}?", f"what is the best way to learn topic {i}?", 1) for i in range(6)]
    pairs += [(f"where is city {i}?", f"what does city {i} eat?", 0) for i in range(6)]
    path = _pairs_file(tmp_path / "pairs.jsonl", pairs)
    code, _, err = run_main(capsys, "cache", "eval", "--pairs", str(path), "--calibrate-on", str(path),
                            "--embedder", "lexical", "--model", "cosine")
    assert_one_line(code, err, "fitted on")


def test_eval_cli_refuses_train_equal_to_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures.cli_run import assert_one_line, run_main

    path = tmp_path / "mine_test.jsonl"
    rows = [{"prompt": f"Question {i}: what is {i}+1?", "task": "math",
             "outcomes": {BASE: {"score": 1, "response": str(i + 1), "cost": 0.01},
                          CHEAP: {"score": 0, "response": "0", "cost": 0.001}}} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, _, err = run_main(capsys, "eval", "--train", str(path), "--data", str(path), "--baseline", BASE,
                            "--sweep", "none", "--quiet")
    assert_one_line(code, err, "fitted on")


def test_calibrate_and_router_train_estimate_missing_costs(tmp_path: Path) -> None:
    from thrifty.cli import route_cmd

    path = tmp_path / "o.jsonl"
    rows = [{"prompt": PROMPT, "outcomes": {BASE: {"score": 1, "response": "4", "cost": 0.01},
                                            CHEAP: {"score": 1, "response": "4", "cost": None if i == 3 else 0.001}}}
            for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = route_cmd._load_data(str(path))
    assert loaded.items[3].cost(CHEAP) == pytest.approx(0.001, rel=1e-3)


@pytest.mark.parametrize("splitter", ["eval", "calibrate"])
def test_repeated_prompts_share_a_cross_validation_fold(splitter: str) -> None:
    from thrifty.evaluation.cv import kfold
    from thrifty.routing.calibrate import kfold_indices

    # 30 distinct questions, each asked twice (once with different spacing) in another task file.
    items = [_item("a.csv", i, {BASE: (1.0, 0.01)}, prompt=f"Question {i}: what is {i}+1?", task="a")
             for i in range(30)]
    items += [_item("b.csv", i, {BASE: (1.0, 0.01)}, prompt=f"Question {i}:  what is {i}+1? ", task="b")
              for i in range(30)]
    data = OutcomeSet(items, [BASE])
    folds = kfold(data, 5, seed=1) if splitter == "eval" else kfold_indices(data, 5, 1)
    for train, test in folds:
        assert test and not {i % 30 for i in train} & {i % 30 for i in test}
    assert sorted(i for _, test in folds for i in test) == list(range(60))


def test_budget_warning_blames_missing_models_when_they_are_the_cause() -> None:
    from thrifty.evaluation.budget_check import budget_warning
    from thrifty.evaluation.metrics import Row, Stats

    section = {"max_cost_share": 0.25, "fitted": {"train_cost_share": 0.2, "families": {"open": "baseline"}}}
    row = Row("thrifty", "policy", Stats(10, 0.9, 8.0, 0.8, 1.0))
    said = budget_warning([section], row, "models of --train are missing from --data")
    assert said is not None and said.endswith("models of --train are missing from --data")
    assert "min_family_prompts" in (budget_warning([section], row) or "")
