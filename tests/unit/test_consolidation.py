"""One copy of each rule: the outage log, the close's drain, the reported-error path, the request
built once per try; and a ``with Gateway`` block left inside a running event loop (a notebook)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from fixtures.served import attempt_rows, serving
from fixtures.services import free_port
from thrifty.catalog import ModelInfo
from thrifty.errors import ServiceUnavailableError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.ops.health import Readiness
from thrifty.ops.outage import Outage
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.providers.raw_http import SSEEvent
from thrifty.server.passthrough import StreamState
from thrifty.server.responses_api import ResponsesEndpoint
from thrifty.types import ChatRequest

MSG: list[Any] = [{"role": "user", "content": "hi"}]


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


# --- the outage log ---------------------------------------------------------------------------

def test_an_outage_is_a_warning_once_per_thing_it_meets_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("thrifty.test.outage")
    outage = Outage(log, "service %s answers again", "x")
    caplog.set_level(logging.DEBUG, logger=log.name)
    outage.answered()  # never down: nothing to say
    assert not outage.down
    outage.failed("down: %s", "a", about="k1")
    outage.failed("down: %s", "b", about="k1")
    outage.failed("down: %s", "c", about="k2")
    assert outage.down
    outage.answered()
    outage.answered()
    outage.failed("down: %s", "d", about="k1")  # a new outage: a warning again
    assert records(caplog, log.name) == [
        (logging.WARNING, "down: a"), (logging.DEBUG, "down: b"), (logging.WARNING, "down: c"),
        (logging.WARNING, "service x answers again"), (logging.WARNING, "down: d")]


async def test_readiness_logs_an_outage_once_per_reason_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    up = False

    async def probe() -> None:
        if not up:
            raise ConnectionRefusedError("refused")

    ready = Readiness({"redis": probe})
    caplog.set_level(logging.DEBUG, logger="thrifty.server")
    for _ in range(3):
        assert await ready.check() == {"redis": "unavailable"}
    up = True
    assert await ready.check() == {"redis": "ok"}
    assert await ready.check() == {"redis": "ok"}
    logged = records(caplog, "thrifty.server")
    assert [m for level, m in logged if level == logging.WARNING] == [
        "readiness: redis unavailable: ConnectionRefusedError: refused", "readiness: redis answers again"]
    assert len([m for level, m in logged if level == logging.DEBUG]) == 2


async def test_the_budget_store_logs_a_redis_outage_once(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    from thrifty.ops.redis_limits import RedisLimiter

    async def seed(key_id: str, since: float) -> float:
        return 0.0

    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", seed)  # nothing listens there
    caplog.set_level(logging.DEBUG, logger="thrifty.ops")
    try:
        for _ in range(3):
            with pytest.raises(ServiceUnavailableError):
                await limiter._redis(lambda: limiter._bound().client.ping())
    finally:
        await limiter.aclose()
    warned = [m for level, m in records(caplog, "thrifty.ops") if level == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("budget store (Redis) unavailable"), warned


# --- a gateway on the mock upstream ------------------------------------------------------------

@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"cheap": {"answer": "7"}}}))) as server:
        yield server


def config(tmp_path: Path, upstream: str) -> dict[str, Any]:
    return {
        "providers": {"main": {"base_url": f"{upstream}/v1", "api_key": "k", "max_retries": 0}},
        "models": {"cheap": {"provider": "main", "price": {"input": 1.0, "output": 2.0}}},
        "default_model": "cheap",
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }


def thrifty_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("thrifty"))


def ledger_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


class Stuck:
    """A provider whose calls never answer; counts them."""

    name = "main"

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        raise AssertionError("not streamed here")
        yield {}

    async def aclose(self) -> None:
        return None


def test_a_cancelled_close_does_not_leave_its_drain_waiting(tmp_path: Path) -> None:
    """A cancelled ``aclose`` stops waiting for the running requests at once: nothing of it (a
    worker thread, which ``asyncio.run`` joins) may wait out the whole drain timeout."""
    stuck = Stuck()
    gw = Gateway.from_config(config(tmp_path, "http://127.0.0.1:9"), providers={"main": stuck})

    async def main() -> None:
        request = asyncio.create_task(gw.chat(model="cheap", messages=MSG))
        await stuck.started.wait()
        closing = asyncio.create_task(gw.aclose())
        await asyncio.sleep(0.2)
        assert not closing.done()  # waiting for the running request
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        request.cancel()

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 5
    assert gw.closed
    assert gw.ledger is not None
    gw.ledger.close()  # what the cancelled close left open


def test_close_waits_for_the_running_request_and_returns_when_it_ends(tmp_path: Path) -> None:
    slow = MockConfig.from_dict({"models": {"cheap": {"answer": "7", "faults": {"latency_ms": 400}}}})
    with run_in_thread(create_mock(slow)) as upstream:
        gw = Gateway.from_config(config(tmp_path, upstream.url))
        client = gw.openai_client(max_retries=0)
        answered: list[str | None] = []
        asking = threading.Thread(target=lambda: answered.append(
            client.chat.completions.create(model="cheap", messages=MSG).choices[0].message.content))
        asking.start()
        deadline = time.monotonic() + 10
        while not gw._running and time.monotonic() < deadline:
            time.sleep(0.005)
        t0 = time.monotonic()
        gw.close()
        asking.join(10)
    assert answered == ["7"] and ledger_rows(tmp_path) == 1  # it finished, and was recorded
    assert 0.1 < time.monotonic() - t0 < 5  # it waited for it, not for the drain timeout


# --- the request built once per try ------------------------------------------------------------

async def test_a_cancelled_call_is_priced_from_the_request_it_was_sent(tmp_path: Path) -> None:
    """A request built per model (thrifty's own calls) was built a second time to price a call
    cancelled in flight: a second build could differ from what was sent (a shape learned
    meanwhile) and re-ran the builder's side effects."""
    stuck = Stuck()
    gw = Gateway.from_config(config(tmp_path, "http://127.0.0.1:9"), providers={"main": stuck})
    built: list[str] = []

    def build(info: ModelInfo) -> ChatRequest:
        built.append(info.name)
        return ChatRequest(model=info.name, messages=[{"role": "user", "content": "word " * 50}])

    ctx = RequestContext(request=ChatRequest(model="cheap", messages=MSG), request_id=new_request_id())
    call = asyncio.create_task(gw.caller.complete(ctx, "cheap", build, purpose="judge"))
    await stuck.started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert built == ["cheap"] and stuck.calls == 1
    (attempt,) = ctx.attempts
    assert attempt.status == "error" and attempt.usage.prompt_tokens >= 50  # the prompt it was sent
    await gw.aclose()


# --- errors reported in place of an answer: one reading for all ----------------------------------

def _upstream(error_event: bytes) -> Starlette:
    """A legacy-completions server whose stream reports an error after its first chunk."""
    async def completions(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            yield b'data: {"id": "c1", "object": "text_completion", "choices": [{"index": 0, "text": "Hel"}]}\n\n'
            yield b"data: " + error_event + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


@pytest.mark.parametrize("error_event", [
    b'{"object": "error", "message": "model overloaded", "code": 503}',  # vLLM, FastChat
    b'{"error": "model overloaded"}',  # TGI
])
def test_a_legacy_completions_stream_error_is_read_like_any_reported_error(tmp_path: Path, error_event: bytes) -> None:
    """The stream watch of /v1/completions had a check of its own: vLLM's error event passed for
    an empty chunk (the request recorded as a success) and TGI's text read "unknown error"."""
    with run_in_thread(_upstream(error_event)) as upstream:
        with serving(config(tmp_path, upstream.url)) as (gw, client):
            with contextlib.suppress(openai.APIError):  # the SDK raises on some error events; the ledger matters
                for _ in client.completions.create(model="cheap", prompt="Say hello", stream=True):
                    pass
            rows = attempt_rows(gw, "a.status, a.error")
        gw.close()
    assert rows == [{"status": "error", "error": "stream error: model overloaded"}]


@pytest.mark.parametrize(("data", "name", "failure"), [
    ({"type": "error", "message": "overloaded"}, "error", "stream error: overloaded"),
    ({"error": "overloaded"}, None, "stream error: overloaded"),  # was "unknown error"
    ({"object": "error", "message": "overloaded"}, None, "stream error: overloaded"),  # was no failure
    ({"type": "error"}, "error", "stream error: no message"),
])
def test_a_responses_stream_error_is_read_like_any_reported_error(data: dict[str, Any], name: str | None,
                                                                 failure: str) -> None:
    state = StreamState()
    ResponsesEndpoint().watch(SSEEvent(b"", name, data), state)
    assert state.final and state.failure == failure


# --- `with Gateway` inside a running event loop (a notebook cell) ---------------------------------

def test_a_with_block_using_the_sync_client_closes_inside_a_running_loop(tmp_path: Path, mock: RunningServer) -> None:
    """Jupyter runs each cell inside its event loop: leaving ``with Gateway...`` there raised
    GatewayStateError ("use await gateway.aclose()") and closed nothing."""
    async def cell() -> Gateway:
        with Gateway.from_config(config(tmp_path, mock.url)) as gw:
            client = gw.openai_client(max_retries=0)
            assert client.chat.completions.create(model="cheap", messages=MSG).choices[0].message.content == "7"
        assert gw.closed and gw.ledger is None  # closed before the next line
        assert ledger_rows(tmp_path) == 1
        return gw

    before = thrifty_threads()
    asyncio.run(cell())
    assert thrifty_threads() == before  # its ledger and loop threads ended, and so did the closing one


def test_a_with_block_awaiting_the_gateway_closes_inside_a_running_loop(tmp_path: Path, mock: RunningServer) -> None:
    """Requests awaited on the cell's own loop have their connections there: they are closed by
    that loop, once the cell's code yields, and none is left to the garbage collector."""
    async def cell() -> Gateway:
        with Gateway.from_config(config(tmp_path, mock.url)) as gw:
            reply = await gw.chat(model="cheap", messages=MSG)
            assert reply["choices"][0]["message"]["content"] == "7"
        assert gw.closed
        with pytest.raises(Exception, match="this gateway is closed"):
            await gw.chat(model="cheap", messages=MSG)
        await asyncio.sleep(0.5)  # the cell ends: the loop runs the rest of the close
        assert gw.ledger is None and ledger_rows(tmp_path) == 1
        return gw

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        asyncio.run(cell())
        gc.collect()
    assert time.monotonic() - t0 < 4  # no wait on a loop that could not run
    assert not [w for w in caught if "nclosed" in str(w.message)], [str(w.message) for w in caught]
