"""The PostgreSQL ledger gives the same reports as SQLite for the same rows."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fixtures.rows import att, req
from thrifty.ledger.postgres import PostgresStore
from thrifty.ledger.report import spend_report
from thrifty.ledger.store import SQLiteStore

pytestmark = pytest.mark.postgres


def test_postgres_and_sqlite_reports_agree(postgres_dsn: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    # 23:59:59 UTC on one day and 00:00:01 on the next: the day buckets must floor, not round
    day = 86400 * 1000  # a window in 1972 that no other test writes to
    rows = [req(1, "a", 0.1, 1.0, ts=day - 1), req(2, "b", 0.2, 1.0, ts=day + 1), req(3, "a", 0.3, 1.0, ts=day + 2)]
    for r in rows:
        r.request_id = f"{tag}-{r.request_id}"
        r.key_id = tag
    pg, lite = PostgresStore(postgres_dsn), SQLiteStore(str(tmp_path / "l.db"))
    # The server may be shared with earlier runs: clear this test's time window first.
    with pg.conn.cursor() as cur:
        cur.execute("DELETE FROM requests WHERE ts BETWEEN %s AND %s", (day - 10, day + 10))
    pg.conn.commit()
    for store in (pg, lite):
        store.write(rows, [att(9)])
    since = day - 10
    until = day + 10

    def by(store: PostgresStore | SQLiteStore, group: str) -> list[tuple[str, int, float]]:
        out = [(r.group, r.requests, round(r.spend_usd, 6)) for r in spend_report(store, group, since, until)]
        return out

    for group in ("day", "model", "key"):
        assert by(pg, group) == by(lite, group), group
    days = by(lite, "day")
    assert len(days) == 2 and days[0][1] == 1 and days[1][1] == 2
    pg.close()
