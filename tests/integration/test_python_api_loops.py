"""The Python API as scripts use it, against the mock upstream over real HTTP: one Gateway
driven from several event loops (asyncio.run twice, the sync client's loop thread), closing
it from a script, ledger rows of a script that never closes, stream retries before the first
chunk, and what clients see when the upstream fails."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from fixtures.services import free_port
from thrifty.errors import UpstreamError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.types import ChatRequest

MSG = [{"role": "user", "content": "Name a prime number."}]
SECRET = "sk-test-upstream-SECRET-9876"


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    models = {
        "cheap": {"answer": "7"},
        "locked": {"faults": {"status": 401, "error_message": f"Incorrect API key provided: {SECRET}"}},
        "forbidden": {"faults": {"status": 403}},
        "missing": {"faults": {"status": 404, "error_message": "The model `missing` does not exist"}},
        "bad": {"faults": {"status": 400}},
        "huge": {"faults": {"status": 413}},
        "odd": {"faults": {"status": 422}},
        "limited": {"faults": {"status": 429, "retry_after": 0}},
        "trunc": {"faults": {"truncate_after": 2}},
    }
    with run_in_thread(create_mock(MockConfig.from_dict({"models": models}))) as server:
        yield server


def config(tmp_path: Path, upstream: str, **ledger: Any) -> dict[str, Any]:
    return {
        "providers": {"local": {"base_url": upstream + "/v1", "api_key": SECRET, "max_retries": 0}},
        "models": {name: {"provider": "local", "price": {"input": 1, "output": 2}}
                   for name in ("cheap", "locked", "forbidden", "missing", "bad", "huge", "odd", "limited", "trunc")},
        "default_model": "cheap",
        "ledger": {"path": str(tmp_path / "ledger.db"), **ledger},
    }


def count_rows(tmp_path: Path) -> int:
    return int(SQLiteStore(str(tmp_path / "ledger.db")).query("SELECT COUNT(*) FROM requests WHERE status='ok'")[0][0])


def loop_threads() -> int:
    return sum(t.name == "thrifty-inprocess" for t in threading.enumerate())


# ------------------------------------------------------------------ several event loops


def test_readme_flow_chat_in_asyncio_run_then_sync_client_then_close(mock: RunningServer, tmp_path: Path) -> None:
    before = loop_threads()
    gw = Gateway.from_config(config(tmp_path, mock.url))
    assert asyncio.run(gw.chat(model="auto", messages=MSG))["choices"][0]["message"]["content"] == "7"
    client = gw.openai_client(max_retries=0)
    assert client.chat.completions.create(model="cheap", messages=MSG).choices[0].message.content == "7"  # type: ignore[arg-type]
    stream = client.chat.completions.create(model="cheap", messages=MSG, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "7"
    gw.close()
    assert gw.ledger is None and loop_threads() == before
    assert count_rows(tmp_path) == 3


def test_asyncio_run_twice(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path, mock.url))
    for _ in range(2):
        assert asyncio.run(gw.chat(model="cheap", messages=MSG))["choices"][0]["message"]["content"] == "7"
    gw.close()
    assert count_rows(tmp_path) == 2


def test_sync_client_first_then_asyncio_run_then_close(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path, mock.url))
    client = gw.openai_client(max_retries=0)
    client.chat.completions.create(model="cheap", messages=MSG)  # type: ignore[arg-type]

    async def main() -> str:
        reply = await asyncio.wait_for(gw.chat(model="cheap", messages=MSG), 20)
        return str(reply["choices"][0]["message"]["content"])

    assert asyncio.run(main()) == "7"
    client.chat.completions.create(model="cheap", messages=MSG)  # type: ignore[arg-type]
    gw.close()
    assert count_rows(tmp_path) == 3


async def test_aclose_in_async_code_after_the_sync_client_was_used(mock: RunningServer, tmp_path: Path) -> None:
    before = loop_threads()
    gw = Gateway.from_config(config(tmp_path, mock.url))
    client = gw.openai_client(max_retries=0)
    await asyncio.to_thread(client.chat.completions.create, model="cheap", messages=MSG)
    await gw.chat(model="cheap", messages=MSG)
    await gw.aclose()
    assert gw.ledger is None and loop_threads() == before
    assert count_rows(tmp_path) == 2


SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from thrifty.gateway import Gateway
    up, ledger, mode = sys.argv[1:4]
    gw = Gateway.from_config({
        "providers": {"p": {"base_url": up + "/v1", "api_key": "sk-test"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 1, "output": 2}}},
        # rows wait up to 30 s to be batched: only an exit hook can write them in time
        "ledger": {"path": ledger, "flush_interval_s": 30},
    })
    msgs = [{"role": "user", "content": "hi"}]
    if mode == "sync":
        client = gw.openai_client(max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="cheap", messages=msgs)
    else:
        for _ in range(3):
            asyncio.run(gw.chat(model="cheap", messages=msgs))
    print("done")  # and exit without gw.close()
""")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_script_that_never_closes_still_writes_its_ledger_rows(
    mock: RunningServer, tmp_path: Path, mode: str
) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mock.url, str(tmp_path / "ledger.db"), mode],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"
    assert count_rows(tmp_path) == 3
    assert "Traceback" not in out.stderr and "Unclosed" not in out.stderr


