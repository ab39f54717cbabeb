"""In-process OpenAI clients (server/inprocess.py): streams arrive chunk by chunk, the client's
timeout is honoured and cancels the work, closing a stream early cancels the upstream call.

The provider is an in-process double whose stream waits for the test between two chunks: a
transport that buffered the whole body would make it wait in vain.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore

MSG = [{"role": "user", "content": "hi"}]
WAIT_S = 10.0  # how long the double waits for the test before giving up (only reached on failure)


def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class GatedProvider:
    """Streams "first", then waits until the test sets ``release``; completions never answer."""

    name = "gated"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.released_in_time: bool | None = None
        self.cancelled = threading.Event()

    async def _wait_release(self) -> bool:
        deadline = time.monotonic() + WAIT_S
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # polled, so cancellation is immediate
        return self.release.is_set()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("the client's timeout should have cancelled this call")

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            yield chunk("first")
            self.released_in_time = await self._wait_release()
            yield chunk(" second")
            yield chunk(None, "stop")
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise

    async def aclose(self) -> None:
        return None


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Gateway, GatedProvider]]:
    provider = GatedProvider()
    conf = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
            "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
            "ledger": {"path": str(tmp_path / "ledger.db")}}
    gw = Gateway.from_config(conf, providers={"p": provider})
    yield gw, provider
    if gw.ledger is not None:
        gw.close()


def ledger_rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    return SQLiteStore(str(tmp_path / "ledger.db")).query("SELECT status, error_type FROM requests")


def test_sync_stream_arrives_chunk_by_chunk(gated: tuple[Gateway, GatedProvider]) -> None:
    gw, provider = gated
    parts = []
    for c in gw.openai_client(max_retries=0).chat.completions.create(model="m", messages=MSG, stream=True):  # type: ignore[arg-type]
        if c.choices and c.choices[0].delta.content:
            parts.append(c.choices[0].delta.content)
            provider.release.set()  # only possible if "first" arrived before the stream ended
    assert "".join(parts) == "first second"
    assert provider.released_in_time is True


async def test_async_stream_arrives_chunk_by_chunk(gated: tuple[Gateway, GatedProvider]) -> None:
    gw, provider = gated
    stream = await gw.async_openai_client(max_retries=0).chat.completions.create(
        model="m", messages=MSG, stream=True)  # type: ignore[arg-type]
    parts = []
    async for c in stream:
        if c.choices and c.choices[0].delta.content:
            parts.append(c.choices[0].delta.content)
            provider.release.set()
    assert "".join(parts) == "first second"
    assert provider.released_in_time is True
    await gw.aclose()


def test_sync_client_timeout_raises_api_timeout_and_cancels_the_call(
    gated: tuple[Gateway, GatedProvider], tmp_path: Path
) -> None:
    gw, provider = gated
    client = gw.openai_client(timeout=0.3, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert provider.cancelled.wait(WAIT_S)
    gw.close()
    assert ledger_rows(tmp_path) == [("error", "ClientDisconnected")]


async def test_async_client_timeout_raises_api_timeout_and_cancels_the_call(
    gated: tuple[Gateway, GatedProvider]
) -> None:
    gw, provider = gated
    client = gw.async_openai_client(timeout=0.3, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert await asyncio.to_thread(provider.cancelled.wait, WAIT_S)
    await gw.aclose()


def test_closing_a_sync_stream_early_cancels_the_upstream_stream(
    gated: tuple[Gateway, GatedProvider], tmp_path: Path
) -> None:
    gw, provider = gated
    stream = gw.openai_client(max_retries=0).chat.completions.create(model="m", messages=MSG, stream=True)  # type: ignore[arg-type]
    first = next(c for c in stream if c.choices and c.choices[0].delta.content)
    assert first.choices[0].delta.content == "first"
    stream.close()
    assert provider.cancelled.wait(WAIT_S)
    gw.close()
    assert ledger_rows(tmp_path) == [("error", "ClientDisconnected")]


async def test_closing_an_async_stream_early_cancels_the_upstream_stream(
    gated: tuple[Gateway, GatedProvider]
) -> None:
    gw, provider = gated
    stream = await gw.async_openai_client(max_retries=0).chat.completions.create(
        model="m", messages=MSG, stream=True)  # type: ignore[arg-type]
    async for c in stream:
        if c.choices and c.choices[0].delta.content:
            break
    await stream.close()
    assert await asyncio.to_thread(provider.cancelled.wait, WAIT_S)
    await gw.aclose()


def test_sync_clients_share_one_loop_thread_that_close_stops(gated: tuple[Gateway, GatedProvider]) -> None:
    gw, _ = gated

    def loop_threads() -> int:
        return sum(t.name == "thrifty-inprocess" for t in threading.enumerate())

    before = loop_threads()
    a, b = gw.openai_client(max_retries=0), gw.openai_client(max_retries=0)
    a.models.list()
    b.models.list()
    assert loop_threads() == before + 1
    gw.close()
    assert loop_threads() == before
    with pytest.raises(openai.APIConnectionError):
        a.models.list()
