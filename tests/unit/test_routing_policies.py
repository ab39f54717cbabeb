"""Cascades through the real pipeline: tiers + scorers, agreement, learned tables, judge,
budget guard, streaming, and the ledger's attempt rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

MC = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
USAGE = {"prompt_tokens": 100, "completion_tokens": 10}


def make(tmp_path: Path, routes: dict[str, Any], answers: dict[str, str]) -> tuple[Gateway, list[str]]:
    seen: list[str] = []

    def fn(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body["model"])
        return chat_response(body["model"], answers[body["model"]], USAGE)

    cfg = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {m: {"provider": "p", "price": {"input": p, "output": p}}
                   for m, p in (("a", 0.1), ("b", 0.2), ("c", 0.3), ("judge", 0.05), ("big", 10.0))},
        "baseline": "big",
        "ledger": {"path": str(tmp_path / "l.db")},
        "routing": {"default_route": "r", "routes": {"r": routes}},
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(fn)}), seen


def attempts(gw: Gateway) -> list[tuple[Any, ...]]:
    gw.flush()
    assert gw.config.ledger.path
    return SQLiteStore(gw.config.ledger.path).query(
        "SELECT model, purpose, score, score_reason, accepted FROM attempts ORDER BY seq")


TIERS = {"tiers": [{"model": "a", "threshold": 0.8}, {"model": "big"}]}


async def test_cascade_accepts_a_good_cheap_answer(tmp_path: Path) -> None:
    gw, seen = make(tmp_path, TIERS, {"a": "B", "big": "B"})
    reply = await gw.chat(model="auto", messages=[{"role": "user", "content": MC}])
    assert seen == ["a"] and reply["choices"][0]["message"]["content"] == "B"
    assert attempts(gw) == [("a", "answer", 0.9, "option B", 1)]


async def test_cascade_escalates_and_counts_every_call(tmp_path: Path) -> None:
    gw, seen = make(tmp_path, TIERS, {"a": "Whales are nice.", "big": "B"})
    ctx = await gw.handle(ChatRequest.from_body({"model": "auto", "messages": [{"role": "user", "content": MC}]}))
    assert seen == ["a", "big"] and ctx.served_model == "big" and ctx.strategy == "cascade"
    rows = attempts(gw)
    assert rows[0][:3] == ("a", "answer", 0.2) and "escalate" in rows[0][3] and rows[0][4] == 0
    assert rows[1][0] == "big" and rows[1][4] == 1
    assert ctx.cost_usd == pytest.approx(sum(a.cost_usd or 0 for a in ctx.attempts))
    assert ctx.cost_usd > ctx.attempts[1].cost_usd  # type: ignore[operator]


async def test_budget_guard_keeps_the_cheap_answer(tmp_path: Path) -> None:
    gw, seen = make(tmp_path, {**TIERS, "max_cost_usd": 0.0001}, {"a": "nothing useful", "big": "B"})
    await gw.chat(model="auto", messages=[{"role": "user", "content": MC}])
    assert seen == ["a"]
    assert "budget guard" in attempts(gw)[0][3]


@pytest.mark.parametrize(("answers", "calls", "served"), [
    ({"a": "B", "b": "(b)", "big": "C"}, ["a", "b"], "B"),
    ({"a": "B", "b": "A", "big": "C"}, ["a", "b", "big"], "C"),
    # a and b are asked at once (both are always called but after an unusable answer): b's
    # answer, paid for, is left out; in turn (parallel: false) b was never called.
    ({"a": "I cannot tell", "b": "B", "big": "C"}, ["a", "b", "big"], "C"),
])
async def test_agreement_cascade(tmp_path: Path, answers: dict[str, str], calls: list[str], served: str) -> None:
    gw, seen = make(tmp_path, {"agreement": {"models": ["a", "b"], "fallback": "big"}}, answers)
    reply = await gw.chat(model="auto", messages=[{"role": "user", "content": MC}])
    assert seen == calls and reply["choices"][0]["message"]["content"] == served


async def test_state_table_with_raw_letters(tmp_path: Path) -> None:
    # Learned table: model a says "A" for nearly everything (position bias): only trust a "B".
    table = {"": "next", "A": "strong", "B": "stop:0", "x": "next", "x,A": "stop:1", "x,B": "strong", "x,x": "strong"}
    route = {"state_table": {"order": ["a", "b"], "table": table, "strong": "big", "raw_letters": True}}
    gw, seen = make(tmp_path, route, {"a": "A", "b": "B", "big": "B"})
    await gw.chat(model="auto", messages=[{"role": "user", "content": MC}])
    assert seen == ["a", "big"]
    rows = attempts(gw)
    assert rows[0][3] == "answer 'A'" and rows[0][4] == 0 and "pattern 'A' -> strong" in rows[1][3]


async def test_judge_scorer_calls_are_in_the_ledger(tmp_path: Path) -> None:
    route = {"tiers": [{"model": "a", "threshold": 0.7}, {"model": "big"}],
             "scorer": {"kind": "judge", "judge_model": "judge"}}
    gw, seen = make(tmp_path, route, {"a": "Paris is the capital.", "judge": "8", "big": "Paris"})
    reply = await gw.chat(model="auto", messages=[{"role": "user", "content": "Capital of France?"}])
    assert seen == ["a", "judge"] and reply["choices"][0]["message"]["content"] == "Paris is the capital."
    rows = attempts(gw)
    assert rows[1][:3] == ("judge", "judge", 0.8)
    assert rows[0][2] == 0.8 and rows[0][4] == 1


async def test_cascade_streams_the_accepted_answer(tmp_path: Path) -> None:
    gw, seen = make(tmp_path, TIERS, {"a": "nothing", "big": "B"})
    ctx = await gw.handle(ChatRequest.from_body({"model": "auto", "stream": True,
                                                 "messages": [{"role": "user", "content": MC}]}))
    assert ctx.chunks is not None
    text = "".join([(c["choices"][0]["delta"].get("content") or "") async for c in ctx.chunks if c.get("choices")])
    assert text == "B" and seen == ["a", "big"]
