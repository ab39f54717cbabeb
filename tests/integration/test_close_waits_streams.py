"""Closing a gateway lets every request it already admitted finish, streams and passthrough
endpoints included, before its provider connections and its ledger close.

Found by the shutdown review: ``close()`` waited for requests inside the pipeline only. A stream
the client was still reading no longer counted once its handler returned it, so the close tore
the provider connection and the ledger down under it (the client's stream broke, its cost went
unrecorded); passthrough requests (/v1/embeddings, /v1/completions, /v1/responses) were never
counted (closed under, an embeddings call failed with a 502). `thrifty serve` waits on SIGTERM
for the same requests, within the same bound."""

from __future__ import annotations

import asyncio
import gc
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fixtures.processes import serve_with_drain
from fixtures.served import leave_stream
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.types import ChatRequest

MSGS: list[Any] = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    cfg = MockConfig.from_dict({"models": {
        "slow": {"faults": {"chunk_delay_ms": 100}, "output_tokens": [15, 15]},  # ~1.5 s of chunks
        "long": {"faults": {"chunk_delay_ms": 200}, "output_tokens": [150, 150]},  # ~30 s of chunks
        "emb": {"faults": {"latency_ms": 1000}},
    }})
    with run_in_thread(create_mock(cfg)) as server:
        yield server


def _config(tmp_path: Path, upstream: str) -> dict[str, Any]:
    price = {"input": 1, "output": 2}
    return {"providers": {"m": {"base_url": upstream + "/v1", "api_key": "sk-test-0000", "max_retries": 0}},
            "models": {name: {"provider": "m", "price": price} for name in ("slow", "long", "emb")},
            "ledger": {"path": str(tmp_path / "ledger.db")}}


def _rows(tmp_path: Path) -> list[tuple[str, str, str | None, float]]:
    """The ledger's request rows (read after the gateway closed: everything is written)."""
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return db.execute("SELECT requested_model, status, error_type, cost_usd FROM requests ORDER BY ts").fetchall()


def _closing(gw: Gateway) -> threading.Thread:
    closer = threading.Thread(target=gw.close)
    closer.start()
    return closer


def test_a_stream_read_during_close_arrives_whole_and_is_recorded(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(tmp_path, mock.url))
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0, timeout=20)
        stream = client.chat.completions.create(model="slow", messages=MSGS, stream=True)
        chunks = [next(stream)]
        closer = _closing(gw)
        time.sleep(0.2)
        # Closing: a new request is refused at once (503, as before), the one being read is not.
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="slow", messages=MSGS)
        assert refused.value.status_code == 503
        chunks += list(stream)  # broke (or hung until the client's timeout) before
        closer.join(10)
        assert not closer.is_alive()
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)) > 0
    (row,) = _rows(tmp_path)  # "not recorded: the ledger was closed" before
    assert row[:3] == ("slow", "ok", None) and row[3] > 0


def test_passthrough_requests_in_flight_during_close_complete(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(tmp_path, mock.url))
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0, timeout=20)
        out: dict[str, Any] = {}

        def embed() -> None:
            try:
                out["embedding"] = client.embeddings.create(model="emb", input="hello")
            except Exception as exc:  # reported by the assertion below
                out["error"] = exc

        caller = threading.Thread(target=embed)
        caller.start()
        stream = client.completions.create(model="slow", prompt="once upon a time", stream=True)
        parts = [next(stream)]
        time.sleep(0.3)  # the embeddings call is waiting for its upstream
        closer = _closing(gw)
        parts += list(stream)
        caller.join(10)
        closer.join(10)
        assert not closer.is_alive()
    assert "error" not in out, out  # a 502: its provider connection was closed under it
    assert out["embedding"].data[0].embedding
    assert parts[-1].choices[0].finish_reason
    assert sorted(r[:3] for r in _rows(tmp_path)) == [("emb", "ok", None), ("slow", "ok", None)]


def test_a_stream_its_client_left_does_not_hold_the_close(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(tmp_path, mock.url))
    with run_in_thread(gw.app()) as server:
        # The client leaves mid-answer; the upstream has ~30 s to go.
        leave_stream(server.url, {"model": "long", "messages": MSGS, "stream": True}, after=2)
        started = time.monotonic()
        gw.close()
        assert time.monotonic() - started < 5
    assert _rows(tmp_path)[0][:3] == ("long", "error", "ClientDisconnected")


async def test_streams_closed_early_or_never_read_do_not_hold_aclose(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(tmp_path, mock.url))
    client = gw.async_openai_client(max_retries=0)
    stream = await client.chat.completions.create(model="long", messages=MSGS, stream=True)
    async for _ in stream:
        break
    await stream.close()  # the in-process client's early close
    # A stream its caller never reads: only garbage collection tells it is over.
    ctx = await gw.handle(ChatRequest.from_body({"model": "long", "messages": MSGS, "stream": True}))
    assert ctx.chunks is not None
    del ctx
    gc.collect()
    started = time.monotonic()
    await asyncio.wait_for(gw.aclose(), 10)
    assert time.monotonic() - started < 5


def test_serve_stops_within_the_drain_bound_on_a_stalled_stream_and_records_it(tmp_path: Path) -> None:
    """Found by the same review: on SIGTERM uvicorn waited, without a bound, for every response
    in flight, so one stream whose upstream stalled kept `thrifty serve` up until it ended."""
    cfg = MockConfig.from_dict({"models": {"stall": {"faults": {"chunk_delay_ms": 60000}}}})
    with run_in_thread(create_mock(cfg)) as upstream:
        config = tmp_path / "thrifty.yaml"
        config.write_text(yaml.safe_dump({**_config(tmp_path, upstream.url),
                                          "models": {"stall": {"provider": "m", "price": {"input": 1, "output": 2}}}}))
        with serve_with_drain(config) as (base, proc):
            body = {"model": "stall", "messages": MSGS, "stream": True}
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: {")  # the first chunk; the next one is a minute away
                proc.send_signal(signal.SIGTERM)
                started = time.monotonic()
                proc.wait(20)
            assert time.monotonic() - started < 10
    (row,) = _rows(tmp_path)
    assert row[:2] == ("stall", "error") and row[3] > 0  # cancelled at the bound, its prompt paid and recorded
