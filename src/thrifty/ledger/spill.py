"""The spill file: ledger rows the writer could not store, and how they get back in.

When the ledger database keeps refusing a batch (writer.py), its rows are appended to the spill
file as JSON lines ``{"request": {...}, "attempts": [...]}`` rather than lost.
``import_spill`` (``thrifty ledger import-spill``) writes them into the store and then empties
the file, keeping a copy beside it. It can be run any number of times, even while gateways are
running:

- the store inserts with ``ON CONFLICT DO NOTHING`` on the request id (and on request id + seq
  for attempts), so a row already there, imported before or written by a retry, is never
  counted twice;
- the gateway's writer and the import hold an exclusive ``flock`` on the file while they touch
  it (POSIX; elsewhere there is no lock), so rows spilled during an import wait for it and land
  in the emptied file, never in the copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import IO, TYPE_CHECKING, Any

from thrifty.errors import DataError
from thrifty.jsonl import text_lines
from thrifty.ledger.records import AttemptRow, RequestRow

if TYPE_CHECKING:
    from thrifty.config import Config
    from thrifty.ledger.store import SQLStore

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

Batch = Sequence[tuple[RequestRow, list[AttemptRow]]]
_CHUNK = 500  # rows per transaction and per IN (...) list (SQLite's variable limit is 999 on old builds)


def spill_path(cfg: Config) -> str:
    """Where a gateway built from ``cfg`` spills: ``<ledger.path>.failed.jsonl`` beside a SQLite
    ledger, ``thrifty-ledger.failed.jsonl`` in ``base_dir`` with ``ledger.dsn`` (as gateway.py)."""
    if cfg.ledger.dsn:
        return cfg.resolve_path("thrifty-ledger.failed.jsonl")
    return cfg.resolve_path(cfg.ledger.path) + ".failed.jsonl"


@contextlib.contextmanager
def _locked(fh: IO[str]) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def append_spill(path: str, batch: Batch) -> None:
    """Append ``batch`` to the spill file at ``path`` (one line per request), under the lock."""
    text = "".join(json.dumps({"request": asdict(r), "attempts": [asdict(a) for a in atts]}) + "\n"
                   for r, atts in batch)
    with open(path, "a", encoding="utf-8") as fh, _locked(fh):
        fh.write(text)


_REQUEST_FIELDS = {f.name for f in fields(RequestRow)}
_ATTEMPT_FIELDS = {f.name for f in fields(AttemptRow)}
# The fields a spilled row must have: those added later have defaults (cache_write_tokens), so a
# file spilled by the previous version still imports after an upgrade.
_REQUEST_NEEDED = {f.name for f in fields(RequestRow) if f.default is MISSING}
_ATTEMPT_NEEDED = {f.name for f in fields(AttemptRow) if f.default is MISSING}


def _row(obj: Any, where: str) -> tuple[RequestRow, list[AttemptRow]]:
    if not isinstance(obj, dict) or not isinstance(obj.get("request"), dict) \
            or not isinstance(obj.get("attempts", []), list):
        raise DataError(f"{where}: expected {{\"request\": {{...}}, \"attempts\": [...]}}")
    req = obj["request"]
    if not _REQUEST_NEEDED <= set(req) <= _REQUEST_FIELDS:
        raise DataError(f"{where}: the request row's fields differ from this version's ledger "
                        f"(missing {sorted(_REQUEST_NEEDED - set(req))}, unknown {sorted(set(req) - _REQUEST_FIELDS)})")
    attempts = []
    for a in obj.get("attempts", []):
        if not isinstance(a, dict) or not _ATTEMPT_NEEDED <= set(a) <= _ATTEMPT_FIELDS:
            raise DataError(f"{where}: an attempt row's fields differ from this version's ledger")
        attempts.append(AttemptRow(**a))
    return RequestRow(**req), attempts


def parse_spill(text: str, path: str) -> list[tuple[RequestRow, list[AttemptRow]]]:
    """The rows of a spill file's text; ``DataError`` naming the first line that is not one
    (nothing is imported then: fix or delete that line and run again)."""
    out = []
    for n, line in enumerate(text_lines(text), 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not JSON ({exc}); a line cut short by a crash can be deleted") from None
        out.append(_row(obj, where))
    return out


@dataclass(frozen=True)
class ImportResult:
    requests: int  # request rows in the file
    new: int  # of those, rows the ledger did not have yet
    attempts: int  # attempt rows in the file
    kept_as: str | None  # where the file's lines were copied before it was emptied


def _present(store: SQLStore, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        rows = store.query(f"SELECT request_id FROM requests WHERE request_id IN ({', '.join('?' * len(chunk))})",
                           chunk)
        found.update(str(r[0]) for r in rows)
    return found


def import_spill(store: SQLStore, path: str, *, now: float | None = None) -> ImportResult:
    """Write the rows of the spill file at ``path`` into ``store``, then empty the file (its
    lines copied to ``<path>.imported-<UTC time>``). Nothing is emptied when a write fails:
    ``StorageError`` propagates and a second run finishes the job."""
    if not os.path.exists(path):
        return ImportResult(0, 0, 0, None)
    with open(path, "r+", encoding="utf-8") as fh, _locked(fh):
        try:
            text = fh.read()
        except UnicodeDecodeError as exc:  # thrifty writes UTF-8: this is not a spill file
            raise DataError(f"{path} is not UTF-8 text, so not a spill file ({exc.reason} at byte {exc.start})") from None
        rows = parse_spill(text, path)
        if not rows:
            return ImportResult(0, 0, 0, None)
        ids = list(dict.fromkeys(r.request_id for r, _ in rows))
        before = _present(store, ids)
        for i in range(0, len(rows), _CHUNK):
            part = rows[i:i + _CHUNK]
            store.write([r for r, _ in part], [a for _, atts in part for a in atts])
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        kept = f"{path}.imported-{stamp}"
        with open(kept, "a", encoding="utf-8") as out:
            out.write(text)
        # Emptied, not renamed or removed: a writer waiting on the lock holds this file open and
        # appends to it once the lock is released.
        fh.seek(0)
        fh.truncate()
    return ImportResult(len(ids), len(set(ids) - before), sum(len(a) for _, a in rows), kept)
