"""Heuristic, logprob, agreement and combined scorers."""

from __future__ import annotations

from typing import Any

import pytest

from thrifty.providers.function import chat_response
from thrifty.scoring.agreement import agreement_score
from thrifty.scoring.base import CombinedScorer
from thrifty.scoring.heuristics import HeuristicScorer
from thrifty.scoring.jsonschema import schema_problems
from thrifty.scoring.logprob import LogprobScorer
from thrifty.types import ChatRequest

MC = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"


def req(text: str, **params: Any) -> ChatRequest:
    return ChatRequest(model="auto", messages=[{"role": "user", "content": text}], params=params)


async def score(text: str, request: ChatRequest, **kw: Any) -> tuple[float, str]:
    s = await HeuristicScorer(**kw).score(request, chat_response("m", text))
    return s.value, s.reason


async def test_empty_short_and_refusal_answers_score_low() -> None:
    assert (await score("", req("hi")))[0] == 0.0
    assert (await score("ok", req("hi"), min_chars=10))[0] == 0.1
    value, reason = await score("I'm sorry, I can't help with that request at all.", req("explain X"))
    assert value < 0.2 and "refusal" in reason


async def test_option_letter_expected_for_multiple_choice() -> None:
    assert (await score("B", req(MC)))[0] == 0.9
    value, reason = await score("Whales are interesting animals.", req(MC))
    assert value == 0.2 and "no option" in reason


async def test_json_and_schema() -> None:
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert (await score('{"name": "a"}', req("give json", response_format=fmt)))[0] == 0.9
    # A fence is allowed when the scorer's config expects JSON, not under a JSON response_format
    # (the client json.loads the content: tests/integration/test_cascade_structured.py).
    assert (await score('```json\n{"name": "a"}\n```', req("give json"), expect="json"))[0] == 0.9
    value, reason = await score('```json\n{"name": "a"}\n```', req("give json", response_format={"type": "json_object"}))
    assert value == 0.05 and "not bare JSON" in reason
    value, reason = await score('{"nom": 1}', req("give json", response_format=fmt))
    assert value == 0.2 and "missing 'name'" in reason
    assert (await score("{not json", req("x"), expect="json"))[0] == 0.05


async def test_code_must_parse() -> None:
    prompt = req("Write a python function to add two numbers.")
    assert (await score("```python\ndef add(a, b):\n    return a + b\n```", prompt))[0] == 0.85
    assert (await score("```python\ndef add(a, b) return\n```", prompt))[0] == 0.2


async def test_cut_off_answer_is_penalised() -> None:
    resp = chat_response("m", "B")
    resp["choices"][0]["finish_reason"] = "length"
    s = await HeuristicScorer().score(req(MC), resp)
    assert s.value == pytest.approx(0.54) and "cut off" in s.reason


def test_schema_problems() -> None:
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    assert schema_problems([1, 2], schema) == []
    assert schema_problems([1, -1, "x"], schema) == ["$[1]: below 0", "$[2]: expected integer"]
    assert schema_problems(True, {"type": "integer"}) == ["$: expected integer"]


def test_a_clients_catastrophic_pattern_cannot_stall_the_check() -> None:
    """A schema's pattern is the client's, run against a model's answer on the event loop: one
    that backtracks forever (`^(a|a)*$` on 30 a's and a "!": seconds, doubling per character)
    is cut at the answer's budget and reported, so the cascade escalates instead of stalling."""
    import time

    from thrifty.scoring.jsonschema import PATTERN_BUDGET_S

    schema = {"type": "array", "items": {"type": "string", "pattern": "^(a|a)*$"}}
    started = time.monotonic()
    problems = schema_problems(["a" * 30 + "!"] * 20, schema)
    assert time.monotonic() - started < PATTERN_BUDGET_S + 0.5  # one budget for the whole answer
    assert problems and "too costly to check" in problems[0]
    names = {"type": "object", "patternProperties": {"^(a|aa)+$": {"type": "integer"}}}
    assert "too costly" in schema_problems({"a" * 40 + "!": 1}, names)[0]
    assert schema_problems({"aa": 1}, names) == [] and schema_problems({"aa": "x"}, names) == ["$.aa: expected integer"]
    assert schema_problems("abc", {"type": "string", "pattern": "^a"}) == []
    assert schema_problems("xbc", {"type": "string", "pattern": "^a"}) == ["$: does not match (pattern '^a')"]


def test_a_schema_with_big_integers_still_checks_and_problems_are_bounded() -> None:
    assert schema_problems(5, {"type": "integer", "maximum": 10**20}) == []
    assert schema_problems(10**21, {"type": "integer", "maximum": 10**20})[0].startswith("$: above")
    assert len(schema_problems(["x"] * 1000, {"type": "array", "items": {"type": "integer"}})) == 3


async def test_logprob_scorer() -> None:
    resp = chat_response("m", "B")
    assert (await LogprobScorer().score(req("x"), resp)).value == 0.5
    resp["choices"][0]["logprobs"] = {"content": [{"token": "B", "logprob": -0.1}, {"token": ".", "logprob": -0.3}]}
    s = await LogprobScorer().score(req("x"), resp)
    assert s.value == pytest.approx(0.8187, abs=1e-4)


def test_agreement_score() -> None:
    assert agreement_score("mc_multi", ["B", "(b) whale", "C"]).value == pytest.approx(2 / 3, abs=1e-3)
    assert agreement_score("mc_multi", ["no idea", ""]).value == 0.0


async def test_combined_takes_the_minimum() -> None:
    s = await CombinedScorer([HeuristicScorer(), LogprobScorer()]).score(req(MC), chat_response("m", "B"))
    assert s.value == 0.5 and "logprobs" in s.reason


async def test_learned_scorer_round_trip(tmp_path: Any) -> None:
    from thrifty.evaluation.dataset import Item, Outcome, OutcomeSet
    from thrifty.scoring.learned import LearnedScorer, train_scorer

    items = [Item("f", i, [{"role": "user", "content": MC}], None,
                  {"good": Outcome("B"), "bad": Outcome("I'm sorry, no idea")}, {"good": 1.0, "bad": 0.0})
             for i in range(30)]
    scorer = train_scorer(OutcomeSet(items, ["good", "bad"]))
    scorer.save(tmp_path / "s.json")
    loaded = LearnedScorer.load(tmp_path / "s.json")
    hi = await loaded.score(req(MC), chat_response("good", "B"))
    lo = await loaded.score(req(MC), chat_response("bad", "I'm sorry, no idea"))
    assert hi.value > 0.7 > 0.3 > lo.value


async def test_json_mode_wants_an_object_not_any_json_value() -> None:
    """`response_format: json_object` always answers an object and clients index into it: a
    bare number or string is valid JSON but not a usable answer, so it escalates."""
    mode = req("How many legs does a spider have? Reply in JSON.", response_format={"type": "json_object"})
    for bare in ("8", '"eight"', "[8]"):
        value, reason = await score(bare, mode)
        assert value < 0.5 and "not a JSON object" in reason, bare
    assert (await score('{"legs": 8}', mode))[0] >= 0.9
