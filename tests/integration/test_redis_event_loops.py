"""One Gateway driven from several event loops (``asyncio.run`` twice, the sync in-process
client's loop thread) with its Redis parts: the exact cache keeps hitting, the shared rate limits
keep counting, the provider Batch API keeps its sessions apart, and closing never raises
"Event loop is closed". Redis is real; the LLM is a test double or the mock upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from thrifty.cache.backends.redis import RedisBackend
from thrifty.config import ProviderConfig
from thrifty.errors import RateLimitError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.ops.keys import VirtualKey
from thrifty.ops.redis_limits import RedisLimiter
from thrifty.providers.batch_api import OpenAIBatchAPI
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.server.inprocess import LoopThread
from thrifty.types import ChatRequest

MSG = [{"role": "user", "content": "What is the tallest mountain?"}]


class Upstream:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return chat_response(body["model"], f"answer {self.calls}", {"prompt_tokens": 5, "completion_tokens": 2})


def base_config(redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 2}}},
        "ledger": {"enabled": False},
        "redis_url": redis_url,
        **extra,
    }


def request() -> ChatRequest:
    return ChatRequest.from_body({"model": "m", "temperature": 0, "messages": MSG})


def close_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ the Redis exact cache


@pytest.mark.redis
def test_redis_cache_hits_on_a_second_asyncio_run_and_closes_cleanly(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    up = Upstream()
    cfg = base_config(redis_url, cache={"backend": "redis", "namespace": "loops-" + uuid.uuid4().hex[:8]})
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(up)})

    async def status() -> str:
        async with gw.async_openai_client(max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=MSG, temperature=0)  # type: ignore[arg-type]
        return str(raw.headers["x-thrifty-cache"])

    assert asyncio.run(status()) == "miss"
    assert asyncio.run(status()) == "hit"  # was a silent miss: the client was bound to the first loop
    assert up.calls == 1
    # The sync client runs the gateway on its own loop thread: a third loop, still hitting.
    raw = gw.openai_client(max_retries=0).chat.completions.with_raw_response.create(
        model="m", messages=MSG, temperature=0)  # type: ignore[arg-type]
    assert raw.headers["x-thrifty-cache"] == "hit" and up.calls == 1
    backend = gw.cache_stage.backend if gw.cache_stage else None
    assert isinstance(backend, RedisBackend)
    with caplog.at_level(logging.WARNING):
        gw.close()  # the loop thread's client is closed there, the closed loops' are dropped
    assert close_failures(caplog) == []
    assert backend._clients._items == {}


@pytest.mark.redis
def test_redis_backend_aclose_from_a_new_loop_drops_the_closed_loops_clients(redis_url: str) -> None:
    backend = RedisBackend(redis_url, prefix="loops-" + uuid.uuid4().hex[:8])

    async def ping() -> Any:
        await backend.get("absent")
        return backend._redis

    first, second = asyncio.run(ping()), asyncio.run(ping())
    assert first is not second
    assert list(backend._clients._items.values()) == [second]  # the first loop's was dropped when it closed
    asyncio.run(backend.aclose())  # used to raise RuntimeError('Event loop is closed')
    assert backend._clients._items == {}


# ------------------------------------------------------------------ the Redis rate limits


async def no_spend(key_id: str, since: float) -> float:
    return 0.0


@pytest.mark.redis
def test_redis_rate_limit_counts_across_two_loops(redis_url: str) -> None:
    limiter = RedisLimiter(redis_url, no_spend, prefix="t" + secrets.token_hex(4))
    key = VirtualKey("key_loops", "loops", "thr-abcd", None, "day", 3, None, (), 0.0)

    async def admit(n: int) -> int:
        admitted = 0
        for _ in range(n):
            try:
                await limiter.admit(key, 0.0, 10, 1_000_000.0)
                admitted += 1
            except RateLimitError:
                pass
        return admitted

    assert asyncio.run(admit(2)) == 2
    assert asyncio.run(admit(2)) == 1  # the second loop sees the first loop's two requests
    usage = asyncio.run(limiter.usage(key, 1_000_000.0))
    assert usage.requests_this_minute == 3
    asyncio.run(limiter.aclose())
    assert limiter._clients._items == {}


@pytest.mark.redis
def test_gateway_with_redis_limits_serves_two_asyncio_runs_then_the_sync_client(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = base_config(redis_url, ledger={"path": str(tmp_path / "ledger.db")},
                      auth={"enabled": True, "backend": "redis", "redis_prefix": "t" + secrets.token_hex(4)})
    up = Upstream()
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(up)})
    assert gw.ops.keys is not None and isinstance(gw.ops.limiter, RedisLimiter)
    key, secret = gw.ops.keys.create("loops", rpm=3)

    async def chat() -> str:
        ctx = await gw.handle(request(), key_id=key.key_id)
        return str(ctx.response["choices"][0]["message"]["content"]) if ctx.response else ""

    assert asyncio.run(chat()) == "answer 1"
    assert asyncio.run(chat()) == "answer 2"  # was a 500: the limiter's client was bound to the first loop
    client = gw.openai_client(api_key=secret, max_retries=0)  # a third loop, on the in-process thread
    assert client.chat.completions.create(model="m", messages=MSG).choices[0].message.content == "answer 3"  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):  # the fourth request of the minute, counted across the loops
        client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(RateLimitError):
        asyncio.run(chat())
    assert up.calls == 3
    with caplog.at_level(logging.WARNING):
        gw.close()  # the thread's client is closed on its loop, the closed loops' are dropped
    assert close_failures(caplog) == []
    assert gw.ops.limiter._clients._items == {}


# ------------------------------------------------------------------ the provider Batch API


@pytest.fixture
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"batch": {"completion_s": 0.0}}))) as server:
        yield server


def test_batch_api_keeps_one_session_per_loop(mock: RunningServer) -> None:
    api = OpenAIBatchAPI("mock", ProviderConfig(base_url=mock.url + "/v1", api_key="sk-test-loops-1234"))
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": MSG}}

    async def submit() -> tuple[str, aiohttp.ClientSession]:
        file_id = await api.upload_file((json.dumps(line) + "\n").encode(), "in.jsonl")
        batch = await api.create_batch(file_id, "/v1/chat/completions", "24h")
        return str(batch["id"]), api._get_session()

    async def status(batch_id: str) -> tuple[str, aiohttp.ClientSession]:
        return str((await api.get_batch(batch_id))["id"]), api._get_session()

    batch_id, first = asyncio.run(submit())
    got, second = asyncio.run(status(batch_id))  # the first loop is closed: its session is useless there
    assert got == batch_id and second is not first and first.closed
    other = LoopThread()
    try:
        got, theirs = other.call(status(batch_id), 10)
        assert got == batch_id and theirs is not second
        asyncio.run(api.aclose())  # closes the thread's session on its loop, drops the closed loops'
        assert second.closed and theirs.closed
    finally:
        other.stop()
