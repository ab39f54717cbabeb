"""A gateway through outages of its real Redis and PostgreSQL: the budget store reconnects after
Redis drops its clients, known keys keep working while the key database is down (unknown ones
get a 503 naming the service, never its address), /ready reports both services while /health
stays 200, and the rows spilled meanwhile are imported back into the ledger exactly once."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
import yaml
from psycopg.conninfo import conninfo_to_dict

from fixtures.budget_probe import upstream
from fixtures.processes import thrifty_cmd
from fixtures.services import free_port
from thrifty.gateway import Gateway
from thrifty.ledger.postgres import PostgresStore
from thrifty.ops.keys import KeyStore, VirtualKey
from thrifty.ops.redis_limits import RedisLimiter
from thrifty.server.inprocess import httpx

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

HI = [{"role": "user", "content": "hi"}]


async def test_redis_limiter_reconnects_after_redis_drops_its_connection(redis_url: str) -> None:
    async def seed(key_id: str, since: float) -> float:
        return 0.0

    limiter = RedisLimiter(redis_url, seed, prefix="t" + secrets.token_hex(4))
    key = VirtualKey("key_kill", "k", "thr-abcd", 1.0, "day", 100, 10_000, (), 0.0)
    admin = aioredis.from_url(redis_url)
    try:
        ticket = await limiter.admit(key, 0.01, 10, time.time())
        await limiter.settle(ticket, 0.01, 10)
        # What a Redis restart does to every pooled connection (only the limiter's are killed here).
        own_id = await limiter._bound().client.client_id()
        assert await admin.client_kill_filter(_id=own_id) == 1
        ticket = await limiter.admit(key, 0.01, 10, time.time())
        await limiter.settle(ticket, 0.01, 10)
        assert await admin.client_kill_filter(_id=await limiter._bound().client.client_id()) == 1
        usage = await limiter.usage(key, time.time())
        assert usage.spent_usd == pytest.approx(0.02) and usage.requests_this_minute == 2
    finally:
        await limiter.aclose()
        await admin.aclose()


def _db_accepts_connections(admin_dsn: str, dsn: str, allow: bool) -> None:
    """Take the test's database away (refuse new connections, end the open ones) or give it back:
    to the gateway, the same as its PostgreSQL server going down and coming back."""
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'true' if allow else 'false'}")
        if not allow:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@pytest.fixture
def outage(postgres_dsn: str, pg_dsn: str) -> Iterator[Any]:
    def switch(up: bool) -> None:
        _db_accepts_connections(postgres_dsn, pg_dsn, up)

    try:
        yield switch
    finally:
        switch(True)


async def test_keys_and_ledger_through_a_postgres_outage(
        tmp_path: Path, pg_dsn: str, redis_url: str, outage: Any) -> None:
    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"m": {"provider": "p", "price": {"input": 1.0, "output": 2.0}}},
        # No retries: the rows of the requests served during the outage are spilled at once.
        "ledger": {"dsn": pg_dsn, "write_retries": 0},
        "redis_url": redis_url,
        "auth": {"enabled": True, "backend": "memory", "key_cache_ttl_s": 0.2, "key_cache_stale_s": 60},
    }
    path = tmp_path / "thrifty.yaml"  # relative paths (the spill file) resolve beside it
    path.write_text(yaml.safe_dump(cfg))
    store = PostgresStore(pg_dsn)
    keys = KeyStore(store)
    free, free_secret = keys.create("free")
    _, limited_secret = keys.create("limited", budget_usd=5.0, rpm=100)
    store.close()
    gw = Gateway.from_config(path, providers={"p": upstream()})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t")

    async def ask(secret: str) -> Any:
        return await client.post("/v1/chat/completions", json={"model": "m", "messages": HI, "max_tokens": 8},
                                 headers={"authorization": f"Bearer {secret}"})

    try:
        assert (await ask(free_secret)).status_code == 200
        assert (await ask(limited_secret)).status_code == 200
        assert (await client.get("/ready")).json() == {"status": "ready", "checks": {"ledger": "ok", "redis": "ok"}}
        gw.flush()

        outage(False)
        await asyncio.sleep(0.3)  # past key_cache_ttl_s: the gateway has to ask the database again
        served = [await ask(free_secret), await ask(limited_secret)]
        assert [r.status_code for r in served] == [200, 200], [r.text for r in served]
        unknown = await ask("thr-" + secrets.token_urlsafe(32))
        assert unknown.status_code == 503
        err = unknown.json()["error"]
        assert (err["type"], err["code"]) == ("storage_error", "service_unavailable")
        port = str(conninfo_to_dict(pg_dsn)["port"])
        assert "key database" in err["message"] and port not in unknown.text and "127.0.0.1" not in unknown.text
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"] == {"ledger": "unavailable", "redis": "ok"}
        assert port not in ready.text
        assert (await client.get("/health")).status_code == 200  # liveness is not readiness
        gw.flush()

        outage(True)
        KeyStore(PostgresStore(pg_dsn)).revoke(free.key_id)  # refused once the database answers again
        await asyncio.sleep(0.3)
        revoked = await ask(free_secret)
        assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "key_revoked"
        assert (await client.get("/ready")).status_code == 200
    finally:
        await client.aclose()
        await gw.aclose()

    spill = tmp_path / "thrifty-ledger.failed.jsonl"
    spilled = spill.read_text().count("\n")
    assert spilled == 2  # the two requests served during the outage
    run = subprocess.run(thrifty_cmd("ledger", "import-spill", "--config", str(path)),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"imported {spilled} request rows" in run.stdout and spill.read_text() == ""
    check = PostgresStore(pg_dsn)
    try:
        ok = check.query("SELECT COUNT(*) FROM requests WHERE status = 'ok'")[0][0]
        assert ok == 4  # 2 before the outage, 2 during it (refusals at the door have no row)
        kept = next(tmp_path.glob("thrifty-ledger.failed.jsonl.imported-*"))
        again = subprocess.run(thrifty_cmd("ledger", "import-spill", "--config", str(path), "--file", str(kept)),
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and f"0 new, {spilled} already in the ledger" in again.stdout
        assert check.query("SELECT COUNT(*) FROM requests WHERE status = 'ok'")[0][0] == ok
    finally:
        check.close()


async def test_ready_reports_an_unreachable_redis(tmp_path: Path) -> None:
    cfg = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}}, "models": {"m": {"provider": "p"}},
           "ledger": {"path": str(tmp_path / "l.db")}, "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    gw = Gateway.from_config(cfg)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t") as c:
        ready, health = await c.get("/ready"), await c.get("/health")
    await gw.aclose()
    assert health.status_code == 200
    assert ready.status_code == 503 and ready.json() == {"status": "unavailable",
                                                         "checks": {"ledger": "ok", "redis": "unavailable"}}
