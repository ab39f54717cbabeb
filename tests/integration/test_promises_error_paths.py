"""Promises on every error path, over real HTTP (uvicorn on loopback, mock upstream):

- each failure the client sees is an OpenAI error body (or, once a stream has started, an
  OpenAI error event) with the right status;
- each one leaves exactly one ledger row, found by the ``x-thrifty-request-id`` the client got,
  with ``status='error'`` and the error's class;
- neither the provider key nor the client's key is in the response, the ledger or the cache,
  even when the upstream or a provider echoes the key in its error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.function import FunctionProvider

UPSTREAM_KEY = "sk-upstream-PROMISE-7f3a9c2e51"
CLIENT_KEY = "sk-client-PROMISE-b81d44e0aa"
SECRETS = (UPSTREAM_KEY, CLIENT_KEY)
MC = "Which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"

MOCK = {"models": {
    "down": {"faults": {"status": 500}},
    "limited": {"faults": {"status": 429, "retry_after": 0}},
    "leaky": {"faults": {"status": 401, "error_message": f"Incorrect API key provided: {UPSTREAM_KEY}"}},
    "hanging": {"faults": {"hang": True}},
    "trunc": {"faults": {"truncate_after": 3}, "output_tokens": [30, 30]},
    # Prose, no option letter: the heuristic scorer rejects it and the cascade escalates.
    "weak": {"answer": "Mammals are warm-blooded animals."},
}}


def _boom(body: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError(f"provider bug while holding {UPSTREAM_KEY}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("promises-errors")
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as mock:
        up = mock.url + "/v1"
        price = {"input": 1, "output": 1}
        cfg: dict[str, Any] = {
            "providers": {
                "mock": {"base_url": up, "api_key": UPSTREAM_KEY, "max_retries": 1, "backoff_base_s": 0.01},
                "impatient": {"base_url": up, "api_key": UPSTREAM_KEY, "timeout_s": 0.5, "max_retries": 0},
                "inproc": {"base_url": "http://127.0.0.1:1/v1"},
            },
            "models": {
                **{m: {"provider": "mock", "price": price} for m in ("down", "limited", "leaky", "trunc", "weak")},
                "hanging": {"provider": "impatient", "price": price},
                "boom": {"provider": "inproc", "price": price},
            },
            "routing": {"default_route": "plain", "routes": {
                "plain": {"model": "weak"},
                # Every tier fails: the last tier's error is the client's.
                "fragile": {"tiers": [{"model": "down", "threshold": 0.5}, {"model": "leaky"}]},
                # The first tier is rejected, the escalation's stream breaks after it started.
                "breaks": {"tiers": [{"model": "weak", "threshold": 0.8}, {"model": "trunc"}]},
            }},
            "ledger": {"path": str(tmp / "ledger.db")},
            "cache": {"path": str(tmp / "cache.db")},
        }
        gw = Gateway.from_config(cfg, providers={"inproc": FunctionProvider(_boom)})
        with run_in_thread(gw.app()) as server:
            yield gw, server, tmp
        gw.close()


def post(server: RunningServer, model: str, stream: bool, **extra: Any) -> httpx.Response:
    body = {"model": model, "stream": stream, "temperature": 0, "messages": [{"role": "user", "content": MC}],
            **extra}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {CLIENT_KEY}"})


def ledger_row(gw: Gateway, request_id: str) -> list[tuple[Any, ...]]:
    gw.flush()
    assert gw.config.ledger.path
    return SQLiteStore(gw.config.ledger.path).query(
        "SELECT status, error_type, error, n_attempts FROM requests WHERE request_id = ?", [request_id])


def assert_openai_error(payload: Any, status_type: str) -> dict[str, Any]:
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    err = payload["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and err["type"] == status_type, err
    return dict(err)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


CASES = [
    # model, HTTP status, OpenAI error type, ledger error_type, attempts
    ("down", 502, "upstream_error", "UpstreamStatusError", 2),  # retried once, then given up
    ("limited", 429, "rate_limit_error", "UpstreamRateLimitError", 2),
    ("leaky", 502, "upstream_error", "UpstreamStatusError", 1),  # the upstream echoes our key
    ("hanging", 504, "timeout", "UpstreamTimeoutError", 1),
    ("boom", 500, "server_error", "RuntimeError", 1),  # a provider bug, its message holds the key
    ("route:fragile", 502, "upstream_error", "UpstreamStatusError", 3),  # every tier failed
    ("nope", 404, "invalid_request_error", "NotFoundError", 0),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("model", "status", "err_type", "error_type", "attempts"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_failure_before_the_first_byte_is_an_openai_error_with_one_ledger_row(
        served: tuple[Gateway, RunningServer, Path], model: str, status: int, err_type: str, error_type: str,
        attempts: int, stream: bool) -> None:
    gw, server, _ = served
    resp = post(server, model, stream)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = assert_openai_error(resp.json(), err_type)
    assert_no_secret(resp.text)
    assert_no_secret(json.dumps(dict(resp.headers)))
    rows = ledger_row(gw, resp.headers["x-thrifty-request-id"])
    assert len(rows) == 1, rows
    row_status, row_error_type, row_error, n_attempts = rows[0]
    assert (row_status, row_error_type, n_attempts) == ("error", error_type, attempts)
    assert row_error and not any(s in row_error for s in SECRETS)
    if model == "boom":
        # An internal error says nothing of the bug (nor the key it held) to the client.
        assert err["message"].startswith("Internal error") and row_error == "internal error"


def test_a_stream_that_breaks_after_it_started_ends_with_an_error_event_and_an_error_row(
        served: tuple[Gateway, RunningServer, Path]) -> None:
    gw, server, _ = served
    resp = post(server, "trunc", stream=True)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events  # a broken stream must not look complete
    chunks = [json.loads(e) for e in events]
    assert any(c.get("choices") for c in chunks[:-1])  # it had started
    err = assert_openai_error(chunks[-1], "upstream_error")
    assert "truncated" in err["message"]
    assert_no_secret(resp.text)
    rows = ledger_row(gw, resp.headers["x-thrifty-request-id"])
    assert [(r[0], r[1], r[3]) for r in rows] == [("error", "UpstreamError", 1)]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_cascade_whose_escalation_breaks_serves_its_best_answer_whole(
        served: tuple[Gateway, RunningServer, Path], stream: bool) -> None:
    # A cascade buffers every tier before releasing an answer, so the escalation's broken stream
    # never reaches the client: the rejected cheap answer is served, complete, and says why.
    gw, server, _ = served
    resp = post(server, "route:breaks", stream, cache=False)  # each run calls the tiers
    assert resp.status_code == 200, resp.text
    if stream:
        events = [line[len("data: "):] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all("error" not in c for c in chunks)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    else:
        text = resp.json()["choices"][0]["message"]["content"]
    assert text == "Mammals are warm-blooded animals."
    rid = resp.headers["x-thrifty-request-id"]
    assert [r[0] for r in ledger_row(gw, rid)] == ["ok"]
    assert gw.config.ledger.path
    attempts = SQLiteStore(gw.config.ledger.path).query(
        "SELECT model, status, accepted, score_reason FROM attempts WHERE request_id = ? ORDER BY seq", [rid])
    assert attempts[0][:3] == ("weak", "ok", 1)
    assert attempts[1:] and {a[:3] for a in attempts[1:]} == {("trunc", "error", None)}  # retried, failed
    assert "later tiers failed" in attempts[0][3]


def test_no_key_reaches_the_ledger_the_cache_or_the_logs(
        served: tuple[Gateway, RunningServer, Path], caplog: pytest.LogCaptureFixture) -> None:
    gw, server, tmp = served
    caplog.set_level(logging.DEBUG)
    # Successes (stored in the cache, then served from it) and failures echoing the key.
    for model, stream in [("weak", False), ("weak", False), ("weak", True), ("leaky", False), ("leaky", True),
                          ("route:fragile", True), ("trunc", True), ("nope", False)]:
        assert_no_secret(post(server, model, stream).text)
    gw.flush()
    files = [p for p in tmp.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"ledger.db", "cache.db"}
    assert SQLiteStore(str(tmp / "cache.db")).query("SELECT COUNT(*) FROM cache_entries")[0][0] >= 1
    for path in files:  # the databases and their -wal / -shm files, as bytes
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, (secret, path.name)
    # Only the gateway's own records: the provider bug's traceback (the "boom" model, not asked
    # here) is the library user's logging to redact (docs: logs.register_secrets).
    assert_no_secret(caplog.text)


def test_a_provider_bug_is_still_recorded_as_an_attempt(served: tuple[Gateway, RunningServer, Path]) -> None:
    # The provider was called (and may have billed): the ledger should say so, as for any failure.
    gw, server, _ = served
    resp = post(server, "boom", stream=False)
    assert resp.status_code == 500
    assert [r[3] for r in ledger_row(gw, resp.headers["x-thrifty-request-id"])] == [1]
