"""The platform team's review: two `thrifty serve` processes sharing one Redis and one PostgreSQL,
driven with the real `openai` client against the mock upstream, through a Redis restart."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import yaml

from fixtures.cli_run import assert_one_line, run_main
from fixtures.own_redis import OwnRedis
from fixtures.processes import thrifty_cmd, wait_healthy
from fixtures.services import free_port

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

ADMIN = "fleet-admin-key-1"


@pytest.fixture
def fleet(tmp_path: Path, pg_dsn: str) -> Iterator[dict[str, Any]]:
    """A mock upstream, a Redis of the test's own and two gateways on it and on one PostgreSQL."""
    own = OwnRedis(tmp_path)
    own.start()
    mock_port = free_port()
    mock = subprocess.Popen(thrifty_cmd("mock-upstream", "--port", str(mock_port), "--log-level", "warning"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = {
        "providers": {"mock": {"base_url": f"http://127.0.0.1:{mock_port}/v1", "api_key": "sk-upstream-fleet-secret"}},
        "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 2.0}}},
        "ledger": {"dsn": pg_dsn},
        "redis_url": own.url,
        "auth": {"enabled": True, "admin_key": ADMIN, "key_cache_ttl_s": 0.3},
        "cache": {"backend": "redis"},
    }
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    gateways: list[tuple[subprocess.Popen[bytes], Path]] = []
    urls = []
    try:
        for n in range(2):
            port = free_port()
            log = tmp_path / f"gateway{n}.log"
            with log.open("wb") as err:
                proc = subprocess.Popen(thrifty_cmd("serve", "--config", str(path), "--port", str(port)),
                                        stdout=subprocess.DEVNULL, stderr=err, env=env)
            gateways.append((proc, log))
            urls.append(f"http://127.0.0.1:{port}")
        wait_healthy(f"http://127.0.0.1:{mock_port}", mock)
        for url, (proc, _) in zip(urls, gateways, strict=True):
            wait_healthy(url, proc)
        yield {"config": path, "urls": urls, "redis": own, "gateways": gateways, "dsn": pg_dsn}
    finally:
        for proc in [mock, *(p for p, _ in gateways)]:
            proc.terminate()
        for proc in [mock, *(p for p, _ in gateways)]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        own.stop()


def create_key(config: Path, *args: str) -> str:
    out = subprocess.run(thrifty_cmd("keys", "create", "--config", str(config), "--json", *args),
                         capture_output=True, text=True, check=True, timeout=60)
    key: str = json.loads(out.stdout)["key"]
    return key


def log_lines(fleet: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Each gateway's stderr, stopped first so every line is written, as JSON objects."""
    out = []
    for proc, path in fleet["gateways"]:
        proc.terminate()
        proc.wait(timeout=30)
        out.append([json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")])
    return out


def test_a_redis_outage_is_logged_once_per_gateway_and_so_is_its_end(fleet: dict[str, Any]) -> None:
    """Found by the review: while Redis was down every request of a key with limits wrote two lines
    (a retry note and a warning) on every gateway, hundreds a second under load, and nothing said
    when Redis was back. Now each gateway logs the outage once, and its end once."""
    key = create_key(fleet["config"], "--name", "limited", "--budget-usd", "5", "--period", "day")
    free = create_key(fleet["config"], "--name", "unlimited")
    clients = [openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30) for url in fleet["urls"]]
    unlimited = [openai.OpenAI(base_url=url + "/v1", api_key=free, max_retries=0, timeout=30) for url in fleet["urls"]]
    ask = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "How are budgets kept?"}]}
    for client in clients:
        assert client.chat.completions.create(**ask).choices[0].message.content
    fleet["redis"].stop()
    for n in range(8):
        for client in unlimited:  # served without the cache, whose writes are dropped
            question = {**ask, "temperature": 0, "messages": [{"role": "user", "content": f"Is question {n} cached?"}]}
            assert client.chat.completions.create(**question).choices[0].message.content
        for url in fleet["urls"]:  # a load balancer's readiness checks meanwhile
            ready = httpx.get(url + "/ready", timeout=10)
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"
        for client in clients:
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(**ask)
            assert refused.value.status_code == 503
            assert refused.value.body["code"] == "service_unavailable"  # type: ignore[index]
    fleet["redis"].start()  # empty: the budget is seeded again from the ledger
    for client in clients:
        assert client.chat.completions.create(**ask).choices[0].message.content
    for url in fleet["urls"]:
        assert httpx.get(url + "/ready", timeout=10).status_code == 200
    for lines in log_lines(fleet):
        server = [line["msg"] for line in lines if line["logger"] == "thrifty.server"]
        assert len([m for m in server if m.startswith("readiness: redis unavailable")]) == 1, server
        assert "readiness: redis answers again" in server, server
        ops = [line["msg"] for line in lines if line["logger"] == "thrifty.ops"]
        down = [m for m in ops if m.startswith("budget store (Redis) unavailable")]
        assert len(down) == 1, ops
        assert "sk-upstream-fleet-secret" not in down[0] and key not in down[0]
        assert len([m for m in ops if "retrying on a new connection" in m]) <= 1, ops
        assert [m for m in ops if m.startswith("budget store (Redis) answers again")] != [], ops
        # The cache logged its outage once, not a warning per dropped write (8 a gateway here).
        cache = [line["msg"] for line in lines if "cache" in line["msg"] and line["level"] in ("warning", "error")]
        assert len([m for m in cache if "not answering" in m]) == 1, cache
        assert not [m for m in cache if "skipped" in m or "store failed" in m], cache


@pytest.mark.parametrize("command", [["stats"], ["clear", "--all"]])
def test_cache_commands_say_in_one_line_that_redis_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          command: list[str]) -> None:
    """Found by the review: `thrifty cache stats` and `cache clear` on a fleet whose Redis was
    down printed redis-py's traceback; now one line naming the Redis cache."""
    cfg = {"providers": {"mock": {"base_url": "http://127.0.0.1:9/v1"}}, "models": {"m": {"provider": "mock"}},
           "redis_url": f"redis://127.0.0.1:{free_port()}/0", "cache": {"backend": "redis"}}
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_main(capsys, "cache", *command, "--config", str(path))
    assert_one_line(code, err, f"cache {command[0]} failed: the Redis cache is unavailable")


