"""Streams over real HTTP are priced: usage is asked of the upstream even when the client did
not ask (and not shown to it), and a stream the client abandons still records what it spent."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fixtures.served import leave_stream
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MSGS = [{"role": "user", "content": "tell me a long story about cats"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer, RunningServer]]:
    # Short enough that the mock, which finishes writing a stream its client left, stops quickly.
    mock_cfg = MockConfig.from_dict({"models": {"slow": {"faults": {"chunk_delay_ms": 50},
                                                         "output_tokens": [30, 30]},
                                                "late": {"faults": {"latency_ms": 3000}}}})
    with run_in_thread(create_mock(mock_cfg)) as mock:
        cfg: dict[str, Any] = {
            "providers": {"m": {"base_url": mock.url + "/v1", "api_key": "sk-test-0000", "max_retries": 0}},
            "models": {"cheap": {"provider": "m", "price": {"input": 1, "output": 2}},
                       "slow": {"provider": "m", "price": {"input": 1, "output": 2}},
                       "late": {"provider": "m", "price": {"input": 1, "output": 2}},
                       "premium": {"provider": "m", "price": {"input": 10, "output": 40}}},
            "baseline": "premium",
            "ledger": {"path": str(Path(tmp_path_factory.mktemp("acct")) / "ledger.db")},
        }
        gw = Gateway.from_config(cfg)
        with run_in_thread(gw.app()) as server:
            yield gw, server, mock


def _rows(gw: Gateway, sql: str, want: int = 1) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + 10
    while True:
        gw.flush()
        assert gw.config.ledger.path
        with sqlite3.connect(gw.config.ledger.path) as conn:
            rows = conn.execute(sql).fetchall()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_stream_without_include_usage_is_priced_from_upstream_usage(
    served: tuple[Gateway, RunningServer, RunningServer]
) -> None:
    gw, server, mock = served
    body = {"model": "cheap", "messages": MSGS, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=10) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    assert lines and not any('"usage"' in line for line in lines)  # the client did not ask
    upstream = httpx.get(mock.url + "/mock/requests", params={"limit": 1}, timeout=5).json()["data"][0]["body"]
    assert upstream["stream_options"] == {"include_usage": True}
    (source, pt, ct), = _rows(gw, "SELECT cost_source, prompt_tokens, completion_tokens FROM attempts "
                                  "WHERE model = 'cheap'")
    assert source == "computed" and pt > 0 and ct > 0


def test_abandoned_stream_records_what_it_spent(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    gw, server, _ = served
    leave_stream(server.url, {"model": "slow", "messages": MSGS, "stream": True}, after=3, timeout=10)
    rows = _rows(gw, "SELECT r.status, r.error_type, r.cost_usd, a.cost_source, a.prompt_tokens, a.completion_tokens, "
                     "r.prompt_tokens, r.completion_tokens "
                     "FROM requests r JOIN attempts a USING (request_id) WHERE r.requested_model = 'slow'")
    (status, error_type, cost, source, pt, ct, req_pt, req_ct), = rows
    assert (status, error_type, source) == ("error", "ClientDisconnected", "estimated")
    # the prompt and the part of the answer already produced, counted offline
    assert pt > 0 and 0 < ct < 30 and cost == pytest.approx((pt * 1 + ct * 2) / 1e6)
    assert (req_pt, req_ct) == (pt, ct)  # the request's row says the same as its one call


def test_a_stream_left_before_its_first_byte_records_its_prompt_on_both_rows(
        served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    """Found by review: the attempt row had the prompt's tokens and their cost, the request's row
    0 tokens at that cost: per-request token figures (`thrifty report`) under-counted."""
    gw, server, _ = served
    body = {"model": "late", "messages": MSGS, "stream": True}
    with pytest.raises(httpx.ReadTimeout), httpx.stream("POST", server.url + "/v1/chat/completions",
                                                        json=body, timeout=0.5) as r:
        r.read()
    rows = _rows(gw, "SELECT r.error_type, r.cost_usd, a.prompt_tokens, a.cost_usd, r.prompt_tokens "
                     "FROM requests r JOIN attempts a USING (request_id) WHERE r.requested_model = 'late'")
    (error_type, cost, pt, attempt_cost, req_pt), = rows
    assert error_type == "ClientDisconnected"
    assert pt > 0 and cost == attempt_cost == pytest.approx(pt / 1e6)
    assert req_pt == pt


def test_a_request_past_its_deadline_records_its_prompt_on_both_rows(tmp_path: Path) -> None:
    """As a client that leaves: the deadline ends the answer before it began, the call is charged
    for its prompt, and the request's row has the same tokens as that call's."""
    mock_cfg = MockConfig.from_dict({"models": {"late": {"faults": {"latency_ms": 3000}}}})
    with run_in_thread(create_mock(mock_cfg)) as mock:
        cfg: dict[str, Any] = {
            "providers": {"m": {"base_url": mock.url + "/v1", "max_retries": 0}},
            "models": {"late": {"provider": "m", "price": {"input": 1, "output": 2}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "server": {"request_timeout_s": 0.5},
        }
        gw = Gateway.from_config(cfg)
        with run_in_thread(gw.app()) as server:
            r = httpx.post(server.url + "/v1/chat/completions", json={"model": "late", "messages": MSGS}, timeout=10)
            assert r.status_code >= 400
        rows = _rows(gw, "SELECT r.error_type, a.prompt_tokens, r.prompt_tokens "
                         "FROM requests r JOIN attempts a USING (request_id)")
        gw.close()
    (error_type, pt, req_pt), = rows
    assert error_type != "ClientDisconnected" and pt > 0
    assert req_pt == pt
