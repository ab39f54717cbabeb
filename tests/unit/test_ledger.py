from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fixtures.rows import att, req
from thrifty.cli.report_render import render
from thrifty.errors import InvalidRequestError, StorageError
from thrifty.ledger.migrations import MIGRATIONS
from thrifty.ledger.report import parse_since, spend_report
from thrifty.ledger.store import SQLiteStore
from thrifty.ledger.writer import LedgerWriter


def test_migrations_apply_once(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    _ = store.conn  # first connection applies them
    assert store.migrate() == []
    names = [r[0] for r in store.query("SELECT name FROM _thrifty_migrations")]
    assert names == [m[0] for m in MIGRATIONS]
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"


def test_writer_writes_and_report_groups(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    w = LedgerWriter(store)
    w.submit(req(1, "a", 0.1, 1.0), [att(1)])
    w.submit(req(2, "b", 0.3, 1.0, task="code"), [])
    w.submit(req(3, "a", 0.0, 1.0, cache_status="hit"), [])
    assert w.flush()
    total, = spend_report(store)
    assert (total.requests, round(total.spend_usd, 6), round(total.baseline_usd, 6)) == (3, 0.4, 3.0)
    assert total.saved_pct == pytest.approx(86.6667, rel=1e-4) and total.cache_hits == 1
    by_model = {r.group: r for r in spend_report(store, "model")}
    assert by_model["a"].requests == 2 and by_model["b"].spend_usd == pytest.approx(0.3)
    by_task = {r.group for r in spend_report(store, "task")}
    assert by_task == {"faq", "code"}
    days = spend_report(store, "day")
    assert len(days) == 1 and days[0].group == time.strftime("%Y-%m-%d", time.gmtime())
    out = json.loads(render(spend_report(store, "model"), "json", "model"))
    assert [r["group"] for r in out] == ["a", "b"]
    assert render(spend_report(store, "model"), "csv", "model").splitlines()[0].startswith("group,requests")
    w.close()


def test_duplicate_request_id_is_not_double_counted(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    store.write([req(1, "a", 0.1, 1.0)], [att(1)])
    store.write([req(1, "a", 0.1, 1.0)], [att(1)])
    assert store.query("SELECT COUNT(*) FROM requests")[0][0] == 1


class FlakyStore(SQLiteStore):
    def __init__(self, path: str, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def write(self, requests: object, attempts: object) -> None:  # type: ignore[override]
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("disk on fire")
        super().write(requests, attempts)  # type: ignore[arg-type]


def test_failed_write_is_retried(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "l.db"), failures=2)
    w = LedgerWriter(store, retries=3, backoff_s=(0.01,))
    w.submit(req(1, "a", 0.1, 1.0), [])
    w.flush()
    assert w.written == 1 and w.failed_batches == 0
    assert store.query("SELECT COUNT(*) FROM requests")[0][0] == 1


def test_write_that_keeps_failing_is_spilled_not_lost(tmp_path: Path) -> None:
    spill = tmp_path / "l.db.failed.jsonl"
    w = LedgerWriter(FlakyStore(str(tmp_path / "l.db"), failures=100), retries=1, spill_path=str(spill))
    w.submit(req(7, "a", 0.1, 1.0), [att(7)])
    w.flush()
    assert w.failed_batches == 1
    line = json.loads(spill.read_text().splitlines()[0])
    assert line["request"]["request_id"] == "r7" and len(line["attempts"]) == 1


def test_parse_since() -> None:
    assert parse_since("2d", now=1_000_000) == 1_000_000 - 2 * 86400
    assert parse_since("2026-01-01") == pytest.approx(1767225600)
    with pytest.raises(InvalidRequestError, match=r"^--since: "):
        parse_since("yesterday")
    with pytest.raises(InvalidRequestError, match=r"^--until: "):
        parse_since("2020-13-45", flag="--until")


def test_json_report_is_strict_json() -> None:
    import json

    from thrifty.ledger.report import ReportRow

    row = ReportRow("total", 0, 0, 0.0, 0.0, 0.0, float("nan"), 0, 0, 0, 0)
    out = render([row], "json", "scope")
    assert "NaN" not in out and json.loads(out)[0]["saved_pct"] is None
