"""The routing audit's fixes over real HTTP: mock upstream <- thrifty gateway <- openai SDK.
A tool-call answer is accepted at the cheap tier; logprobs asked for scoring never reach a
client that did not ask; a route's budget refuses an unaffordable call with a 400; a failed
tier followed by the next one serving is one escalation; agreeing cheap answers are none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from fixtures.routed import client, routed_gateway
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.mock.server import RunningServer

MC = "Which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
MOCK = {"models": {
    "cheap": {"answers": [{"pattern": "Which option", "answer": "B"}]},
    "cheap2": {"answers": [{"pattern": "Which option", "answer": "(b) whale"}]},
    "toolm": {"tool_calls": "always"},
    "bad": {"faults": {"status": 500}},
    "big": {"answers": [{"pattern": "Which option", "answer": "B"}]},
}}


ROUTING: dict[str, Any] = {
    "default_route": "tool",
    "routes": {
        "tool": {"tiers": [{"model": "toolm", "threshold": 0.5}, {"model": "big"}]},
        "lp": {"tiers": [{"model": "cheap", "threshold": 0.01}, {"model": "big"}],
               "scorer": {"kind": "logprob"}},
        "fail": {"tiers": [{"model": "bad", "threshold": 0.5}, {"model": "big"}]},
        "budget": {"model": "big", "max_cost_usd": 1e-9},
        "agree": {"agreement": {"models": ["cheap", "cheap2"], "fallback": "big"}},
    },
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer]]:
    with routed_gateway(tmp_path_factory.mktemp("routing-audit"), MOCK, {"cheap": 0.1, "cheap2": 0.2, "toolm": 0.1, "bad": 0.1, "big": 10.0}, "big",
                        ROUTING) as served:
        yield served


def ledger_row(gw: Gateway, request_id: str) -> tuple[Any, ...]:
    gw.flush()
    assert gw.config.ledger.path
    (row,) = SQLiteStore(gw.config.ledger.path).query(
        "SELECT strategy, escalations, served_model, status FROM requests WHERE request_id = ?", [request_id])
    return tuple(row)


def test_a_tool_call_is_served_from_the_cheap_tier(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    raw = client(server).chat.completions.with_raw_response.create(
        model="route:tool", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS)
    reply = raw.parse()
    assert reply.choices[0].message.tool_calls and reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert raw.headers["x-thrifty-model"] == "toolm"
    assert ledger_row(gw, raw.headers["x-thrifty-request-id"]) == ("cascade", 0, "toolm", "ok")


def test_scoring_logprobs_do_not_reach_the_client(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    c = client(server)
    plain = c.chat.completions.create(model="route:lp", messages=[{"role": "user", "content": MC}])
    assert plain.choices[0].logprobs is None
    asked = c.chat.completions.create(model="route:lp", messages=[{"role": "user", "content": MC}], logprobs=True)
    assert asked.choices[0].logprobs is not None and asked.choices[0].logprobs.content


def test_a_route_budget_refuses_the_call_with_a_400(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model="route:budget", messages=[{"role": "user", "content": MC}])
    assert err.value.code == "route_budget_exceeded" and "max_cost_usd of route 'budget'" in str(err.value)


def test_escalations_count_levels_moved_past(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    c = client(server)
    failed_then_big = c.chat.completions.with_raw_response.create(
        model="route:fail", messages=[{"role": "user", "content": MC}])
    assert ledger_row(gw, failed_then_big.headers["x-thrifty-request-id"]) == ("cascade", 1, "big", "ok")
    agreeing = c.chat.completions.with_raw_response.create(model="route:agree", messages=[{"role": "user", "content": MC}])
    assert ledger_row(gw, agreeing.headers["x-thrifty-request-id"]) == ("cascade", 0, "cheap", "ok")
