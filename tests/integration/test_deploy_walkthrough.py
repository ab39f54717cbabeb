"""What the multi-instance walkthrough (docs/deployment.md, docs/operations.md) found, against a
real PostgreSQL and a real Redis that stop answering without closing their connections (a
frozen server, a network partition): requests must get their stale key record or an OpenAI
503 quickly, never wait for the database or Redis to come back.

The freeze is a TCP forwarder in front of the real server that stops moving bytes while
keeping every connection open, which is what a client sees of a SIGSTOPped server."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from fixtures.budget_probe import upstream
from fixtures.tcp_proxy import TcpProxy
from thrifty.errors import ServiceUnavailableError, StorageError
from thrifty.gateway import Gateway
from thrifty.ledger.postgres import PostgresStore
from thrifty.ops import keys as keys_module
from thrifty.ops.keys import KEY_DB_DOWN, KeyStore
from thrifty.ops.ratelimit import window_of
from thrifty.ops.redis_limits import REDIS_TIMEOUT_S, RedisLimiter
from thrifty.server.inprocess import httpx

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

ADMIN = "walkthrough-admin-key"
HI = [{"role": "user", "content": "hi"}]


class FreezableProxy(TcpProxy):
    """Forwards 127.0.0.1:port to a real server; ``freeze()`` stops forwarding (connections stay
    open and new ones are accepted), ``thaw()`` lets the held bytes through again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.flowing = threading.Event()
        self.flowing.set()
        super().__init__((target_host, target_port))

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        super().close()

    def reading(self) -> bool:
        return self.flowing.is_set()  # frozen: leave the bytes unread, like a stopped server


