"""The gateway over real HTTP: uvicorn on loopback, the official openai SDK, the mock upstream."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

SECRET = "sk-upstream-SECRET-abcdef123456"

MOCK = {
    "models": {
        "flaky": {"faults": {"fail_first": 1, "fail_status": 500}},
        "limited": {"faults": {"status": 429, "retry_after": 0}},
        "hanging": {"faults": {"hang": True}},
        "trunc": {"faults": {"truncate_after": 3}, "output_tokens": [30, 30]},
        "leaky": {"faults": {"status": 401, "error_message": f"Incorrect API key provided: {SECRET}"}},
    }
}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(mock: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer]]:
    tmp = tmp_path_factory.mktemp("gw")
    upstream = mock.url + "/v1"
    cfg: dict[str, Any] = {
        "providers": {
            "mock": {"base_url": upstream, "api_key": SECRET, "backoff_base_s": 0.01, "max_retries": 2},
            "impatient": {"base_url": upstream, "api_key": SECRET, "timeout_s": 1.0, "max_retries": 0},
            "patient": {"base_url": upstream, "api_key": SECRET, "timeout_s": 60.0, "max_retries": 0},
        },
        "models": {
            "cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
            "premium": {"provider": "mock", "price": {"input": 2.5, "output": 10}, "aliases": ["best"]},
            "flaky": {"provider": "mock", "price": {"input": 1, "output": 1}},
            "limited": {"provider": "mock", "price": {"input": 1, "output": 1}},
            "limited-with-fallback": {"provider": "mock", "upstream_model": "limited",
                                      "price": {"input": 1, "output": 1}, "fallbacks": ["cheap"]},
            "hanging": {"provider": "impatient", "price": {"input": 1, "output": 1}},
            "hanging-long": {"provider": "patient", "upstream_model": "hanging", "price": {"input": 1, "output": 1}},
            "trunc": {"provider": "mock", "price": {"input": 1, "output": 1}},
            "leaky": {"provider": "mock", "price": {"input": 1, "output": 1}},
        },
        "baseline": "premium",
        "ledger": {"path": str(tmp / "ledger.db")},
        "server": {"max_body_bytes": 20_000},
    }
    gw = Gateway.from_config(cfg)
    with run_in_thread(gw.app()) as server:
        yield gw, server
    gw.flush()


def client(server: RunningServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-key-000000", max_retries=0, **kw)


def ledger_rows(gw: Gateway, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    gw.flush()
    with sqlite3.connect(gw.config.ledger.path) as conn:
        return conn.execute(sql, args).fetchall()


MSG = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}]


def test_sync_completion_headers_and_ledger(gateway: tuple[Gateway, RunningServer]) -> None:
    gw, server = gateway
    raw = client(server).chat.completions.with_raw_response.create(model="cheap", messages=MSG)
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert raw.headers["x-thrifty-model"] == "cheap"
    rid = raw.headers["x-thrifty-request-id"]
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0
    expected = (usage.prompt_tokens * 0.1 + usage.completion_tokens * 0.2) / 1e6
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(expected, abs=1e-8)
    (cost, base, status, served), = ledger_rows(
        gw, "SELECT cost_usd, baseline_cost_usd, status, served_model FROM requests WHERE request_id = ?", rid
    )
    assert (status, served) == ("ok", "cheap")
    assert cost == pytest.approx(expected)
    assert base == pytest.approx((usage.prompt_tokens * 2.5 + usage.completion_tokens * 10) / 1e6)


async def test_async_stream_matches_non_stream_and_reports_usage(gateway: tuple[Gateway, RunningServer]) -> None:
    gw, server = gateway
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-client", max_retries=0)
    full = await aclient.chat.completions.create(model="best", messages=MSG)
    stream = await aclient.chat.completions.create(
        model="best", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == full.choices[0].message.content
    assert usage is not None and full.usage is not None
    assert usage.prompt_tokens == full.usage.prompt_tokens
    rows = ledger_rows(gw, "SELECT stream, status, cost_usd FROM requests WHERE served_model='premium' AND stream=1")
    assert rows and rows[-1][1] == "ok" and rows[-1][2] > 0
    await aclient.close()


def test_stream_without_include_usage_has_no_usage_chunk(gateway: tuple[Gateway, RunningServer]) -> None:
    _, server = gateway
    chunks = list(client(server).chat.completions.create(model="cheap", messages=MSG, stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_parameters_pass_through(gateway: tuple[Gateway, RunningServer], mock: RunningServer) -> None:
    _, server = gateway
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = client(server).chat.completions.create(
        model="cheap", messages=MSG, tools=tools, tool_choice="auto", temperature=0, seed=7, stop=["\n\n"],
        user="u-1", max_completion_tokens=50, logprobs=True, top_logprobs=2, metadata={"team": "a"}, store=True,
        response_format={"type": "json_object"}, n=2,
    )
    assert len(reply.choices) == 2
    import urllib.request

    with urllib.request.urlopen(mock.url + "/mock/requests") as fh:
        recorded = json.loads(fh.read())
    bodies = [r["body"] for r in recorded["data"] if r["body"].get("seed") == 7]
    assert bodies, "the mock did not see the request"
    body = bodies[-1]
    for key, value in {"tools": tools, "tool_choice": "auto", "temperature": 0, "stop": ["\n\n"], "user": "u-1",
                       "max_completion_tokens": 50, "logprobs": True, "top_logprobs": 2, "n": 2,
                       "metadata": {"team": "a"}, "response_format": {"type": "json_object"}}.items():
        assert body[key] == value, key
    # The provider's key is what goes upstream, never the client's (the mock records only the last
    # 4 characters of a credential: those of SECRET, not of the client's "...0000").
    call = next(r for r in recorded["data"] if r["body"].get("seed") == 7)
    assert call["headers"]["authorization"] == "..." + SECRET[-4:]
    assert not any("0000" in str(v) for k, v in call["headers"].items() if k in ("authorization", "api-key"))
    assert SECRET not in json.dumps(recorded)


def test_models_and_health(gateway: tuple[Gateway, RunningServer]) -> None:
    _, server = gateway
    ids = {m.id for m in client(server).models.list()}
    assert {"cheap", "premium", "best"} <= ids
    import urllib.request

    with urllib.request.urlopen(server.url + "/health") as fh:
        assert json.loads(fh.read())["status"] == "ok"


def test_models_retrieve_and_wrong_method(gateway: tuple[Gateway, RunningServer]) -> None:
    _, server = gateway
    # client.models.retrieve() calls GET /v1/models/{id}.
    assert client(server).models.retrieve("cheap").id == "cheap"
    with pytest.raises(openai.NotFoundError) as info:
        client(server).models.retrieve("no-such-model")
    assert "no-such-model" in str(info.value)
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(server.url + "/v1/chat/completions")  # GET on a POST endpoint
    assert http.value.code == 405 and http.value.headers["allow"] == "POST"
    body = json.loads(http.value.read())
    assert body["error"]["code"] == "method_not_allowed" and "allowed: POST" in body["error"]["message"]


def test_client_leaving_a_stream_before_its_first_byte_cancels_the_upstream_call(
        gateway: tuple[Gateway, RunningServer], mock: RunningServer) -> None:
    # The upstream never answers and the provider would wait 60 s: the gateway must notice the
    # client is gone, drop the upstream call and still write the ledger row.
    import socket
    import time

    import httpx

    def upstream_calls() -> int:
        return int(httpx.get(mock.url + "/mock/stats", timeout=5).json()["requests"])

    gw, server = gateway
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "hanging-long", "stream": True, "messages": MSG}).encode()
    before = upstream_calls()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # Leave only once the upstream call is in flight (a fixed sleep raced a loaded machine).
        deadline = time.monotonic() + 10
        while upstream_calls() == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert upstream_calls() > before, "the gateway never called the upstream"
    deadline = time.monotonic() + 10
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline and not rows:
        rows = ledger_rows(gw, "SELECT status, error_type FROM requests WHERE requested_model = 'hanging-long'")
        time.sleep(0.1)
    assert rows == [("error", "ClientDisconnected")]


def test_retry_on_5xx_records_every_attempt(gateway: tuple[Gateway, RunningServer]) -> None:
    gw, server = gateway
    raw = client(server).chat.completions.with_raw_response.create(model="flaky", messages=MSG)
    rid = raw.headers["x-thrifty-request-id"]
    attempts = ledger_rows(gw, "SELECT status FROM attempts WHERE request_id = ? ORDER BY seq", rid)
    assert [a[0] for a in attempts] == ["error", "ok"]


def test_upstream_429_maps_to_429_and_fallback_rescues(gateway: tuple[Gateway, RunningServer]) -> None:
    gw, server = gateway
    with pytest.raises(openai.RateLimitError):
        client(server).chat.completions.create(model="limited", messages=MSG)
    raw = client(server).chat.completions.with_raw_response.create(model="limited-with-fallback", messages=MSG)
    assert raw.headers["x-thrifty-model"] == "cheap"
    rid = raw.headers["x-thrifty-request-id"]
    models = ledger_rows(gw, "SELECT model, status FROM attempts WHERE request_id = ? ORDER BY seq", rid)
    assert models == [("limited-with-fallback", "error")] * 3 + [("cheap", "ok")]


def test_hanging_upstream_ends_in_timeout_error(gateway: tuple[Gateway, RunningServer]) -> None:
    _, server = gateway
    with pytest.raises(openai.APIStatusError) as err:
        client(server, timeout=20).chat.completions.create(model="hanging", messages=MSG)
    assert err.value.status_code == 504


def test_truncated_stream_ends_with_error_and_is_recorded_failed(gateway: tuple[Gateway, RunningServer]) -> None:
    gw, server = gateway
    with client(server).chat.completions.with_streaming_response.create(
            model="trunc", messages=MSG, stream=True) as resp:
        rid = resp.headers["x-thrifty-request-id"]  # this request's row, whatever ran before
        with pytest.raises(openai.APIError) as err:
            for _ in resp.parse():
                pass
    assert "truncated" in str(err.value)
    rows = ledger_rows(gw, "SELECT status, error_type, error FROM requests WHERE request_id = ?", rid)
    assert len(rows) == 1 and rows[0][:2] == ("error", "UpstreamError") and "truncated" in rows[0][2]


def test_truncated_body_says_it_was_cut_short_not_a_connection_failure(gateway: tuple[Gateway, RunningServer]) -> None:
    # Non-streaming: the upstream's headers arrive, then the body stops short.
    _, server = gateway
    with pytest.raises(openai.APIError) as err:
        client(server).chat.completions.create(model="trunc", messages=MSG)
    assert "reading the response body (cut short)" in str(err.value) and "connecting" not in str(err.value)


async def _post(server: RunningServer, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(
        server.url + "/v1/chat/completions", data=data, headers={"content-type": "application/json", **(headers or {})}
    ) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b'{"model": "cheap"}', 400, "messages"),
        (b'{"model": "cheap", "messages": []}', 400, "messages"),
        (b'{"model": "cheap", "messages": [{"role": "user", "content": 5}]}', 400, "content"),
        (b'{"model": "cheap", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400,
         "temperature"),
        (b'{"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}', 404, "does not exist"),
        (b'{"model": "cheap", "messages": [{"role": "user", "content": "' + b"x" * 30_000 + b'"}]}', 413, "limit"),
        (b'[1, 2]', 400, "JSON object"),
    ],
)
async def test_bad_input_gets_openai_error_and_no_ledger_row(
    gateway: tuple[Gateway, RunningServer], body: bytes, status: int, needle: str
) -> None:
    gw, server = gateway
    # Every row, not only the 'ok' ones: a refused request could never add an 'ok' row anyway.
    before = ledger_rows(gw, "SELECT COUNT(*) FROM requests")[0][0]
    code, payload = await _post(server, body)
    assert code == status
    assert set(payload["error"]) >= {"message", "type", "param", "code"}
    assert needle in payload["error"]["message"]
    new_rows = ledger_rows(gw, "SELECT status, error_type FROM requests ORDER BY rowid")[before:]
    # A body refused before the pipeline costs nothing and is not a request; an unknown model
    # is refused inside it, so it is recorded as a failed request.
    assert new_rows == ([("error", "NotFoundError")] if status == 404 else [])


async def test_compressed_body_is_refused_by_name(gateway: tuple[Gateway, RunningServer]) -> None:
    import gzip

    _, server = gateway
    body = gzip.compress(json.dumps({"model": "cheap", "messages": MSG}).encode())
    code, payload = await _post(server, body, {"content-encoding": "gzip"})
    assert code == 400 and "Content-Encoding 'gzip' is not supported" in payload["error"]["message"]


def test_unknown_path_is_openai_error(gateway: tuple[Gateway, RunningServer]) -> None:
    _, server = gateway
    with pytest.raises(openai.NotFoundError):
        client(server).moderations.create(input="x")  # completions and responses are served (passthrough)


def test_upstream_key_never_leaks(
    gateway: tuple[Gateway, RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    gw, server = gateway
    caplog.set_level(logging.DEBUG)
    with pytest.raises(openai.APIStatusError) as err:
        client(server).chat.completions.create(model="leaky", messages=MSG)
    assert SECRET not in str(err.value.body) and "[REDACTED]" in str(err.value.body)
    gw.flush()
    assert SECRET.encode() not in Path(gw.config.ledger.path).read_bytes()
    wal = Path(gw.config.ledger.path + "-wal")
    assert not wal.exists() or SECRET.encode() not in wal.read_bytes()
    assert SECRET not in caplog.text
