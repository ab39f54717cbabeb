"""The Redis cache backend against a real Redis: shared between gateway instances, single flight
across them, tenant isolation, corrupt entries, clears and the semantic vector log."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

pytestmark = pytest.mark.redis


class Upstream:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return chat_response(body["model"], f"answer {self.calls}: {body['messages'][-1]['content']}",
                             {"prompt_tokens": 50, "completion_tokens": 20})


def gateway(tmp_path: Path, redis_url: str, namespace: str, up: Upstream, **cache: Any) -> Gateway:
    cfg = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 2}}},
        "ledger": {"enabled": False},
        "redis_url": redis_url,
        "cache": {"backend": "redis", "namespace": namespace, **cache},
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(up)})


def req(text: str = "What is the tallest mountain?") -> ChatRequest:
    return ChatRequest.from_body({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]})


@pytest.fixture
def ns() -> str:
    return "test-" + uuid.uuid4().hex[:8]


async def test_two_gateways_share_entries_but_not_tenants(tmp_path: Path, redis_url: str, ns: str) -> None:
    up = Upstream()
    a, b = gateway(tmp_path, redis_url, ns, up), gateway(tmp_path, redis_url, ns, up)
    first = await a.handle(req(), tenant="alice")
    second = await b.handle(req(), tenant="alice")
    foreign = await b.handle(req(), tenant="bob")
    assert (first.cache_status, second.cache_status, foreign.cache_status) == ("miss", "hit", "miss")
    assert up.calls == 2
    assert second.response["choices"][0]["message"]["content"] == first.response["choices"][0]["message"]["content"]
    await a.aclose()
    await b.aclose()


async def test_64_concurrent_requests_across_two_gateways_make_one_call(tmp_path: Path, redis_url: str,
                                                                     ns: str) -> None:
    up = Upstream(delay=0.3)
    a, b = gateway(tmp_path, redis_url, ns, up), gateway(tmp_path, redis_url, ns, up)
    ctxs = await asyncio.gather(*[(a if i % 2 else b).handle(req(), tenant="t") for i in range(64)])
    assert up.calls == 1
    assert len({c.response["choices"][0]["message"]["content"] for c in ctxs}) == 1
    await a.aclose()
    await b.aclose()


async def test_corrupt_entry_is_a_miss_and_clear_filters(tmp_path: Path, redis_url: str, ns: str) -> None:
    import redis.asyncio as aioredis

    up = Upstream()
    gw = gateway(tmp_path, redis_url, ns, up)
    await gw.handle(req(), tenant="alice")
    await gw.handle(req("other question"), tenant="bob")
    r = aioredis.from_url(redis_url)
    keys = [k async for k in r.scan_iter(match=f"{ns}:cache:e:*")]
    assert len(keys) == 2
    for k in keys:
        await r.hset(k, "value", b"TC1:not-a-checksum\n{}")
    assert (await gw.handle(req(), tenant="alice")).cache_status == "miss"
    assert gw.cache_stage is not None
    assert await gw.cache_stage.backend.clear(tenant="bob") == 1
    assert (await gw.handle(req(), tenant="alice")).cache_status == "hit"
    assert (await gw.handle(req("other question"), tenant="bob")).cache_status == "miss"
    assert await gw.cache_stage.backend.clear() == 2
    await r.aclose()
    await gw.aclose()


async def test_semantic_entries_reach_another_gateway(tmp_path: Path, redis_url: str, ns: str) -> None:
    up = Upstream()
    sem = {"semantic": {"enabled": True, "refresh_s": 0}}
    a, b = gateway(tmp_path, redis_url, ns, up, **sem), gateway(tmp_path, redis_url, ns, up, **sem)
    await a.handle(req("How do I reset my password?"), tenant="t")
    near = await b.handle(req("how do i reset my password"), tenant="t")
    other_tenant = await b.handle(req("how do i reset my password"), tenant="u")
    assert (near.cache_status, other_tenant.cache_status) == ("hit", "miss")
    assert near.response_headers["x-thrifty-cache-match"] == "semantic"
    await a.aclose()
    await b.aclose()
