"""The cache stage in the real pipeline with an in-process provider: hits, misses, bypass,
per-request controls, streams, errors, tenants, concurrency and the ledger rows."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from thrifty.errors import UpstreamStatusError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}


def config(tmp_path: Path, **cache: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {
            "cheap": {"provider": "p", "price": {"input": 1, "output": 2}},
            "other": {"provider": "p", "price": {"input": 1, "output": 2}},
            "big": {"provider": "p", "price": {"input": 10, "output": 20}},
        },
        "baseline": "big",
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "cache": {"path": str(tmp_path / "cache.db"), **cache},
    }


class Upstream:
    """Answers with a text derived from the request, counting calls; can fail or be slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = False
        self.tool_call = False

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise UpstreamStatusError("p: upstream returned HTTP 500", status=500)
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        resp = chat_response(body["model"], f"{system}|{body['messages'][-1]['content']}|{self.calls}", USAGE)
        if self.tool_call:
            resp["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
            resp["choices"][0]["finish_reason"] = "tool_calls"
        return resp


def make(tmp_path: Path, upstream: Upstream | None = None, **cache: Any) -> tuple[Gateway, Upstream]:
    up = upstream or Upstream()
    return Gateway.from_config(config(tmp_path, **cache), providers={"p": FunctionProvider(up)}), up


def body(text: str = "What is the capital of France?", **kw: Any) -> dict[str, Any]:
    return {"model": kw.pop("model", "cheap"), "temperature": kw.pop("temperature", 0),
            "messages": [{"role": "system", "content": kw.pop("system", "Be terse.")},
                         {"role": "user", "content": text}], **kw}


async def ask(gw: Gateway, tenant: str = "t1", headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return await gw.handle(ChatRequest.from_body(body(**kw)), tenant=tenant, headers=headers)


async def drain(ctx: Any) -> list[dict[str, Any]]:
    return [c async for c in ctx.chunks]


def content(ctx: Any) -> str:
    return str(ctx.response["choices"][0]["message"]["content"])


async def test_miss_then_hit_costs_nothing_and_records_what_it_saved(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    first = await ask(gw)
    second = await ask(gw)
    assert (first.cache_status, second.cache_status) == ("miss", "hit")
    assert second.response_headers["x-thrifty-cache"] == "hit"
    assert content(first) == content(second) and up.calls == 1
    assert second.cost_usd == 0.0 and second.strategy == "cache"
    assert second.cache_saved_usd == pytest.approx(first.cost_usd)
    assert second.baseline_cost_usd == pytest.approx((1000 * 10 + 500 * 20) / 1e6)
    assert second.response["usage"]["prompt_tokens"] == 1000
    gw.flush()
    rows = SQLiteStore(str(tmp_path / "ledger.db")).query(
        "SELECT cache_status, cost_usd, cache_saved_usd, strategy FROM requests ORDER BY ts")
    assert [r[0] for r in rows] == ["miss", "hit"]
    assert rows[1][1:] == (0.0, pytest.approx(first.cost_usd), "cache")
    await gw.aclose()


@pytest.mark.parametrize("change", [
    {"system": "Be verbose."}, {"model": "other"}, {"max_tokens": 10}, {"seed": 3}, {"top_p": 0.5},
    {"response_format": {"type": "json_object"}}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"text": "What is the capital of France?!"},
])
async def test_anything_that_changes_the_answer_misses(tmp_path: Path, change: dict[str, Any]) -> None:
    gw, up = make(tmp_path)
    await ask(gw)
    ctx = await ask(gw, **change)
    assert ctx.cache_status == "miss" and up.calls == 2
    await gw.aclose()


async def test_neutral_parameters_still_hit(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    await ask(gw, user="alice")
    ctx = await ask(gw, user="bob", metadata={"trace": "x"})
    assert ctx.cache_status == "hit" and up.calls == 1
    await gw.aclose()


async def test_one_tenant_never_gets_another_tenants_answer(tmp_path: Path) -> None:
    gw, up = make(tmp_path, semantic={"enabled": True})
    a = await ask(gw, tenant="alice")
    b = await ask(gw, tenant="bob")
    b_sem = await ask(gw, tenant="carol", text="what is the capital of france")
    assert [a.cache_status, b.cache_status, b_sem.cache_status] == ["miss", "miss", "miss"]
    assert up.calls == 3 and content(a) != content(b)
    assert (await ask(gw, tenant="alice")).cache_status == "hit"
    # The reworded question does hit semantically within a tenant, so carol's miss was the tenant.
    own = await ask(gw, tenant="alice", text="what is the capital of france")
    assert own.cache_status == "hit" and own.response_headers["x-thrifty-cache-match"] == "semantic"
    assert content(own) == content(a) and up.calls == 3
    await gw.aclose()


async def test_non_deterministic_requests_bypass_unless_opted_in(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    ctx = await ask(gw, temperature=0.7)
    assert ctx.cache_status == "bypass" and ctx.response_headers["x-thrifty-cache"] == "bypass"
    await ask(gw, temperature=0.7, cache=True)
    assert (await ask(gw, temperature=0.7, cache=True)).cache_status == "hit"
    assert up.calls == 2
    await gw.aclose()


async def test_route_can_opt_in_to_non_deterministic_caching(tmp_path: Path) -> None:
    gw, up = make(tmp_path, routes={"cheap": {"require_deterministic": False, "ttl_s": 60}})
    await ask(gw, temperature=1.0)
    assert (await ask(gw, temperature=1.0)).cache_status == "hit" and up.calls == 1
    await gw.aclose()


async def test_per_request_controls(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    assert (await ask(gw, cache=False)).cache_status == "bypass"
    assert (await ask(gw, thrifty={"cache": False})).cache_status == "bypass"
    assert (await ask(gw, headers={"x-thrifty-cache": "no-store"})).cache_status == "bypass"
    assert (await ask(gw, headers={"cache-control": "no-store"})).cache_status == "bypass"
    assert up.calls == 4
    # Nothing was stored by those; no-cache refreshes (calls upstream, stores the new answer).
    refreshed = await ask(gw, headers={"x-thrifty-cache": "no-cache"})
    assert refreshed.cache_status == "miss" and up.calls == 5
    hit = await ask(gw)
    assert hit.cache_status == "hit" and content(hit) == content(refreshed)
    assert (await ask(gw, headers={"cache-control": "max-age=3600"})).cache_status == "hit"
    await asyncio.sleep(1.1)
    assert (await ask(gw, headers={"cache-control": "max-age=1"})).cache_status == "miss"
    await gw.aclose()


async def test_entries_expire_after_their_route_ttl(tmp_path: Path) -> None:
    gw, up = make(tmp_path, ttl_s=0.3)
    await ask(gw)
    await asyncio.sleep(0.4)
    assert (await ask(gw)).cache_status == "miss" and up.calls == 2
    await gw.aclose()


async def test_errors_are_never_stored(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    up.fail = True
    with pytest.raises(UpstreamStatusError):
        await ask(gw)
    up.fail = False
    assert (await ask(gw)).cache_status == "miss"
    await gw.aclose()


async def test_tool_call_answers_are_not_stored_by_default(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    up.tool_call = True
    await ask(gw)
    assert (await ask(gw)).cache_status == "miss" and up.calls == 2
    await gw.aclose()
    gw, up = make(tmp_path / "allowed", cache_tool_calls=True)
    up.tool_call = True
    await ask(gw)
    hit = await ask(gw)
    assert hit.cache_status == "hit" and hit.response["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"
    await gw.aclose()


async def test_a_stream_is_served_from_cache_in_chunks_with_usage(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    first = await ask(gw, stream=True)
    chunks = await drain(first)
    second = await ask(gw, stream=True)
    again = await drain(second)
    assert (first.cache_status, second.cache_status, up.calls) == ("miss", "hit", 1)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in again if c.get("choices"))
    assert text == "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert again[-1]["usage"]["completion_tokens"] == 500
    # The streamed answer also serves a non-streaming request.
    assert content(await ask(gw)) == text
    await gw.aclose()


async def test_an_incomplete_stream_is_not_stored(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    ctx = await ask(gw, stream=True)
    it = ctx.chunks.__aiter__()
    await it.__anext__()  # the client goes away after the first chunk
    await it.aclose()
    assert (await ask(gw)).cache_status == "miss" and up.calls == 2
    await gw.aclose()


async def test_a_corrupted_entry_is_a_miss_not_an_error(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    await ask(gw)
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        conn.execute("UPDATE cache_entries SET value = substr(value, 1, 40) || 'garbage'")
    ctx = await ask(gw)
    assert ctx.cache_status == "miss" and up.calls == 2
    # The fresh answer replaced the broken entry.
    assert (await ask(gw)).cache_status == "hit"
    await gw.aclose()


async def test_an_unreadable_store_is_a_miss(tmp_path: Path) -> None:
    gw, up = make(tmp_path)
    await ask(gw)
    assert gw.cache_stage is not None
    gw.cache_stage.backend._r.close()  # type: ignore[attr-defined]
    assert (await ask(gw)).cache_status == "miss" and up.calls == 2
    await gw.aclose()


async def test_64_concurrent_identical_requests_make_one_upstream_call(tmp_path: Path) -> None:
    gw, up = make(tmp_path, upstream=Upstream(delay=0.2))
    ctxs = await asyncio.gather(*[ask(gw) for _ in range(64)])
    assert up.calls == 1
    assert sorted(c.cache_status for c in ctxs).count("hit") == 63
    assert len({content(c) for c in ctxs}) == 1
    await gw.aclose()


async def test_concurrent_identical_streams_make_one_upstream_call(tmp_path: Path) -> None:
    gw, up = make(tmp_path, upstream=Upstream(delay=0.1))

    async def one() -> list[dict[str, Any]]:
        return await drain(await ask(gw, stream=True))

    results = await asyncio.gather(*[one() for _ in range(16)])
    assert up.calls == 1 and all(r for r in results)
    await gw.aclose()


async def test_concurrent_failures_do_not_serialise_followers(tmp_path: Path) -> None:
    gw, up = make(tmp_path, upstream=Upstream(delay=0.05))
    up.fail = True
    out = await asyncio.gather(*[ask(gw) for _ in range(8)], return_exceptions=True)
    assert all(isinstance(o, UpstreamStatusError) for o in out)
    assert up.calls == 8  # the leader stored nothing, so every follower asked for itself


async def test_semantic_hit_only_within_the_scope_and_when_verified(tmp_path: Path) -> None:
    gw, up = make(tmp_path, semantic={"enabled": True})
    await ask(gw, text="How do I enable two factor authentication?")
    near = await ask(gw, text="how do I enable two-factor authentication")
    assert near.cache_status == "hit" and near.response_headers["x-thrifty-cache-match"] == "semantic"
    opposite = await ask(gw, text="How do I disable two factor authentication?")
    other_system = await ask(gw, text="how do I enable two-factor authentication", system="Answer in French.")
    assert (opposite.cache_status, other_system.cache_status) == ("miss", "miss")
    assert up.calls == 3
    await gw.aclose()


async def test_clear_by_tenant_keeps_other_tenants(tmp_path: Path) -> None:
    gw, _up = make(tmp_path)
    await ask(gw, tenant="alice")
    await ask(gw, tenant="bob")
    assert gw.cache_stage is not None
    assert await gw.cache_stage.backend.clear(tenant="alice") == 1
    assert (await ask(gw, tenant="alice")).cache_status == "miss"
    assert (await ask(gw, tenant="bob")).cache_status == "hit"
    await gw.aclose()


async def test_no_cache_section_means_no_stage(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    del cfg["cache"]
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(Upstream())})
    assert "cache" not in gw.describe()
    assert (await ask(gw)).cache_status is None
    await gw.aclose()


async def test_confirm_model_must_agree_before_a_semantic_hit(tmp_path: Path) -> None:
    verdict = {"say": "no"}
    calls: list[str] = []

    def fn(b: dict[str, Any]) -> dict[str, Any]:
        calls.append(b["model"])
        if b["model"] == "other":  # the confirming judge
            return chat_response("other", verdict["say"], {"prompt_tokens": 30, "completion_tokens": 1})
        return chat_response(b["model"], "answer " + b["messages"][-1]["content"], USAGE)

    gw = Gateway.from_config(config(tmp_path, semantic={"enabled": True, "confirm_model": "other"}),
                             providers={"p": FunctionProvider(fn)})
    await ask(gw, text="How do I reset my password?")
    refused = await ask(gw, text="how do i reset my password")
    assert refused.cache_status == "miss" and calls == ["cheap", "other", "cheap"]
    verdict["say"] = "Yes."
    accepted = await ask(gw, text="How do I reset my password")
    assert accepted.cache_status == "hit" and calls[-1] == "other"
    judge = [a for a in accepted.attempts if a.purpose == "judge"]
    assert len(judge) == 1 and accepted.cost_usd == pytest.approx(judge[0].cost_usd)
    await gw.aclose()


async def test_a_hit_is_recorded_in_the_tier_of_the_model_that_answered(tmp_path: Path) -> None:
    """`report --by tier` puts a hit with its answer's tier, not under "(none)"."""
    cfg = config(tmp_path)
    cfg["models"]["cheap"]["tier"] = "small"
    up = Upstream()
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(up)})
    first, second = await ask(gw), await ask(gw)
    assert (first.cache_status, second.cache_status) == ("miss", "hit") and second.served_tier == "small"
    gw.flush()
    rows = SQLiteStore(str(tmp_path / "ledger.db")).query("SELECT cache_status, tier FROM requests ORDER BY ts")
    assert rows == [("miss", "small"), ("hit", "small")]
    await gw.aclose()
