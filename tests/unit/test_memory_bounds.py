"""Structures a long-running gateway keeps per request stay bounded after many requests
(bench/soak.py measures the same in a live server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures.rows import att, req
from thrifty.cache.backends.base import EntryMeta
from thrifty.cache.backends.memory import MemoryBackend
from thrifty.cache.index import VectorIndex
from thrifty.cache.semantic import SemanticCache
from thrifty.cache.verifier import RuleVerifier
from thrifty.embeddings import build_embedder
from thrifty.errors import StorageError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.ledger.writer import LedgerWriter
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest


def meta(key: str) -> EntryMeta:
    now = time.time()
    return EntryMeta(key=key, tenant="t", model="m", created=now, expires=now + 3600)


async def remember(cache: SemanticCache, scope: str, key: str, question: str) -> None:
    """What the cache stage does on a miss: look the scope up, then store the answer's question."""
    await cache.slot(scope)
    await cache.add(scope, meta(key), question)


# ---------------------------------------------------------------- semantic cache indexes
async def test_semantic_indexes_of_many_scopes_stay_bounded() -> None:
    # A new tenant (or system prompt, or conversation) is a new scope: a gateway meets thousands.
    cache = SemanticCache(MemoryBackend(), build_embedder("lexical"), max_indexes=20, max_vectors=1000)
    for i in range(300):
        await remember(cache, f"tenant-{i}", f"k{i}", f"How do I reset the password of account {i}?")
    assert cache.indexes_kept == 20
    assert cache.vectors_kept == 20


async def test_semantic_vectors_of_one_growing_scope_stay_bounded() -> None:
    cache = SemanticCache(MemoryBackend(), build_embedder("lexical"), max_indexes=10, max_vectors=50)
    for i in range(400):
        await remember(cache, "one-scope", f"k{i}", f"What is the delivery date of order {i}?")
        assert cache.vectors_kept <= 50
    assert cache.indexes_kept <= 1


async def test_a_dropped_scope_is_reloaded_from_the_backend_and_still_hits() -> None:
    cache = SemanticCache(MemoryBackend(), build_embedder("lexical"), max_indexes=2, refresh_s=0.0)
    await remember(cache, "first", "k-first", "How do I change my delivery address?")
    for i in range(5):  # pushes "first" out of memory
        await remember(cache, f"other-{i}", f"k{i}", f"Where is parcel {i}?")
    assert cache.indexes_kept == 2
    match, _ = await cache.lookup("first", "How do I change my delivery address?", RuleVerifier(0.95), 0.95)
    assert match is not None and match.key == "k-first"


def test_a_small_index_allocates_rows_for_what_it_holds_not_256() -> None:
    # Every scope has an index; at 1024 dimensions 256 preallocated rows made each cost 1 MB.
    emb = build_embedder("lexical")
    index = VectorIndex(emb.dim, ann="none")
    index.add(["k"], ["How do I reset my password?"], emb.embed(["How do I reset my password?"]), [1e12])
    assert len(index) == 1
    assert index._mat.shape[0] <= 8
    for i in range(100):
        index.add([f"k{i}"], [f"q{i}"], emb.embed([f"question {i}"]), [1e12])
    assert len(index) == 101 and index._mat.shape[0] < 2 * 101


def test_the_gateway_bounds_its_semantic_indexes_from_the_config(tmp_path: Path) -> None:
    config = {
        "providers": {"mock": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}}},
        "ledger": {"enabled": False},
        "cache": {"path": str(tmp_path / "c.db"), "max_entries": 500,
                  "semantic": {"enabled": True, "embedder": "lexical", "max_indexes": 7}},
    }
    gw = Gateway.from_config(config)
    try:
        assert gw.cache_stage is not None and gw.cache_stage.semantic is not None
        assert gw.cache_stage.semantic.max_indexes == 7
        assert gw.cache_stage.semantic.max_vectors == 1000  # default: twice cache.max_entries
    finally:
        gw.close()


# ---------------------------------------------------------------- ledger writer backlog
class DownStore(SQLiteStore):
    """A real SQLite ledger whose writes always fail (a database down for the whole test)."""

    def write(self, requests: object, attempts: object) -> None:  # type: ignore[override]
        raise StorageError("ledger write failed: server closed the connection")


