"""Budgets, rate limits and the ledger shared through a real Redis and a real PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

from fixtures.budget_probe import run_overshoot, upstream
from fixtures.rows import NOW
from fixtures.rows import dashboard_row as row
from thrifty.errors import RateLimitError
from thrifty.gateway import Gateway
from thrifty.ledger.postgres import PostgresStore
from thrifty.ledger.store import SQLiteStore
from thrifty.ops.keys import KeyStore, VirtualKey
from thrifty.ops.redis_limits import RedisLimiter
from thrifty.server.dashboard import dashboard_data

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def shared_config(redis_url: str, dsn: str, **auth: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"m": {"provider": "p", "price": {"input": 1.0, "output": 2.0}}},
        "ledger": {"dsn": dsn},
        "redis_url": redis_url,
        "auth": {"enabled": True, "redis_prefix": "t" + secrets.token_hex(4), **auth},
    }


@pytest.mark.parametrize(("max_tokens", "answer_tokens", "budget"), [(100, None, 0.05), (None, 400, 0.2)])
async def test_two_gateways_one_budget_under_64_concurrent(
    redis_url: str, pg_dsn: str, max_tokens: int | None, answer_tokens: int | None, budget: float
) -> None:
    cfg = shared_config(redis_url, pg_dsn, default_completion_tokens=64)
    gateways = [Gateway.from_config(cfg, providers={"p": upstream(answer_tokens)}) for _ in range(2)]
    for gw in gateways:
        assert gw.ops.budget_stage is not None and isinstance(gw.ops.budget_stage.limiter, RedisLimiter)
    spend, probe = await run_overshoot(gateways, budget, max_tokens=max_tokens)
    assert spend == pytest.approx(probe.settled)  # one ledger: both instances' rows are in it
    if answer_tokens is None:
        assert budget * 0.95 < spend <= budget + 1e-9  # estimates held: no overshoot at all
    else:
        assert probe.at_reach is not None and 0 < spend - budget <= probe.bound() + 1e-9
    for gw in gateways:
        await gw.aclose()


async def test_rate_limit_is_shared_by_instances(redis_url: str, pg_dsn: str) -> None:
    async def seed(key_id: str, since: float) -> float:
        return 0.0

    prefix = "t" + secrets.token_hex(4)
    a, b = RedisLimiter(redis_url, seed, prefix=prefix), RedisLimiter(redis_url, seed, prefix=prefix)
    key = VirtualKey("key_rl", "rl", "thr-abcd", None, "day", 4, None, (), 0.0)
    admitted = 0
    for i in range(8):
        try:
            await (a if i % 2 else b).admit(key, 0.0, 10, 1_000_000.0)
            admitted += 1
        except RateLimitError as exc:
            assert exc.retry_after is not None and 0 < exc.retry_after <= 60
    assert admitted == 4
    await a.aclose()
    await b.aclose()


async def test_redis_budget_is_seeded_from_the_ledger(redis_url: str, pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    keys = KeyStore(store)
    key, _ = keys.create("seeded", budget_usd=1.0, period="month")
    store.write([row(1, key_id=key.key_id, cost_usd=0.75, ts=__import__("time").time())], [])
    cfg = shared_config(redis_url, pg_dsn)
    gw = Gateway.from_config(cfg, providers={"p": upstream()})
    assert gw.ops.limiter is not None
    usage = await gw.ops.limiter.usage(key, __import__("time").time())
    assert usage.spent_usd == pytest.approx(0.75)
    await gw.aclose()
    store.close()


def test_postgres_store_migrates_concurrently_and_reconnects(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn) for _ in range(6)]
    errors: list[BaseException] = []

    def touch(s: PostgresStore) -> None:
        try:
            s.query("SELECT COUNT(*) FROM requests")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=touch, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    names = [r[0] for r in stores[0].query("SELECT name FROM _thrifty_migrations ORDER BY name")]
    assert "002_ops_virtual_keys" in names and len(names) == len(set(names))
    # The server drops the connection (restart, failover, idle timeout): the next query reconnects.
    s = stores[0]
    (pid,) = s.query("SELECT pg_backend_pid()")[0]
    stores[1].query("SELECT pg_terminate_backend(?)", [pid])
    assert s.query("SELECT 1") == [(1,)]
    assert s.query("SELECT pg_backend_pid()")[0][0] != pid
    for st in stores:
        st.close()


def test_dashboard_data_is_the_same_on_postgres_and_sqlite(pg_dsn: str, tmp_path: Path) -> None:
    rows = [row(i, ts=NOW - i * 1800, task=f"t{i % 3}", strategy=["routing", "cascade", "cache"][i % 3],
                cache_status="hit" if i % 3 == 2 else "miss", escalations=i % 2) for i in range(40)]
    pg, lite = PostgresStore(pg_dsn), SQLiteStore(str(tmp_path / "l.db"))
    for s in (pg, lite):
        s.write(rows, [])
    for period in ("24h", "7d"):
        a, b = dashboard_data(pg, period, now=NOW), dashboard_data(lite, period, now=NOW)
        assert a["series"] == b["series"] and len(a["series"]) > 3
        assert a["totals"] == pytest.approx(b["totals"])
        assert a["tasks"] == b["tasks"] and a["tiers"] == b["tiers"]
    pg.close()
    lite.close()
