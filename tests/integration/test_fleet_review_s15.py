"""Session 15's fleet review: gateways sharing Redis and PostgreSQL as docs/operations.md and
docs/deployment.md deploy them, driven with the real `openai` client against the mock upstream
(a Redis of the test's own where it is restarted; the shared one is never disturbed)."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from fixtures.own_redis import OwnRedis
from fixtures.processes import thrifty_cmd
from fixtures.served import serving
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

pytestmark = pytest.mark.redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    own = OwnRedis(tmp_path)
    own.start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig())) as upstream:
        yield upstream


def cache_status(client: openai.OpenAI, text: str) -> str:
    """Ask a cacheable question; the gateway's `x-thrifty-cache` answer header."""
    raw = client.chat.completions.with_raw_response.create(
        model="m", temperature=0, max_tokens=20, messages=[{"role": "user", "content": text}])
    assert raw.parse().choices[0].message.content
    return str(raw.headers.get("x-thrifty-cache"))


def test_the_redis_cache_keeps_serving_right_after_a_redis_restart(
        tmp_path: Path, own_redis: OwnRedis, mock: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the review: after Redis restarted (up again, answering), the cache's next call
    ran on a pooled connection Redis had closed, got a ConnectionError and took it for an outage:
    "Redis is not answering" logged and the cache skipped Redis for 10 s (misses, answers not
    stored) on every gateway. A closed connection is now retried once on a new one, as the budget
    store's is, and only a timeout or a refused reconnection pauses the cache."""
    cfg: dict[str, Any] = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-s15-cache"}},
        "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 2.0}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "cache": {"backend": "redis", "redis_url": own_redis.url},
    }
    with serving(cfg) as (_, client), caplog.at_level(logging.WARNING, logger="thrifty.cache"):
        assert cache_status(client, "Which port does Redis use?") == "miss"
        assert cache_status(client, "Which port does Redis use?") == "hit"
        own_redis.stop()
        own_redis.start()  # empty, and every pooled connection of the gateway is closed
        assert cache_status(client, "Which port does Redis use?") == "miss"  # stored again at once
        assert cache_status(client, "Which port does Redis use?") == "hit"
        assert cache_status(client, "Is the cache shared?") == "miss"
        assert cache_status(client, "Is the cache shared?") == "hit"
    assert not [r.getMessage() for r in caplog.records if "not answering" in r.getMessage()]


def test_a_request_that_ends_while_redis_is_down_logs_no_traceback(
        tmp_path: Path, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the review: a limited key's request in flight when Redis went away could not be
    settled when it ended, and each one logged "finalizer failed" at ERROR with a traceback of
    the budget store's 503 (the outage itself was already logged once). Now the failed settle is
    one line without a traceback; the request is answered and recorded in the ledger as before."""
    slow = MockConfig.from_dict({"default": {"output_tokens": [40, 41], "faults": {"chunk_delay_ms": 50}}})
    with run_in_thread(create_mock(slow)) as upstream:
        cfg: dict[str, Any] = {
            "providers": {"mock": {"base_url": upstream.url + "/v1", "api_key": "sk-upstream-s15-settle"}},
            "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 2.0}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "redis_url": own_redis.url,
            "auth": {"enabled": True},
        }
        path = tmp_path / "thrifty.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = subprocess.run(thrifty_cmd("keys", "create", "--config", str(path), "--json", "--name", "limited",
                                         "--budget-usd", "5", "--rpm", "100"),
                             capture_output=True, text=True, check=True, timeout=60)
        secret = json.loads(out.stdout)["key"]
        with serving(cfg) as (_, anonymous), caplog.at_level(logging.INFO):
            client = anonymous.with_options(api_key=secret, timeout=30)
            ask = {"model": "m", "max_tokens": 60, "messages": [{"role": "user", "content": "Stream a long answer"}]}
            assert client.chat.completions.create(**ask).choices[0].message.content  # settled while Redis answers
            stream = client.chat.completions.with_raw_response.create(**ask, stream=True)
            request_id = stream.headers["x-thrifty-request-id"]
            stopping = threading.Thread(target=own_redis.stop)
            stopping.start()  # Redis goes away while the answer streams
            text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
            stopping.join()
            assert text
    with sqlite3.connect(tmp_path / "ledger.db") as db:  # answered in full, so recorded as ok
        assert db.execute("SELECT status FROM requests WHERE request_id = ?", (request_id,)).fetchall() == [("ok",)]
    records = [r for r in caplog.records if r.name.startswith("thrifty")]
    assert not [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.ERROR]
    assert [r for r in records if request_id in r.getMessage() and "settled" in r.getMessage()]