def spilled_rows(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_ledger_backlog_under_a_down_database_stays_bounded_and_loses_nothing(tmp_path: Path) -> None:
    spill = tmp_path / "l.db.failed.jsonl"
    # An hour of backoff per batch: without a bound every row of the outage would wait in memory.
    w = LedgerWriter(DownStore(str(tmp_path / "l.db")), retries=5, spill_path=str(spill), backoff_s=(3600,),
                     max_batch=10, max_queued=100)
    n = 1000
    for i in range(n):
        w.submit(req(i, "a", 0.1, 1.0), [att(i)])
    # Waiting for the writer thread to drain the excess (a deadline for a hung test, not a speed check).
    deadline = time.monotonic() + 60
    while w.backlog() > 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.backlog() <= 100
    assert spilled_rows(spill) >= n - 100 - 2 * 10
    w.close()  # spills what is left rather than waiting out the backoff
    assert spilled_rows(spill) == n


# ---------------------------------------------------------------- cache single flight
def cached_gateway(tmp_path: Path) -> Gateway:
    async def upstream(body: dict[str, Any]) -> dict[str, Any]:
        return chat_response(body["model"], "answer: " + body["messages"][-1]["content"],
                             {"prompt_tokens": 10, "completion_tokens": 5})

    config = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"cheap": {"provider": "p", "price": {"input": 1, "output": 2}}},
        "ledger": {"enabled": False},
        "cache": {"path": str(tmp_path / "c.db")},
    }
    return Gateway.from_config(config, providers={"p": FunctionProvider(upstream)})


def question(i: int) -> ChatRequest:
    return ChatRequest.from_body({"model": "cheap", "temperature": 0,
                                  "messages": [{"role": "user", "content": f"What is the status of order {i}?"}]})


async def test_requests_cancelled_while_waiting_for_the_cache_lock_leave_no_flight(tmp_path: Path) -> None:
    gw = cached_gateway(tmp_path)
    stage = gw.cache_stage
    assert stage is not None
    locked = asyncio.Event()

    async def held_elsewhere(key: str, ttl_s: float) -> bool:  # another instance holds every lock
        locked.set()
        await asyncio.sleep(3600)
        return False

    stage.backend.try_lock = held_elsewhere  # type: ignore[method-assign]
    for i in range(50):  # clients that give up (disconnect, deadline) while the lock is held
        locked.clear()
        task = asyncio.ensure_future(gw.handle(question(i)))
        await locked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(stage.flights) == 0
    await gw.aclose()


async def test_a_cache_lock_the_store_cannot_take_fails_no_request_and_leaves_no_flight(tmp_path: Path) -> None:
    gw = cached_gateway(tmp_path)
    stage = gw.cache_stage
    assert stage is not None

    async def broken(key: str, ttl_s: float) -> bool:
        raise StorageError("cache write failed: database is locked")

    stage.backend.try_lock = broken  # type: ignore[method-assign]
    for i in range(50):
        ctx = await gw.handle(question(i))
        assert ctx.status == "ok" and ctx.response is not None
    assert len(stage.flights) == 0
    await gw.aclose()


async def test_the_memory_limiter_forgets_budgets_of_past_periods() -> None:
    """One budget entry per key per period: past days' entries are dropped once many pile up."""
    from thrifty.ops.keys import VirtualKey
    from thrifty.ops.ratelimit import MemoryLimiter

    async def no_spend(key_id: str, since: float) -> float:
        return 0.0

    limiter = MemoryLimiter(no_spend)
    day = 86400.0
    for i in range(5000):  # a new key each "day" for 5000 days
        key = VirtualKey(f"k{i}", "k", "sk-k", 10.0, "day", None, None, (), 0.0)
        ticket = await limiter.admit(key, 0.01, 10, now=1_700_000_000 + i * day)
        await limiter.settle(ticket, 0.01, 10)
    assert len(limiter._budget) < 4096 + 1
    last = VirtualKey("k4999", "k", "sk-k", 10.0, "day", None, None, (), 0.0)
    assert (await limiter.usage(last, now=1_700_000_000 + 4999 * day)).spent_usd == 0.01