# ------------------------------------------------------------------ streams before the first chunk


def dead_and_alive(tmp_path: Path, mock: RunningServer) -> dict[str, Any]:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    return {
        "providers": {
            "dead": {"base_url": dead, "max_retries": 2, "backoff_base_s": 0.001, "connect_timeout_s": 5},
            "alive": {"base_url": mock.url + "/v1", "max_retries": 0},
        },
        "models": {
            "gone": {"provider": "dead", "fallbacks": ["cheap"], "price": {"input": 1, "output": 2}},
            "gone-alone": {"provider": "dead", "price": {"input": 1, "output": 2}},
            "cheap": {"provider": "alive", "price": {"input": 1, "output": 2}},
        },
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }


async def test_a_stream_is_retried_until_its_first_chunk_then_falls_back(mock: RunningServer, tmp_path: Path) -> None:
    async with Gateway.from_config(dead_and_alive(tmp_path, mock)) as gw:
        ctx = await gw.handle(ChatRequest.from_body({"model": "gone", "messages": MSG, "stream": True}))
        assert ctx.chunks is not None
        text = "".join([c["choices"][0]["delta"].get("content") or "" async for c in ctx.chunks if c["choices"]])
        assert text == "7"
        assert [(a.model, a.status) for a in ctx.attempts] == [("gone", "error")] * 3 + [("cheap", "ok")]
        stream_error = ctx.attempts[0].error
        # The same plain message a non-streaming call gets; no aiohttp internals.
        with pytest.raises(UpstreamError) as err:
            await gw.chat(model="gone-alone", messages=MSG)
        assert err.value.message == stream_error == "dead: connection failed connecting: connection refused"
        assert len(err.value.attempts) == 3


# ------------------------------------------------------------------ upstream failures seen by clients


@pytest.fixture
async def aclient(mock: RunningServer, tmp_path: Path) -> Any:
    gw = Gateway.from_config(config(tmp_path, mock.url))
    yield gw.async_openai_client(max_retries=0)
    await gw.aclose()


@pytest.mark.parametrize(("model", "code", "needle"), [
    ("locked", "upstream_auth_failed", "rejected the gateway's credentials"),
    ("forbidden", "upstream_auth_failed", "refused the gateway's credentials"),
    ("missing", "upstream_not_found", "does not know this model"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_auth_and_not_found_are_502_not_the_clients_fault(
    aclient: openai.AsyncOpenAI, model: str, code: str, needle: str, stream: bool
) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        await aclient.chat.completions.create(model=model, messages=MSG, stream=stream)  # type: ignore[call-overload]
    assert err.value.status_code == 502
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == code and needle in body["message"]
    assert SECRET not in str(body)


async def test_a_model_whose_provider_rejects_the_gateways_key_falls_back(
    mock: RunningServer, tmp_path: Path
) -> None:
    conf = config(tmp_path, mock.url)
    conf["models"]["locked"]["fallbacks"] = ["cheap"]
    async with Gateway.from_config(conf) as gw:
        ctx = await gw.handle(ChatRequest.from_body({"model": "locked", "messages": MSG}))
        assert ctx.served_model == "cheap"
        assert [(a.model, a.status) for a in ctx.attempts] == [("locked", "error"), ("cheap", "ok")]


@pytest.mark.parametrize(("model", "exc", "status"), [
    ("bad", openai.BadRequestError, 400),
    ("huge", openai.APIStatusError, 413),
    ("odd", openai.UnprocessableEntityError, 422),
    ("limited", openai.RateLimitError, 429),
])
async def test_upstream_client_errors_keep_their_status(
    aclient: openai.AsyncOpenAI, model: str, exc: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(exc) as err:
        await aclient.chat.completions.create(model=model, messages=MSG)  # type: ignore[arg-type]
    assert err.value.status_code == status


async def test_a_body_cut_short_is_reported_plainly(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        await aclient.chat.completions.create(model="trunc", messages=MSG)  # type: ignore[arg-type]
    message = str(err.value.body)
    assert "local: connection failed reading the response body (cut short)" in message
    for internal in ("ClientPayloadError", "ContentLengthError", "bytes", "<"):
        assert internal not in message