@pytest.fixture
def pg_proxy(pg_dsn: str) -> Iterator[tuple[str, FreezableProxy]]:
    """A DSN of the test database that reaches it through a FreezableProxy."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(pg_dsn)
    proxy = FreezableProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    try:
        yield make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port), proxy
    finally:
        proxy.close()


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[tuple[str, FreezableProxy]]:
    """A URL of the test Redis that reaches it through a FreezableProxy."""
    parts = urlsplit(redis_url)
    proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        yield urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}")), proxy
    finally:
        proxy.close()


async def _timed(coro: object) -> tuple[object, float]:
    """The coroutine's result (or the exception it raised) and how long it took; the outer
    wait_for only keeps a regression from hanging the suite."""
    started = time.monotonic()
    try:
        result: object = await asyncio.wait_for(coro, 30)  # type: ignore[arg-type]
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


async def test_key_reads_fail_over_to_the_stale_record_when_the_database_freezes(
        pg_dsn: str, pg_proxy: tuple[str, FreezableProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "DB_WAIT_S", 1.0)
    direct = PostgresStore(pg_dsn)
    dsn, proxy = pg_proxy
    store = PostgresStore(dsn)
    keys = KeyStore(store, cache_ttl_s=0.1, stale_s=300)
    try:
        admin = KeyStore(direct)
        known, known_secret = admin.create(name="known", budget_usd=1.0, period="day")
        unseen, unseen_secret = admin.create(name="unseen")
        found = await keys.afind(known_secret)
        assert found is not None and found.key_id == known.key_id
        proxy.freeze()
        await asyncio.sleep(0.2)  # past key_cache_ttl_s: the next lookup asks the database

        # A key read recently is served from its record once the read gives up (DB_WAIT_S).
        stale, took = await _timed(keys.afind(known_secret))
        assert isinstance(stale, type(found)) and stale.key_id == known.key_id, stale
        assert took < 2.5, took
        # While that read is still stuck, a key never seen gets the 503 at once, without
        # queueing another thread behind the store's lock.
        refused, took = await _timed(keys.afind(unseen_secret))
        assert isinstance(refused, ServiceUnavailableError) and refused.message == KEY_DB_DOWN, refused
        assert refused.to_openai()["error"]["code"] == "service_unavailable"
        assert took < 0.5, took
        # Seeding a budget (first request of a period) is bounded the same way.
        spent, took = await _timed(keys.aspent_since(known.key_id, 0.0))
        assert isinstance(spent, StorageError) and took < 0.5, (spent, took)

        proxy.thaw()
        deadline = time.monotonic() + 15
        again: object = None
        while time.monotonic() < deadline:  # the stuck read finishes, then reads work again
            again, _ = await _timed(keys.afind(unseen_secret))
            if not isinstance(again, Exception):
                break
            await asyncio.sleep(0.2)
        assert again is not None and getattr(again, "key_id", None) == unseen.key_id, again
    finally:
        proxy.thaw()
        store.close()
        direct.close()


async def test_limited_requests_fail_fast_when_redis_freezes(redis_proxy: tuple[str, FreezableProxy]) -> None:
    from thrifty.ops.keys import VirtualKey

    url, proxy = redis_proxy

    async def seed(key_id: str, since: float) -> float:
        return 0.0

    limiter = RedisLimiter(url, seed, prefix="walk" + str(time.time_ns()))
    key = VirtualKey(key_id="key_frozen", name="f", key_prefix="thr-x", budget_usd=1.0, period="day",
                     rpm=100, tpm=None, routes=(), created_at=time.time())
    try:
        started = time.time()
        ticket = await limiter.admit(key, 0.001, 10, started)
        await limiter.settle(ticket, 0.001, 10)
        proxy.freeze()
        refused, took = await _timed(limiter.admit(key, 0.001, 10, time.time()))
        # One wait of REDIS_TIMEOUT_S, no second one on a new connection: Redis did not close
        # anything, it stopped answering (redis-py 8's default alone made this 10 s).
        assert isinstance(refused, ServiceUnavailableError), refused
        assert refused.message == "The budget store (Redis) is unavailable; try again shortly."
        assert took < REDIS_TIMEOUT_S + 1.0, took
        proxy.thaw()
        ticket = await limiter.admit(key, 0.001, 10, time.time())  # a new connection, admitted
        assert ticket.key_id == "key_frozen"
        ended = time.time()
        usage = await limiter.usage(key, ended)
        # The refused admit's bytes reached Redis after the thaw and ran there: it may hold its
        # reservation and count (conservative, docs/operations.md), but no more than once. A
        # minute that turned during the test's seconds started a new request count.
        counted = (2, 3) if window_of(started) == window_of(ended) else (1, 2)
        assert usage.requests_this_minute in counted, usage
        assert usage.spent_usd == pytest.approx(0.001), usage
    finally:
        proxy.thaw()
        await limiter.aclose()


async def test_gateway_answers_openai_errors_quickly_while_its_services_hang(
        tmp_path: Path, pg_dsn: str, pg_proxy: tuple[str, FreezableProxy],
        redis_proxy: tuple[str, FreezableProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTP, as clients see it: the chat path, the admin API, budgets and /ready."""
    monkeypatch.setattr(keys_module, "DB_WAIT_S", 1.0)
    dsn, pg = pg_proxy
    url, rds = redis_proxy
    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"m": {"provider": "p", "price": {"input": 1.0, "output": 2.0}}},
        "ledger": {"dsn": dsn},
        "redis_url": url,
        "auth": {"enabled": True, "admin_key": ADMIN, "key_cache_ttl_s": 0.2,
                 "redis_prefix": "walk" + secrets.token_hex(4)},
    }
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    admin = PostgresStore(pg_dsn)
    _, free_secret = KeyStore(admin).create("free")
    _, limited_secret = KeyStore(admin).create("limited", budget_usd=5.0, rpm=100)
    _, unseen_secret = KeyStore(admin).create("unseen")
    admin.close()
    gw = Gateway.from_config(path, providers={"p": upstream()})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t", timeout=30)
    adm = {"authorization": f"Bearer {ADMIN}"}

    async def ask(secret: str) -> tuple[Any, float]:
        started = time.monotonic()
        r = await asyncio.wait_for(client.post("/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                                               json={"model": "m", "messages": HI, "max_tokens": 8}), 20)
        return r, time.monotonic() - started

    def unavailable(r: Any, service: str) -> None:
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("storage_error", "service_unavailable") and service in err["message"]

    try:
        for secret in (free_secret, limited_secret):
            assert (await ask(secret))[0].status_code == 200
        pg.freeze()
        await asyncio.sleep(0.3)  # past key_cache_ttl_s
        served = [await ask(free_secret), await ask(limited_secret)]
        assert [r.status_code for r, _ in served] == [200, 200], [r.text for r, _ in served]
        assert max(t for _, t in served) < 2.5, served
        refused, took = await ask(unseen_secret)
        unavailable(refused, "key database")
        assert took < 2.5, took
        started = time.monotonic()
        listing = await asyncio.wait_for(client.get("/admin/keys", headers=adm), 10)  # fail, never hang
        unavailable(listing, "ledger database")
        assert time.monotonic() - started < 2.5
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"] == {"ledger": "unavailable", "redis": "ok"}
        pg.thaw()

        rds.freeze()
        await asyncio.sleep(0.3)
        refused, took = await ask(limited_secret)  # fail closed, after one Redis timeout
        unavailable(refused, "budget store (Redis)")
        assert took < REDIS_TIMEOUT_S + 1.0, took
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"] == {"ledger": "ok", "redis": "unavailable"}
        rds.thaw()
        assert (await ask(limited_secret))[0].status_code == 200
    finally:
        pg.thaw()
        rds.thaw()
        await client.aclose()
        await gw.aclose()


async def test_stored_response_lookups_and_writes_are_bounded_when_the_database_freezes(
        pg_proxy: tuple[str, FreezableProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    """`GET /v1/responses/{id}` of an id this instance does not hold in memory asks the database,
    and `POST /v1/responses` records the id there before answering: a frozen database used to hold
    both requests until it came back. Now a look-up is the documented 503 and a write a logged
    miss, each after DB_WAIT_S."""
    from thrifty.server import stored_responses
    from thrifty.server.stored_responses import LOOKUP_DOWN, ResponseIndex, StoredResponse

    monkeypatch.setattr(stored_responses, "DB_WAIT_S", 1.0)
    dsn, proxy = pg_proxy
    store = PostgresStore(dsn)
    index = ResponseIndex(store)
    written = ResponseIndex(store)
    try:
        await written.remember(StoredResponse("resp_frozen_1", "req_1", "m", "p", None, "t"))
        found = await index.find("resp_frozen_1")  # another instance's id: read from the database
        assert found is not None and found.tenant == "t"
        proxy.freeze()
        lookup, took = await _timed(ResponseIndex(store).find("resp_frozen_1"))
        assert isinstance(lookup, ServiceUnavailableError) and lookup.message == LOOKUP_DOWN, lookup
        assert took < 2.5, took
        write, took = await _timed(written.remember(StoredResponse("resp_frozen_2", "req_2", "m", "p", None, "t")))
        assert write is None and took < 2.5, (write, took)  # logged, the create still answers
        assert (await written.find("resp_frozen_2")) is not None  # this instance still knows it
    finally:
        proxy.thaw()
        store.close()


def test_the_dashboard_data_is_a_503_not_a_hang_when_the_database_freezes(
        tmp_path: Path, pg_proxy: tuple[str, FreezableProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.mock.server import run_in_thread
    from thrifty.server import dashboard

    monkeypatch.setattr(dashboard, "DATA_WAIT_S", 1.0)
    dsn, proxy = pg_proxy
    gw = Gateway.from_config({
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
        "ledger": {"dsn": dsn, "write_retries": 0},
        "auth": {"admin_key": ADMIN},
    })
    try:
        with run_in_thread(gw.app()) as server:
            headers = {"authorization": f"Bearer {ADMIN}"}
            ok = httpx.get(server.url + "/dashboard/data", headers=headers, timeout=30)
            assert ok.status_code == 200, ok.text
            proxy.freeze()
            started = time.monotonic()
            frozen = httpx.get(server.url + "/dashboard/data", headers=headers, timeout=30)
            took = time.monotonic() - started
            proxy.thaw()
        assert frozen.status_code == 503, frozen.text
        assert frozen.json()["error"]["message"] and "127.0.0.1" not in frozen.text
        assert took < 5, took
    finally:
        proxy.thaw()
        gw.close()


async def test_the_redis_cache_pauses_instead_of_waiting_on_every_call_when_redis_freezes(
        redis_proxy: tuple[str, FreezableProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the walkthrough: with Redis frozen, each cache call waited out its 2 s timeout,
    about 8 s per request for keys without limits. Now the first timeout pauses the cache's use of
    Redis (misses, dropped writes, no locks) for PAUSE_S, and Redis is tried again after it."""
    from thrifty.cache.backends import redis as redis_backend
    from thrifty.cache.backends.base import EntryMeta
    from thrifty.cache.backends.redis import RedisBackend

    monkeypatch.setattr(redis_backend, "PAUSE_S", 1.5)
    url, proxy = redis_proxy
    backend = RedisBackend(url, prefix="pause" + str(time.time_ns()))
    now = time.time()
    try:
        await backend.put(EntryMeta("k1", "t", "m", now, now + 600), b"cached answer")
        assert await backend.get("k1") == b"cached answer"
        proxy.freeze()
        first, took = await _timed(backend.get("k1"))
        assert first is None and took < 3.0, (first, took)  # one timeout, then a miss
        started = time.monotonic()
        assert await backend.get("k1") is None
        assert await backend.try_lock("k1", 5) is True
        # Dropped without an error of its own: the pause was logged once when it began.
        await backend.put(EntryMeta("k2", "t", "m", now, now + 600), b"x")
        assert await backend.vectors_since("ns", 0) == ([], 0)
        assert time.monotonic() - started < 0.5  # paused: nothing waited on Redis
        proxy.thaw()
        await asyncio.sleep(1.6)  # past the pause: Redis is asked again
        assert await backend.get("k1") == b"cached answer"
    finally:
        proxy.thaw()
        await backend.aclose()


def test_ledger_connections_get_tcp_keepalives_unless_the_dsn_sets_them(pg_dsn: str) -> None:
    """A connection whose server vanished (failover, partition) must error out and be replaced,
    not hang until the old host answers: keepalives and a TCP user timeout by default."""
    from psycopg.conninfo import make_conninfo

    store = PostgresStore(pg_dsn)
    own = PostgresStore(make_conninfo(pg_dsn, keepalives_idle=5))
    try:
        params = store.conn.info.get_parameters()
        assert params["keepalives"] == "1" and params["keepalives_idle"] == "30"
        assert params["tcp_user_timeout"] == "60000"
        assert own.conn.info.get_parameters()["keepalives_idle"] == "5"  # the DSN's own value wins
    finally:
        store.close()
        own.close()
