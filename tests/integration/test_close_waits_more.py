"""Closing a gateway waits for the stored-response calls too, and a stream its reader dropped
before its first chunk is still recorded, once, with what it cost.

Found by the shutdown review (session 15): ``GET /v1/responses/{id}`` (``?stream=true`` included),
``DELETE``, ``/cancel`` and ``/input_items`` only checked that the gateway was open, so
``close()`` shut the provider connection under them (a 502) and a retrieve that settles a
background response lost its ledger amendment. And the ledger stage's stream was an async
generator: closed (or dropped) before its first chunk it never ran its ``finally``, so a stream
whose provider call was made and paid wrote no row at all.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.types import ChatRequest

MSGS: list[Any] = [{"role": "user", "content": "tell me a story about a lighthouse keeper"}]
# How long the upstream takes to answer a stored-response call, and between a replay's events.
LOOKUP_S, EVENT_S = 1.0, 0.05


def _slow_resources(app: Any) -> Any:
    """The mock upstream with slow stored-response calls (its own have no latency setting)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/responses/"):
            await app(scope, receive, send)
            return
        await asyncio.sleep(LOOKUP_S)

        async def slow_send(message: Any) -> None:
            if message["type"] != "http.response.body" or not message.get("more_body"):
                await send(message)
                return
            # A replay (the mock writes its events at once): one event every EVENT_S.
            for event in message["body"].split(b"\n\n")[:-1]:
                await asyncio.sleep(EVENT_S)
                await send({"type": "http.response.body", "body": event + b"\n\n", "more_body": True})

        await app(scope, receive, slow_send)

    return wrapped


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    cfg = MockConfig.from_dict({"models": {"m1": {}, "slow": {"faults": {"chunk_delay_ms": 100}}}})
    with run_in_thread(_slow_resources(create_mock(cfg))) as server:
        yield server


def _gateway(tmp_path: Path, upstream: str) -> Gateway:
    price = {"input": 1, "output": 2}
    return Gateway.from_config({
        "providers": {"m": {"base_url": upstream + "/v1", "api_key": "sk-test-0000", "max_retries": 0}},
        "models": {name: {"provider": "m", "price": price} for name in ("m1", "slow")},
        "ledger": {"path": str(tmp_path / "ledger.db")}})


def _rows(tmp_path: Path, table: str = "requests") -> list[tuple[Any, ...]]:
    """Read after the gateway closed: everything is written."""
    cols = "status, error_type, prompt_tokens, completion_tokens, cost_usd"
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return db.execute(f"SELECT {cols if table == 'requests' else 'status, prompt_tokens, cost_usd'} "
                          f"FROM {table}").fetchall()


def _closing(gw: Gateway) -> tuple[threading.Thread, list[float]]:
    took: list[float] = []

    def close() -> None:
        started = time.monotonic()
        gw.close()
        took.append(time.monotonic() - started)

    closer = threading.Thread(target=close)
    closer.start()
    return closer, took


CALLS = {
    "retrieve": lambda c, rid: c.responses.retrieve(rid).status,
    "cancel": lambda c, rid: c.responses.cancel(rid).status,
    "delete": lambda c, rid: c.responses.delete(rid),
    "input_items": lambda c, rid: [i.type for i in c.responses.input_items.list(rid)],
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_stored_response_calls_in_flight_during_close_complete(call: str, mock: RunningServer,
                                                               tmp_path: Path) -> None:
    gw = _gateway(tmp_path, mock.url)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0, timeout=20)
        created = client.responses.create(model="m1", input="hello there", background=True)
        assert created.status == "queued"
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                out["answer"] = CALLS[call](client, created.id)
            except Exception as exc:  # reported by the assertion below
                out["error"] = exc

        caller = threading.Thread(target=run)
        caller.start()
        time.sleep(0.3)  # the call waits for its upstream
        closer, took = _closing(gw)
        caller.join(10)
        closer.join(10)
        assert not closer.is_alive()
    assert "error" not in out, out  # a 502 before: the provider connection closed under it
    assert took[0] > 0.3  # it waited for the call (it returned at once before)
    (row,) = _rows(tmp_path)
    if call == "retrieve":  # the retrieve relayed it finished: its usage replaced the estimate
        assert out["answer"] == "completed" and row[0] == "ok" and row[3] > 0
    if call == "cancel":  # cancelled while queued: recorded at zero, as the provider bills it
        assert out["answer"] == "cancelled" and row[4] == 0


