"""The pipeline with in-process test-double providers: retries, fallbacks, cascades, ledger rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thrifty.errors import NotFoundError, UpstreamRateLimitError, UpstreamStatusError, UpstreamTimeoutError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.pipeline.context import Plan, Tier
from thrifty.pipeline.route import RouteStage
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.scoring.base import Score
from thrifty.types import ChatRequest

USAGE = {"prompt_tokens": 1000, "completion_tokens": 1000}


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "backoff_base_s": 0.001, "max_retries": 2}},
        "models": {
            "cheap": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
            "mid": {"provider": "p", "price": {"input": 1, "output": 2}},
            "big": {"provider": "p", "price": {"input": 2.5, "output": 10}, "fallbacks": ["mid"]},
        },
        "ledger": {"path": str(tmp_path / "ledger.db")},
        **extra,
    }


def msgs(text: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def rows(gw: Gateway, sql: str) -> list[tuple[Any, ...]]:
    gw.flush()
    assert gw.config.ledger.path
    return SQLiteStore(gw.config.ledger.path).query(sql)


async def test_retry_after_429_then_success_records_every_attempt(tmp_path: Path) -> None:
    calls = {"n": 0}

    def fn(body: dict[str, Any]) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise UpstreamRateLimitError("p: upstream returned HTTP 429", retry_after=0.01)
        return chat_response(body["model"], "ok", USAGE)

    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(fn)})
    reply = await gw.chat(model="cheap", messages=msgs())
    assert reply["choices"][0]["message"]["content"] == "ok"
    attempts = rows(gw, "SELECT status, model FROM attempts ORDER BY seq")
    assert attempts == [("error", "cheap"), ("ok", "cheap")]
    (cost, base), = rows(gw, "SELECT cost_usd, baseline_cost_usd FROM requests")
    assert cost == pytest.approx((1000 * 0.1 + 1000 * 0.2) / 1e6)
    assert base == pytest.approx((1000 * 2.5 + 1000 * 10) / 1e6)
    await gw.aclose()


async def test_fallback_after_retries_exhausted(tmp_path: Path) -> None:
    def fn(body: dict[str, Any]) -> dict[str, Any]:
        if body["model"] == "big":
            raise UpstreamStatusError("p: upstream returned HTTP 503", status=503)
        return chat_response(body["model"], "from " + body["model"], USAGE)

    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(fn)})
    ctx = await gw.handle(ChatRequest.from_body({"model": "big", "messages": msgs()}))
    assert ctx.served_model == "mid"
    assert [a.model for a in ctx.attempts] == ["big", "big", "big", "mid"]
    await gw.aclose()


async def test_client_errors_are_not_retried_nor_sent_to_fallbacks(tmp_path: Path) -> None:
    prov = FunctionProvider(lambda b: (_ for _ in ()).throw(UpstreamStatusError("bad param", status=400)))
    gw = Gateway.from_config(config(tmp_path), providers={"p": prov})
    with pytest.raises(UpstreamStatusError) as err:
        await gw.chat(model="big", messages=msgs())
    assert err.value.status == 400 and len(prov.calls) == 1
    (status, n), = rows(gw, "SELECT status, n_attempts FROM requests")
    assert (status, n) == ("error", 1)
    await gw.aclose()


async def test_timeout_is_not_retried(tmp_path: Path) -> None:
    prov = FunctionProvider(lambda b: (_ for _ in ()).throw(UpstreamTimeoutError("p: no response within 1s")))
    gw = Gateway.from_config(config(tmp_path), providers={"p": prov})
    with pytest.raises(UpstreamTimeoutError):
        await gw.chat(model="cheap", messages=msgs())
    assert len(prov.calls) == 1
    await gw.aclose()


async def test_unknown_model_is_404_and_recorded_as_error(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(lambda b: chat_response("x", "y"))})
    with pytest.raises(NotFoundError, match="Available models: big, cheap, mid"):
        await gw.chat(model="gpt-9", messages=msgs())
    await gw.aclose()


class FixedScorer:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        return Score(self.scores[response["model"]], f"fixed for {response['model']}")


class PlanRouter:
    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def plan(self, ctx: Any) -> Plan:
        return self._plan


async def _cascade(tmp_path: Path, scores: dict[str, float], max_cost: float | None = None) -> Any:
    prov = FunctionProvider(lambda b: chat_response(b["model"], "answer of " + b["model"], USAGE))
    gw = Gateway.from_config(config(tmp_path), providers={"p": prov})
    plan = Plan(tiers=[Tier("cheap", 0.7), Tier("mid", 0.7), Tier("big")], scorer=FixedScorer(scores),
                max_cost_usd=max_cost)
    route_stage = next(s for s in gw.stages if isinstance(s, RouteStage))
    route_stage.router = PlanRouter(plan)
    ctx = await gw.handle(ChatRequest.from_body({"model": "auto", "messages": msgs()}))
    await gw.aclose()
    return ctx


async def test_cascade_accepts_first_tier_clearing_its_threshold(tmp_path: Path) -> None:
    ctx = await _cascade(tmp_path, {"cheap": 0.2, "mid": 0.9, "big": 1.0})
    assert ctx.served_model == "mid"
    assert [(a.model, a.accepted) for a in ctx.attempts] == [("cheap", False), ("mid", True)]
    # the cascade pays for every call it made
    assert ctx.cost_usd == pytest.approx((300 + 3000) / 1e6)
    assert ctx.strategy == "cascade"


async def test_cascade_last_tier_is_always_accepted(tmp_path: Path) -> None:
    ctx = await _cascade(tmp_path, {"cheap": 0.1, "mid": 0.1, "big": 0.0})
    assert ctx.served_model == "big" and [a.model for a in ctx.attempts] == ["cheap", "mid", "big"]


async def test_cascade_budget_guard_keeps_best_answer(tmp_path: Path) -> None:
    # cheap costs $0.0003; mid would add ~$0.003: a $0.001 cap stops escalation
    ctx = await _cascade(tmp_path, {"cheap": 0.1, "mid": 0.1, "big": 0.0}, max_cost=0.001)
    assert ctx.served_model == "cheap" and len(ctx.attempts) == 1
    assert "budget guard" in (ctx.attempts[0].score_reason or "")
