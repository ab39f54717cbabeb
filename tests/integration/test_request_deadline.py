"""server.request_timeout_s: one deadline over a whole request (retries, fallbacks, tiers), over
real HTTP with the openai SDK and the mock upstream, and through the Python API."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from thrifty.errors import RequestTimeoutError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.pipeline.context import RequestContext
from thrifty.pipeline.deadline import DeadlineStage
from thrifty.types import ChatRequest

# "slow" answers after 3 s, within its provider's own 60 s timeout: only the request deadline
# (1 s) can cut it short. "slow-then-cheap" fails over from a hanging model to a fast one, but the
# hanging call alone uses up the deadline.
MOCK = {"models": {"slow": {"faults": {"latency_ms": 3000}}, "hanging": {"faults": {"hang": True}}}}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def config(mock: RunningServer, tmp: Path, timeout_s: float) -> dict[str, Any]:
    upstream = mock.url + "/v1"
    return {
        "providers": {"mock": {"base_url": upstream, "api_key": "sk-x", "timeout_s": 60, "max_retries": 0}},
        "models": {
            "cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
            "slow": {"provider": "mock", "price": {"input": 1, "output": 1}},
            "slow-then-cheap": {"provider": "mock", "upstream_model": "hanging", "price": {"input": 1, "output": 1},
                                "fallbacks": ["cheap"]},
        },
        "baseline": "slow",
        "ledger": {"path": str(tmp / "ledger.db")},
        "server": {"request_timeout_s": timeout_s},
    }


@pytest.fixture(scope="module")
def served(mock: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer]]:
    gw = Gateway.from_config(config(mock, tmp_path_factory.mktemp("deadline"), 1.0))
    with run_in_thread(gw.app()) as server:
        yield gw, server
    gw.close()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0)


def ledger_errors(gw: Gateway) -> list[tuple[str, str]]:
    gw.flush()
    with sqlite3.connect(gw.config.ledger.path) as conn:
        return conn.execute("SELECT status, error_type FROM requests WHERE status = 'error'").fetchall()


def ledger_row(gw: Gateway, exc: openai.APIStatusError) -> list[tuple[str, str]]:
    """The ledger row of the request that failed with ``exc`` (by the id the client was given)."""
    gw.flush()
    with sqlite3.connect(gw.config.ledger.path) as conn:
        return conn.execute("SELECT status, error_type FROM requests WHERE request_id = ?",
                            (exc.response.headers["x-thrifty-request-id"],)).fetchall()


def test_a_request_past_the_deadline_is_a_504_and_is_recorded(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    with pytest.raises(openai.APIStatusError) as exc:
        client(server).chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 504
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "request_timeout" and body["type"] == "timeout"
    assert "request_timeout_s = 1s" in body["message"]
    assert ("error", "RequestTimeoutError") in ledger_errors(gw)
    assert ledger_row(gw, exc.value) == [("error", "RequestTimeoutError")]


def test_a_stream_past_the_deadline_fails_before_its_first_chunk(served: tuple[Gateway, RunningServer]) -> None:
    gw, server = served
    with pytest.raises(openai.APIStatusError) as exc:
        client(server).chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}],
                                               stream=True)
    assert exc.value.status_code == 504
    assert ledger_row(gw, exc.value) == [("error", "RequestTimeoutError")]


def test_the_deadline_covers_fallbacks_too(served: tuple[Gateway, RunningServer]) -> None:
    # Without an overall deadline the hanging call would last its provider's 60 s timeout.
    gw, server = served
    with pytest.raises(openai.APIStatusError) as exc:
        client(server).chat.completions.create(model="slow-then-cheap", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 504
    assert ledger_row(gw, exc.value) == [("error", "RequestTimeoutError")]


def test_requests_within_the_deadline_are_unaffected(served: tuple[Gateway, RunningServer]) -> None:
    _, server = served
    reply = client(server).chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}])
    # The mock's answer, whole: "[model] answer to: <the question>... | <filler>".
    assert (reply.choices[0].message.content or "").startswith("[cheap] answer to: hi")
    assert reply.choices[0].finish_reason == "stop"


async def test_library_calls_have_the_same_deadline(mock: RunningServer, tmp_path: Path) -> None:
    async with Gateway.from_config(config(mock, tmp_path, 0.5)) as gw:
        with pytest.raises(RequestTimeoutError):
            await gw.chat(model="slow", messages=[{"role": "user", "content": "hi"}])


def _ctx() -> RequestContext:
    return RequestContext(request=ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "x"}]}))


async def test_exempt_requests_have_no_deadline() -> None:
    finished: list[bool] = []

    async def slow(ctx: RequestContext) -> None:
        await asyncio.sleep(0.3)
        finished.append(True)

    await DeadlineStage(0.01, exempt=lambda ctx: True)(_ctx(), slow)
    assert finished == [True]
    with pytest.raises(RequestTimeoutError):
        await DeadlineStage(0.01, exempt=lambda ctx: False)(_ctx(), slow)


async def test_a_timeout_raised_inside_the_pipeline_is_not_relabelled() -> None:
    async def inner(ctx: RequestContext) -> None:
        raise TimeoutError("from a library call inside")

    with pytest.raises(TimeoutError, match="from a library call inside"):
        await DeadlineStage(60)(_ctx(), inner)
