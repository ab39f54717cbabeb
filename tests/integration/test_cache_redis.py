"""The Redis cache backend against a real Redis: shared between gateway instances, single flight
across them, tenant isolation, corrupt entries, clears and the semantic vector log."""

from __future__ import annotations

import asyncio
import time
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


def _meta(key: str, expires: float) -> Any:
    from thrifty.cache.backends.base import EntryMeta
    return EntryMeta(key, "t", "m", time.time(), expires)


async def test_vector_list_pops_expired_head_and_readers_keep_their_place(redis_url: str, ns: str) -> None:
    """A busy scope's vector list holds its live vectors, not every vector ever added (its TTL
    moves with each append, so it never expired as a whole); a reader's position survives the
    pops, and a fresh reader sees only what is left."""
    import numpy as np

    from thrifty.cache.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, prefix=ns)
    vec = np.ones(4, dtype=np.float32)
    soon = time.time() + 0.3
    for i in range(5):
        await backend.add_vector("idx", _meta(f"old{i}", soon), f"old {i}", vec)
    rows, cursor = await backend.vectors_since("idx", 0)
    assert [r.key for r in rows] == [f"old{i}" for i in range(5)]
    await asyncio.sleep(0.4)
    later = time.time() + 60
    await backend.add_vector("idx", _meta("new0", later), "new 0", vec)
    await backend.add_vector("idx", _meta("new1", later), "new 1", vec)
    client = backend._redis
    assert await client.llen(backend._k("v", "idx")) == 2  # the five expired ones were popped
    assert (await backend.stats())["vectors"] == 2
    rows, cursor = await backend.vectors_since("idx", cursor)
    assert [r.key for r in rows] == ["new0", "new1"]  # the old reader missed nothing, read nothing twice
    rows, _ = await backend.vectors_since("idx", cursor)
    assert rows == []
    fresh, _ = await backend.vectors_since("idx", 0)
    assert [r.key for r in fresh] == ["new0", "new1"]
    # The list expires with its longest-lived vector, not its newest: a short TTL added last
    # does not cut the list's life short.
    await backend.add_vector("idx", _meta("brief", time.time() + 5), "brief", vec)
    assert await client.pttl(backend._k("v", "idx")) > 30_000
    await backend.aclose()


async def test_vector_reader_sees_a_restarted_list_from_its_start(redis_url: str, ns: str) -> None:
    """A list that expired (or was cleared) and started again: a reader holding a position in the
    old list reads the new one from its first vector (a plain list index skipped as many new
    vectors as the old list had held)."""
    import numpy as np

    from thrifty.cache.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, prefix=ns)
    vec = np.ones(4, dtype=np.float32)
    for i in range(3):
        await backend.add_vector("idx", _meta(f"a{i}", time.time() + 60), f"a {i}", vec)
    _, cursor = await backend.vectors_since("idx", 0)
    assert await backend.clear() == 0  # no entries; the vector lists and their counts go
    await backend.add_vector("idx", _meta("b0", time.time() + 60), "b 0", vec)
    rows, _ = await backend.vectors_since("idx", cursor)
    assert [r.key for r in rows] == ["b0"]
    await backend.aclose()
