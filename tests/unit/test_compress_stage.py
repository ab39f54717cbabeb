"""The compression stage in the real pipeline, with an in-process provider (no HTTP)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from thrifty.compress.store import RedisDocStore, SQLiteDocStore
from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response

RULE = "IMPORTANT: never reveal the discount code 4471."
FILLER = " ".join(f"Our shop sells fine product number {i} in many colours and sizes." for i in range(120))
PROMPT = f"You are ShopBot for Acme Widgets. {FILLER} {RULE}"
GOOD = f"You are ShopBot for Acme Widgets, selling products 0-119 in many colours and sizes. {RULE}"
BAD = "You are ShopBot. Sell products."


def make(tmp: Path, answer: str, delay: float = 0.0, redis_url: str | None = None,
         **compression: Any) -> tuple[Gateway, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    async def upstream(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        if body["model"] == "cheap" and "compress system prompts" in body["messages"][0]["content"]:
            await asyncio.sleep(delay)
            return chat_response("cheap", answer)
        return chat_response(body["model"], "ok", {"prompt_tokens": 100, "completion_tokens": 1})

    cfg = {
        "providers": {"p": {"base_url": "http://unused.invalid"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                   "big": {"provider": "p", "price": {"input": 2.0, "output": 8.0}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "redis_url": redis_url,
        "compression": {"model": "cheap", "store": {"path": str(tmp / "compress.db")},
                        "system_prompt": {"min_tokens": 200, "must_keep": ["Acme Widgets"]},
                        "routes": {"big": {"system_prompt": True}}, **compression},
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(upstream)}), calls


def req() -> dict[str, Any]:
    return {"model": "big", "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": "hi"}]}


def compressions(calls: list[dict[str, Any]]) -> int:
    return sum(1 for c in calls if "compress system prompts" in c["messages"][0]["content"])


async def test_concurrent_first_requests_share_one_compression_and_reuse_the_same_bytes(tmp_path: Path) -> None:
    gw, calls = make(tmp_path, GOOD, delay=0.05)
    ctxs = await asyncio.gather(*(gw.handle(_chat(req())) for _ in range(8)))
    assert compressions(calls) == 1
    sent = [c["messages"][0]["content"] for c in calls if c["model"] == "big"]
    assert sent == [GOOD] * 8
    assert all(c.compression_saved_tokens > 0 for c in ctxs)
    # exactly one request carries (and pays for) the compression attempt
    assert sum(1 for c in ctxs for a in c.attempts if a.purpose == "compress") == 1
    await gw.aclose()
    # a new process (new gateway, same store) never compresses this prompt again
    gw2, calls2 = make(tmp_path, GOOD)
    ctx = await gw2.handle(_chat(req()))
    assert compressions(calls2) == 0 and calls2[0]["messages"][0]["content"] == GOOD
    assert ctx.compression_saved_usd == pytest.approx(ctx.compression_saved_tokens * 2.0 / 1e6)
    # The baseline ("big", the highest output price) prices the prompt before compression: the
    # 100 tokens sent plus those removed, and the 1-token answer. Its saving holds compression's.
    assert ctx.baseline_cost_usd == pytest.approx(((100 + ctx.compression_saved_tokens) * 2.0 + 1 * 8.0) / 1e6)
    assert ctx.cost_usd is not None and 0 < ctx.baseline_cost_usd - ctx.cost_usd <= ctx.baseline_cost_usd
    await gw2.aclose()


async def test_failed_validation_keeps_the_original_and_records_why(tmp_path: Path) -> None:
    gw, calls = make(tmp_path, BAD)
    for _ in range(3):
        await gw.handle(_chat(req()))
    assert compressions(calls) == 1  # one compression per distinct prompt, ever (even a failed one)
    assert [c["messages"][0]["content"] for c in calls if c["model"] == "big"] == [PROMPT] * 3
    store = SQLiteDocStore(str(tmp_path / "compress.db"))
    (key,) = store.keys("prompt")
    version = store.get("prompt", key)["versions"][0]  # type: ignore[index]
    assert version["status"] == "failed" and "Acme Widgets" in version["reason"]
    store.close()
    await gw.aclose()


async def test_short_prompts_other_routes_and_opt_out_are_untouched(tmp_path: Path) -> None:
    gw, calls = make(tmp_path, GOOD)
    short = {"model": "big", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]}
    await gw.handle(_chat(short))
    await gw.handle(_chat({**req(), "model": "cheap"}))
    await gw.handle(_chat({**req(), "thrifty": {"compress": False}}))
    assert compressions(calls) == 0
    await gw.aclose()


def _chat(body: dict[str, Any]) -> Any:
    from thrifty.types import ChatRequest

    return ChatRequest.from_body(body)


@pytest.mark.redis
def test_redis_store_round_trip_and_claims(redis_url: str) -> None:
    store = RedisDocStore(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}")
    assert store.get("prompt", "h") is None
    store.put("prompt", "h", {"a": 1})
    assert store.get("prompt", "h") == {"a": 1} and store.keys("prompt") == ["h"]
    assert store.claim("prompt", "h", 5) and not store.claim("prompt", "h", 5)
    store.release("prompt", "h")
    assert store.claim("prompt", "h", 5)
    assert store.delete("prompt", "h") and store.keys("prompt") == []
    store.close()


@pytest.mark.redis
async def test_gateway_uses_redis_when_configured(tmp_path: Path, redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    gw, calls = make(tmp_path, GOOD, redis_url=redis_url, store={"redis_prefix": prefix})
    assert isinstance(gw.compress_stage.store, RedisDocStore)  # type: ignore[union-attr]
    await gw.handle(_chat(req()))
    await gw.handle(_chat(req()))
    assert compressions(calls) == 1
    assert calls[-1]["messages"][0]["content"] == GOOD
    store = RedisDocStore(redis_url, prefix=prefix)
    assert len(store.keys("prompt")) == 1
    store.close()
    await gw.aclose()
