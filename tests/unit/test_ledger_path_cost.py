"""What the ledger costs a served gateway per request: its rows are written a few statements to a
batch, not one statement per row (each statement step is a GIL hand-off from the event loop to
the writer thread), and nothing else about the rows changes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.served import serving

from thrifty.ledger.records import ATTEMPT_COLUMNS, REQUEST_COLUMNS, AttemptRow, RequestRow
from thrifty.ledger.store import ROWS_PER_INSERT, SQLiteStore, SQLStore
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

N = 40


def _statements(rows: int, columns: list[str], max_params: int = SQLiteStore.max_params) -> int:
    return -(-rows // min(ROWS_PER_INSERT, max_params // len(columns)))


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig())) as server:
        yield server


def _config(mock: RunningServer, tmp: Path) -> dict[str, Any]:
    # A long gathering interval: the requests' rows wait for flush(), then go in one batch.
    return {"providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234", "max_retries": 0}},
            "models": {"cheap": {"provider": "mock", "price": {"input": 0.25, "output": 1.0}}},
            "ledger": {"path": str(tmp / "ledger.db"), "flush_interval_s": 30}}


def test_a_batch_of_served_requests_is_written_in_a_few_statements(mock: RunningServer, tmp_path: Path) -> None:
    inserts: list[str] = []
    with serving(_config(mock, tmp_path)) as (gw, client):
        assert gw.ledger is not None
        conn = gw.ledger.store.conn
        conn.set_trace_callback(lambda sql: inserts.append(sql) if sql.startswith("INSERT INTO") else None)
        for i in range(N):
            client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": f"question {i}"}])
        assert gw.ledger.flush()
        conn.set_trace_callback(None)
    # One statement per row was 2 * N statement runs (2 * N GIL hand-offs) for this batch.
    assert len([s for s in inserts if s.startswith("INSERT INTO requests")]) == _statements(N, REQUEST_COLUMNS)
    assert len([s for s in inserts if s.startswith("INSERT INTO attempts")]) == _statements(N, ATTEMPT_COLUMNS)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT r.requested_model, r.status, r.prompt_tokens, a.seq, a.model, a.cost_usd "
                          "FROM requests r JOIN attempts a ON a.request_id = r.request_id").fetchall()
    assert len(rows) == N
    assert all(r[0] == "cheap" and r[1] == "ok" and r[2] > 0 and r[3] == 0 and r[4] == "cheap" and r[5] > 0
               for r in rows)


def _rows(ids: range) -> tuple[list[RequestRow], list[AttemptRow]]:
    reqs = [RequestRow(f"req_{i:04d}", 1000.0 + i, None, "default", None, None, "cheap", "cheap", None, "direct",
                       10, 0, 5, 0, 0.001, 0.002, None, 0.0, 0, 0.0, 2, 0, 12.5, "ok", None, None, False, False)
            for i in ids]
    atts = [AttemptRow(f"req_{i:04d}", seq, 1000.0 + i, "cheap", "mock", None, "answer", 10, 0, 5, 0, 0.0005,
                       "catalog", 6.0, "ok", None, None, None, None, False)
            for i in ids for seq in (0, 1)]
    return reqs, atts


class _OldSQLite(SQLiteStore):
    max_params = 999  # SQLite before 3.32: 35 request rows to a statement


def _check_rows_across_statements(store: SQLStore) -> None:
    assert store.write(*_rows(range(0, 100))) == 100
    # 80 already there and 220 new, over several statements (two tables, both limits): only
    # the new ones count, and the ones there are kept as they were.
    assert _statements(300, REQUEST_COLUMNS, store.max_params) > 1
    assert store.write(*_rows(range(20, 320))) == 220
    reqs, atts = _rows(range(0, 320))
    got_reqs = store.query(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests ORDER BY request_id")
    got_atts = store.query(f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts ORDER BY request_id, seq")
    assert [RequestRow(*r) for r in got_reqs] == reqs
    assert [AttemptRow(*a) for a in got_atts] == atts


@pytest.mark.parametrize("store_class", [SQLiteStore, _OldSQLite])
def test_rows_across_statements_keep_every_column_and_count_only_new_requests(
        tmp_path: Path, store_class: type[SQLiteStore]) -> None:
    store = store_class(str(tmp_path / "ledger.db"))
    try:
        _check_rows_across_statements(store)
    finally:
        store.close()


@pytest.mark.postgres
def test_the_same_on_postgresql(pg_dsn: str) -> None:
    from thrifty.ledger.postgres import PostgresStore

    store = PostgresStore(pg_dsn)
    try:
        _check_rows_across_statements(store)
    finally:
        store.close()
