"""Two real gateway processes (`thrifty serve`) behind one key, sharing Redis and PostgreSQL:
one budget, one rate limit, one ledger, one key store (and revocation reaches both)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fixtures.processes import thrifty_cmd, wait_healthy
from fixtures.services import free_port
from thrifty.ledger.postgres import PostgresStore

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

ADMIN = "multi-admin-key-1"
PRICE = {"input": 1.0, "output": 2.0}


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, pg_dsn: str) -> Iterator[dict[str, Any]]:
    # The upstream runs in its own process too, so the test's client load does not starve it.
    mock_port = free_port()
    mock = subprocess.Popen(thrifty_cmd("mock-upstream", "--port", str(mock_port), "--log-level", "warning"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cfg = {
        "providers": {"mock": {"base_url": f"http://127.0.0.1:{mock_port}/v1", "api_key": "sk-upstream-never-leaks"}},
        "models": {"m": {"provider": "mock", "price": PRICE}},
        "ledger": {"dsn": pg_dsn},
        "redis_url": redis_url,
        "auth": {"enabled": True, "admin_key": ADMIN, "key_cache_ttl_s": 0.5,
                 "redis_prefix": "multi" + secrets.token_hex(4)},
        "cache": {"backend": "redis", "namespace": "multi" + secrets.token_hex(4), "semantic": {"enabled": True}},
    }
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs, urls = [mock], []
    try:
        for _ in range(2):
            port = free_port()
            proc = subprocess.Popen(thrifty_cmd("serve", "--config", str(path), "--port", str(port),
                                                "--log-level", "warning"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
        wait_healthy(f"http://127.0.0.1:{mock_port}", mock)
        for url, proc in zip(urls, procs[1:], strict=True):
            wait_healthy(url, proc)
        yield {"config": path, "urls": urls, "dsn": pg_dsn, "procs": procs}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def create_key(config: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(thrifty_cmd("keys", "create", "--config", str(config), "--json", *args),
                         capture_output=True, text=True, check=True, timeout=60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def test_two_processes_share_one_budget_one_ledger_one_key_store(cluster: dict[str, Any]) -> None:
    budget = 0.02
    key = create_key(cluster["config"], "--name", "shared", "--budget-usd", str(budget), "--period", "day")
    headers = {"authorization": f"Bearer {key['key']}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me about budgets."}], "max_tokens": 50}
    urls = cluster["urls"]
    served: dict[str, list[str]] = {u: [] for u in urls}
    refused: dict[str, int] = {u: 0 for u in urls}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=128)) as client:
        # One cache: an answer stored by process A is served by process B (same key = same scope).
        r = await client.post(urls[0] + "/admin/keys", json={"name": "cache-check"},
                              headers={"authorization": f"Bearer {ADMIN}"})
        cache_key = {"authorization": f"Bearer {r.json()['key']}"}
        question = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "What is a ledger?"}]}
        first = await client.post(urls[0] + "/v1/chat/completions", json=question, headers=cache_key)
        second = await client.post(urls[1] + "/v1/chat/completions", json=question, headers=cache_key)
        assert first.headers["x-thrifty-cache"] == "miss" and second.headers["x-thrifty-cache"] == "hit"
        assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]

        async def one(url: str) -> None:
            r = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
            if r.status_code == 200:
                served[url].append(r.headers["x-thrifty-request-id"])
                assert "sk-upstream" not in r.text
            else:
                assert r.status_code == 429, r.text
                assert r.json()["error"]["code"] == "budget_exceeded" and "retry-after" in r.headers
                refused[url] += 1

        for _ in range(30):  # waves of 64 concurrent requests, alternating between the processes
            before = sum(len(v) for v in served.values())
            await asyncio.gather(*(one(urls[i % 2]) for i in range(64)))
            if sum(len(v) for v in served.values()) == before:
                break
        # Both processes served and both refused once the one budget was spent.
        assert all(len(served[u]) > 32 for u in urls) and all(refused[u] > 0 for u in urls)
        # One key store: the admin API of process B sees the spend counted by both.
        r = await client.get(f"{urls[1]}/admin/keys/{key['key_id']}", headers={"authorization": f"Bearer {ADMIN}"})
        usage = r.json()["usage"]
        assert usage["reserved_usd"] == pytest.approx(0, abs=1e-9)
        # Revoking through process A reaches process B within auth.key_cache_ttl_s.
        r = await client.delete(f"{urls[0]}/admin/keys/{key['key_id']}", headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200
        await asyncio.sleep(0.7)
        r = await client.post(urls[1] + "/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"
        metrics = [(await client.get(u + "/metrics")).text for u in urls]
    # One ledger: every served request from either process is in PostgreSQL, under the key.
    store = PostgresStore(cluster["dsn"])
    try:
        deadline = time.monotonic() + 10
        ids: set[str] = set()
        want = {i for v in served.values() for i in v}
        while time.monotonic() < deadline and not want <= ids:
            ids = {r[0] for r in store.query("SELECT request_id FROM requests WHERE key_id = ? AND status = 'ok'",
                                             [key["key_id"]])}
            await asyncio.sleep(0.1)
        assert want <= ids
        (spend,) = store.query("SELECT SUM(cost_usd) FROM requests WHERE key_id = ?", [key["key_id"]])[0]
    finally:
        store.close()
    # Estimates hold (max_tokens is honoured), so 128 requests at a time never pushed spend past the budget.
    assert budget * 0.9 < spend <= budget + 1e-9
    assert usage["spent_usd"] == pytest.approx(spend, rel=1e-6)
    assert all('thrifty_requests_total{model="m"' in m for m in metrics)