def test_a_replay_read_during_close_arrives_whole_and_settles(mock: RunningServer, tmp_path: Path) -> None:
    gw = _gateway(tmp_path, mock.url)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0, timeout=20)
        created = client.responses.create(model="m1", input="hello there", background=True)
        replay = client.responses.retrieve(created.id, stream=True)
        events = [next(iter(replay)).type]
        closer, took = _closing(gw)
        time.sleep(0.2)
        with pytest.raises(openai.APIStatusError) as refused:  # closing: a new call is refused
            client.responses.retrieve(created.id)
        assert refused.value.status_code == 503
        events += [e.type for e in replay]  # broke (the connection closed under it) before
        closer.join(10)
        assert not closer.is_alive()
    assert events[-1] == "response.completed"
    assert took[0] > 0.3
    (row,) = _rows(tmp_path)
    assert row[0] == "ok" and row[3] > 0  # its final event's usage amended the create's estimate


async def _stream(gw: Gateway) -> Any:
    ctx = await gw.handle(ChatRequest.from_body({"model": "slow", "messages": MSGS, "stream": True}))
    assert ctx.chunks is not None
    return ctx


async def test_a_stream_closed_before_its_first_chunk_is_recorded_once(mock: RunningServer, tmp_path: Path) -> None:
    gw = _gateway(tmp_path, mock.url)
    ctx = await _stream(gw)  # the provider call is made (its first chunk fetched) before it returns
    await ctx.chunks.aclose()
    await ctx.chunks.aclose()  # twice: still one row
    started = time.monotonic()
    await asyncio.wait_for(gw.aclose(), 10)
    assert time.monotonic() - started < 5
    # No row at all before; now the client's departure, at the prompt the provider was sent.
    (row,) = _rows(tmp_path)
    assert row[:2] == ("error", "ClientDisconnected") and row[2] > 0 and row[4] > 0
    (attempt,) = _rows(tmp_path, "attempts")
    assert attempt[1] == row[2] and attempt[2] == row[4]


async def test_a_stream_dropped_unread_is_recorded_once(mock: RunningServer, tmp_path: Path) -> None:
    gw = _gateway(tmp_path, mock.url)
    ctx = await _stream(gw)
    del ctx  # its reader left without reading or closing it (a server whose client went away)
    gc.collect()
    started = time.monotonic()
    await asyncio.wait_for(gw.aclose(), 10)
    assert time.monotonic() - started < 5
    (row,) = _rows(tmp_path)
    assert row[:2] == ("error", "ClientDisconnected") and row[2] > 0 and row[4] > 0


async def test_a_stream_closed_midway_is_recorded_at_its_cost(mock: RunningServer, tmp_path: Path) -> None:
    """Found with the above: closed between two chunks, the ledger stage wrote its row before the
    provider call's stream under it was priced (only when collected, later): "cost unknown"."""
    gw = _gateway(tmp_path, mock.url)
    ctx = await _stream(gw)
    first = await ctx.chunks.__anext__()
    await ctx.chunks.aclose()
    await gw.aclose()
    assert first["choices"][0]["delta"].get("role") == "assistant"  # the chunk read ahead reaches its reader
    (row,) = _rows(tmp_path)
    assert row[:2] == ("error", "ClientDisconnected") and row[2] > 0 and row[4] is not None and row[4] > 0
