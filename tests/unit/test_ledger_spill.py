"""Spilled ledger rows get back into the ledger (`thrifty ledger import-spill`), exactly once; the
writer retries for about 30 s before spilling, and closing it spills rather than waits."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from fixtures.cli_run import assert_one_line, run_main
from fixtures.rows import att, req
from thrifty.errors import DataError, StorageError
from thrifty.ledger.spill import append_spill, import_spill
from thrifty.ledger.store import SQLiteStore
from thrifty.ledger.writer import BACKOFF_S, LedgerWriter


class DownStore(SQLiteStore):
    """A real SQLite ledger whose writes fail while ``down``."""

    down = True

    def write(self, requests: object, attempts: object) -> None:  # type: ignore[override]
        if self.down:
            raise StorageError("ledger write failed: server closed the connection")
        super().write(requests, attempts)  # type: ignore[arg-type]


def count(store: SQLiteStore, table: str = "requests") -> int:
    return int(store.query(f"SELECT COUNT(*) FROM {table}")[0][0])


def test_default_retries_span_about_thirty_seconds() -> None:
    assert 25 <= sum(BACKOFF_S[:5]) <= 35  # the default ledger.write_retries is 5
    assert BACKOFF_S[0] <= 1  # a dropped connection is retried soon


def test_closing_a_writer_spills_at_once_instead_of_waiting_out_the_backoff(tmp_path: Path) -> None:
    spill = tmp_path / "l.db.failed.jsonl"
    w = LedgerWriter(DownStore(str(tmp_path / "l.db")), retries=5, spill_path=str(spill), backoff_s=(3600,))
    w.submit(req(1, "a", 0.1, 1.0), [att(1)])
    closer = threading.Thread(target=w.close)
    closer.start()
    closer.join(timeout=60)  # an hour of backoff would hold it far longer
    assert not closer.is_alive()
    assert w.failed_batches == 1 and json.loads(spill.read_text())["request"]["request_id"] == "r1"


def test_import_writes_spilled_rows_once_and_empties_the_file(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    store.write([req(1, "a", 0.1, 1.0)], [att(1)])  # written by a retry that did get through
    spill = tmp_path / "l.db.failed.jsonl"
    append_spill(str(spill), [(req(1, "a", 0.1, 1.0), [att(1)]), (req(2, "b", 0.2, 1.0), [att(2)])])
    append_spill(str(spill), [(req(3, "c", 0.3, 1.0), [])])
    result = import_spill(store, str(spill), now=0)
    assert (result.requests, result.new, result.attempts) == (3, 2, 2)
    assert count(store) == 3 and count(store, "attempts") == 2
    assert float(store.query("SELECT SUM(cost_usd) FROM requests")[0][0]) == pytest.approx(0.6)
    assert spill.read_text() == ""
    kept = Path(str(result.kept_as))
    assert kept.name == "l.db.failed.jsonl.imported-19700101T000000Z" and len(kept.read_text().splitlines()) == 3
    # Again, and the kept copy itself: nothing is counted twice.
    assert import_spill(store, str(spill)).kept_as is None
    again = import_spill(store, str(kept))
    assert (again.requests, again.new) == (3, 0) and count(store) == 3


def test_a_malformed_line_imports_nothing_and_keeps_the_file(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "l.db"))
    spill = tmp_path / "s.jsonl"
    append_spill(str(spill), [(req(1, "a", 0.1, 1.0), [])])
    with open(spill, "a", encoding="utf-8") as fh:
        fh.write('{"request": {"request_id": "r2"')  # cut short by a crash
    before = spill.read_text()
    with pytest.raises(DataError, match=r"s\.jsonl: line 2: not JSON"):
        import_spill(store, str(spill))
    assert count(store) == 0 and spill.read_text() == before


def test_import_fails_without_emptying_when_the_store_is_down(tmp_path: Path) -> None:
    store = DownStore(str(tmp_path / "l.db"))
    spill = tmp_path / "s.jsonl"
    append_spill(str(spill), [(req(1, "a", 0.1, 1.0), [])])
    with pytest.raises(StorageError):
        import_spill(store, str(spill))
    assert spill.read_text().strip() and not list(tmp_path.glob("s.jsonl.imported-*"))
    store.down = False
    assert import_spill(store, str(spill)).new == 1


def test_cli_imports_the_spill_file_of_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"ledger": {"path": "l.db"}}))
    spill = tmp_path / "l.db.failed.jsonl"
    append_spill(str(spill), [(req(1, "a", 0.1, 1.0), [att(1)]), (req(2, "b", 0.2, 1.0), [])])
    code, out, err = run_main(capsys, "ledger", "import-spill", "--config", str(cfg))
    assert code == 0, err
    assert f"imported 2 request rows (1 attempt rows) from {spill}: 2 new, 0 already in the ledger" in out
    assert f"{spill} emptied; its lines are kept in {spill}.imported-" in out
    code, out, _ = run_main(capsys, "ledger", "import-spill", "--config", str(cfg))
    assert code == 0 and out.startswith("nothing to import")
    kept = next(tmp_path.glob("l.db.failed.jsonl.imported-*"))
    code, out, _ = run_main(capsys, "ledger", "import-spill", "--config", str(cfg), "--file", str(kept))
    assert code == 0 and "0 new, 2 already in the ledger (not counted twice)" in out
    assert count(SQLiteStore(str(tmp_path / "l.db"))) == 2
    code, _, err = run_main(capsys, "ledger", "import-spill", "--config", str(cfg), "--file", str(tmp_path / "no"))
    assert_one_line(code, err, "--file", "does not exist")
