"""ResponseIndex (server/stored_responses.py): stored-response ids in the ledger database, with a
bounded memory in front; a database that is down never fails a create, and fails a look-up with
a 503 rather than guessing whose the response is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thrifty.errors import ServiceUnavailableError, StorageError
from thrifty.ledger.migrations import MIGRATIONS
from thrifty.ledger.store import SQLiteStore
from thrifty.server.stored_responses import ResponseIndex, StoredResponse


def entry(rid: str, tenant: str = "t1") -> StoredResponse:
    return StoredResponse(rid, "req-" + rid, "gpt", "openai", "key-1", tenant)


class DownStore(SQLiteStore):
    """A ledger database that refuses every statement."""

    def _run(self, sql: str, params: Any, *, fetch: bool) -> Any:
        raise StorageError("ledger query failed: connection refused")


def test_the_migrations_are_appended_in_order() -> None:
    assert [name for name, _ in MIGRATIONS[3:5]] == ["004_stored_responses", "005_background_usage"]


async def test_entries_survive_in_the_database_for_another_index(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    await ResponseIndex(store).remember(entry("resp_1"))
    other = ResponseIndex(SQLiteStore(str(tmp_path / "l.db")))  # another instance: empty memory
    found = await other.find("resp_1")
    assert found is not None and (found.provider, found.tenant, found.key_id) == ("openai", "t1", "key-1")
    assert found.ts > 0 and await other.find("resp_2") is None
    await other.forget("resp_1")
    assert store.query("SELECT COUNT(*) FROM stored_responses") == [(0,)]


async def test_memory_is_bounded_and_used_without_a_database() -> None:
    index = ResponseIndex(None, memory_limit=2)
    for rid in ("a", "b", "c"):
        await index.remember(entry(rid))
    assert await index.find("a") is None  # the oldest went first
    assert await index.find("c") is not None


async def test_a_database_outage_never_fails_a_create_but_fails_a_lookup(tmp_path: Path) -> None:
    index = ResponseIndex(DownStore(str(tmp_path / "l.db")))
    await index.remember(entry("resp_1"))  # logged, not raised
    assert await index.find("resp_1") is not None  # this instance still knows it
    with pytest.raises(ServiceUnavailableError):
        await index.find("resp_elsewhere")  # cannot tell whose it is: 503, never a guess
    await index.forget("resp_1")  # logged, not raised


async def test_entries_older_than_the_retention_are_unknown_and_pruned(tmp_path: Path) -> None:
    import time

    store = SQLiteStore(str(tmp_path / "l.db"))
    index = ResponseIndex(store, retention_s=3600)
    old = StoredResponse("resp_old", "req-old", "gpt", "openai", "key-1", "t1", ts=time.time() - 7200)
    await index.remember(old)  # the first write also prunes: the old row is already past retention
    assert await index.find("resp_old") is None  # not even from memory
    assert store.query("SELECT COUNT(*) FROM stored_responses WHERE response_id = 'resp_old'") == [(0,)]
    await index.remember(entry("resp_new"))
    fresh = ResponseIndex(store, retention_s=3600)
    assert (await fresh.find("resp_new")) is not None


async def test_an_amendment_replaces_the_served_attempts_estimate_and_keeps_earlier_billed_attempts(
        tmp_path: Path) -> None:
    """A retry that billed before the call that was answered keeps its cost: the request's total
    moves by exactly (real - estimate), and that difference is what the key's budget gets."""
    import dataclasses

    from fixtures.rows import att, req
    from thrifty.server.stored_responses import Outcome
    from thrifty.types import Usage

    store = SQLiteStore(str(tmp_path / "l.db"))
    pending = dataclasses.replace(entry("resp_bg"), request_id="r1", pending=True)
    first = dataclasses.replace(att(1), seq=0, cost_usd=0.1, cost_source="estimated")  # a billed retry
    served = dataclasses.replace(att(1), seq=1, cost_usd=0.2, cost_source="estimated")  # the queued create
    store.write([req(1, "gpt", 0.3, 0.3)], [first, served])
    index = ResponseIndex(store)
    await index.remember(pending)
    amended = await index.amend(pending, Outcome(Usage(prompt_tokens=10, completion_tokens=90), 0.5, "computed"))
    assert amended is not None and amended.estimate_usd == pytest.approx(0.2)
    assert store.query("SELECT cost_usd FROM requests WHERE request_id = 'r1'")[0][0] == pytest.approx(0.6)
    assert [r[0] for r in store.query("SELECT cost_usd FROM attempts WHERE request_id = 'r1' ORDER BY seq")] == \
        [pytest.approx(0.1), pytest.approx(0.5)]
    assert await index.amend(pending, Outcome(Usage(), 9.0, "computed")) is None  # once