def test_a_postgres_outage_is_logged_once_per_key_and_gateway_and_loses_no_row(
        fleet: dict[str, Any], database_switch: Callable[[bool], None]) -> None:
    """Found by the review: while PostgreSQL was down each gateway logged every known key again
    every `auth.key_cache_ttl_s` (twice: read by its hash, then by its id), and every request of a
    key it could not check added a line of its own. Now each is logged once per outage and the
    end of the outage once; the requests served meanwhile all reach the ledger when it is back."""
    key = create_key(fleet["config"], "--name", "known")
    ask = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "Is the ledger up?"}]}
    clients = [openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30) for url in fleet["urls"]]
    strangers = [openai.OpenAI(base_url=url + "/v1", api_key="thr-" + "x" * 43, max_retries=0, timeout=30)
                 for url in fleet["urls"]]
    served = [client.chat.completions.with_raw_response.create(**ask).headers["x-thrifty-request-id"]
              for client in clients]
    database_switch(False)
    for _ in range(6):
        time.sleep(0.35)  # past key_cache_ttl_s: every round asks the database again
        for client, stranger in zip(clients, strangers, strict=True):
            raw = client.chat.completions.with_raw_response.create(**ask)
            served.append(raw.headers["x-thrifty-request-id"])
            with pytest.raises(openai.APIStatusError) as refused:
                stranger.chat.completions.create(**ask)
            assert refused.value.status_code == 503
    database_switch(True)
    time.sleep(0.35)
    for client in clients:
        served.append(client.chat.completions.with_raw_response.create(**ask).headers["x-thrifty-request-id"])
    with psycopg.connect(fleet["dsn"]) as conn:
        deadline, found = time.monotonic() + 40, set()
        while time.monotonic() < deadline and not set(served) <= found:
            found = {r[0] for r in conn.execute("SELECT request_id FROM requests")}
            conn.commit()
            time.sleep(0.2)
    assert set(served) <= found
    for lines in log_lines(fleet):
        ops = [line["msg"] for line in lines if line["logger"] == "thrifty.ops"]
        assert len([m for m in ops if "serving key" in m]) == 1, ops
        assert len([m for m in ops if "cannot check" in m]) == 1, ops
        assert "key database answers again" in ops, ops
        assert all(key not in m for m in ops)
