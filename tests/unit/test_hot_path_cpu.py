"""Per-request CPU cut without a change of behaviour: /metrics counts are kept as plain numbers
and applied when the metrics are read (every request still seen by every read, from any
thread), and a body already in hand arms no timer (a trickled one still gets its 408)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import prometheus_client.values
import pytest

import thrifty.server.body as body_module
from thrifty.gateway import Gateway
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.server.body import BodyDeadline, BodyTimeoutError
from thrifty.server.inprocess import httpx
from thrifty.server.metrics import Metrics
from thrifty.types import ChatRequest, Usage


def _gateway(tmp_path: Path) -> Gateway:
    async def fn(body: dict[str, Any]) -> dict[str, Any]:
        return chat_response(body["model"], "pong", {"prompt_tokens": 5, "completion_tokens": 10})

    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-upstream"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 1, "output": 2}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(fn)})


def _ctx() -> RequestContext:
    ctx = RequestContext(request=ChatRequest.from_body({"model": "cheap", "messages": [{"role": "user",
                                                                                        "content": "hi"}]}),
                         served_model="cheap", usage=Usage(prompt_tokens=5, completion_tokens=10),
                         cost_usd=0.25, baseline_cost_usd=1.0)
    ctx.attempts.append(Attempt(model="cheap", provider="p", started=0.0, latency_ms=3.0))
    return ctx



async def test_metrics_see_every_request_right_after_it_and_after_a_scrape(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    reg = gw.ops.metrics.registry
    labels = {"model": "cheap", "route": "-", "strategy": "passthrough", "status": "ok"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t") as c:
        body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}
        for n in (3, 60):
            before = reg.get_sample_value("thrifty_requests_total", labels) or 0.0
            for _ in range(n):
                assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
            assert reg.get_sample_value("thrifty_requests_total", labels) == before + n
            text = (await c.get("/metrics")).text
            assert f'thrifty_requests_total{{model="cheap",route="-",status="ok",strategy="passthrough"}} ' \
                   f'{before + n}' in text
    total = 63
    assert reg.get_sample_value("thrifty_tokens_total", {"model": "cheap", "route": "-", "kind": "prompt"}) == 5 * total
    assert reg.get_sample_value("thrifty_request_latency_seconds_count", {"model": "cheap", "route": "-"}) == total
    await gw.aclose()


def test_observe_makes_no_counter_inc_until_the_metrics_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Metrics()
    calls: list[float] = []
    real = prometheus_client.Counter.inc

    def counting(self: Any, amount: float = 1) -> None:
        calls.append(amount)
        real(self, amount)

    monkeypatch.setattr(prometheus_client.Counter, "inc", counting)
    for _ in range(10):
        m.observe(_ctx())
    assert calls == []  # the counters' inc calls (a Python call and a lock each) wait for a read
    assert m.registry.get_sample_value("thrifty_cost_usd_total", {"model": "cheap", "route": "-"}) == 2.5
    assert m.registry.get_sample_value("thrifty_upstream_latency_seconds_count",
                                       {"model": "cheap", "purpose": "answer", "status": "ok"}) == 10
    assert calls


def test_requests_counted_on_several_threads_while_another_reads_are_all_counted() -> None:
    m = Metrics()
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            m.registry.get_sample_value("thrifty_requests_total", {})

    def work() -> None:
        for _ in range(1500):
            m.observe(_ctx())

    reader = threading.Thread(target=scrape)
    reader.start()
    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    reader.join()
    labels = {"model": "cheap", "route": "-", "strategy": "passthrough", "status": "ok"}
    assert m.registry.get_sample_value("thrifty_requests_total", labels) == 6000
    assert m.registry.get_sample_value("thrifty_request_latency_seconds_count", {"model": "cheap", "route": "-"}) == 6000


def test_negative_amount_is_still_refused_when_counted() -> None:
    m = Metrics()
    ctx = _ctx()
    ctx.cost_usd = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        m.observe(ctx)
    # As prometheus_client's own inc: what came before the refusal is counted, the refused amount not.
    labels = {"model": "cheap", "route": "-", "strategy": "passthrough", "status": "ok"}
    assert m.registry.get_sample_value("thrifty_requests_total", labels) == 1
    assert m.registry.get_sample_value("thrifty_cost_usd_total", {"model": "cheap", "route": "-"}) == 0


SCOPE: dict[str, Any] = {"type": "http", "headers": [(b"content-length", b"2")]}


async def _read_all(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def test_a_body_in_hand_arms_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    armed: list[float | None] = []
    real = asyncio.timeout

    def counting(delay: float | None) -> Any:
        armed.append(delay)
        return real(delay)

    monkeypatch.setattr(body_module.asyncio, "timeout", counting)
    got: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await _read_all(receive))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    await BodyDeadline(app, 0.5)(SCOPE, receive, None)  # type: ignore[arg-type]
    assert got == [b"{}"] and armed == []


async def test_a_body_trickled_slower_than_the_deadline_is_still_refused() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await _read_all(receive)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.2)  # each chunk in time, the whole body not
        return {"type": "http.request", "body": b" ", "more_body": True}

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(BodyTimeoutError):
        await BodyDeadline(app, 0.5)(SCOPE, receive, None)  # type: ignore[arg-type]
    assert loop.time() - t0 < 1.0


async def test_a_waiting_receive_gets_its_message_and_a_cancellation() -> None:
    gate: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    got: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await _read_all(receive))

    async def receive() -> dict[str, Any]:
        return await gate

    task = asyncio.ensure_future(BodyDeadline(app, 5)(SCOPE, receive, None))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    gate.set_result({"type": "http.request", "body": b"{}", "more_body": False})
    await task
    assert got == [b"{}"]
    gate2: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def parked() -> dict[str, Any]:
        return await gate2

    task = asyncio.ensure_future(BodyDeadline(app, 5)(SCOPE, parked, None))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate2.cancelled()
