"""The progress of a packed batch run, kept on disk so an interrupted run resumes.

    cp = Checkpoint.open("out.jsonl.partial", run_id_for(target, task, labels, items))
    try:
        results = await run_batch(gateway, items, task=task, model=target, checkpoint=cp)
    finally:
        cp.close()

The file is JSON lines: a header naming the run (a hash of the target, task, labels and items,
so another run's progress is never mixed in), then one output line per item that finished
``ok``, in the order they finished. Lines are appended whole at checkpoints (at most every
``interval_s``, and when the run ends, fails or is interrupted), each time after the gateway's
ledger rows of those items were written (``sync(before=gateway.flush)``), then fsync'd: an item
kept here has its spend in the ledger, so running again never pays for it twice. A crash can
leave a cut last line: it is ignored and cut off when the file is opened again (its item runs
again). Failed items are not kept: running again tries them again.

One run per file: the file is locked while open (POSIX ``flock``), so a second run of the same
command is refused instead of interleaving its lines with the first's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from thrifty.batching.items import Item
from thrifty.batching.runner import ItemResult
from thrifty.errors import UsageError

try:  # POSIX; without it (Windows) two runs on one file are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["Checkpoint", "run_id_for"]

HEADER_KEY = "thrifty_batch_checkpoint"
VERSION = 1


def run_id_for(target: str, task: str, labels: list[str] | None, items: list[Item]) -> str:
    """Same target (model or route), task, labels and items (ids and inputs, in order): same run.
    The pack size and concurrency are not part of it: resuming with other ones is the same work."""
    h = hashlib.sha256(json.dumps([VERSION, target, task, labels], ensure_ascii=False).encode())
    for it in items:
        h.update(json.dumps([it.id, it.input], ensure_ascii=False).encode() + b"\n")
    return "br_" + h.hexdigest()[:20]


def _read(data: bytes, run_id: str) -> tuple[dict[str, ItemResult], int, bool]:
    """``(finished results by id, bytes of whole lines, is this run's file)`` of a file's content."""
    end = data.rfind(b"\n") + 1  # what follows the last newline is a line cut by a crash
    lines = data[:end].split(b"\n")[:-1]
    header = _json(lines[0]) if lines else None
    if header is None or header.get(HEADER_KEY) != VERSION or header.get("run") != run_id:
        return {}, end, False
    finished: dict[str, ItemResult] = {}
    for raw in lines[1:]:
        row = _json(raw)
        # Only whole ok lines count; anything else (a line damaged on disk) runs again.
        if row is not None and row.get("status") == "ok" and isinstance(row.get("output"), str) and "id" in row:
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                finished[str(row["id"])] = ItemResult.from_json(row)
    return finished, end, True


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Checkpoint:
    """An open progress file: ``finished`` holds what earlier runs kept; ``add`` queues results
    that finished now, ``sync`` writes them (see the module doc)."""

    def __init__(self, path: Path, run_id: str, fh: IO[bytes], finished: dict[str, ItemResult],
                 replaced: bool, interval_s: float) -> None:
        self.path = path
        self.run_id = run_id
        self.finished = finished
        self.resumed = len(finished)
        # True when the file held progress that is not used (another run's, or --restart).
        self.replaced = replaced
        self.interval_s = interval_s
        self.kept = len(finished)  # ok items in the file
        self._fh: IO[bytes] | None = fh
        self._pending: list[bytes] = []
        self._lock = threading.Lock()  # the queue
        self._write_lock = threading.Lock()  # the file: one sync at a time
        self._last = time.monotonic()

    @classmethod
    def open(cls, path: str | Path, run_id: str, *, restart: bool = False, interval_s: float = 1.0) -> Checkpoint:
        """Open (or create) ``path`` for run ``run_id``: its kept results when it is this run's
        progress, else (or with ``restart``) an empty file for this run."""
        p = Path(path)
        fh = open(p, "a+b")  # noqa: SIM115 - held (and locked) until close()
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise UsageError(f"{p} is in use by another `thrifty batch run` of the same work; wait for it "
                                     "or stop it first") from None
            fh.seek(0)
            data = fh.read()
            finished, end, ours = _read(data, run_id)
            replaced = (bool(data[:end]) and not ours) or (restart and bool(finished))
            if restart or not ours:
                fh.truncate(0)
                header = json.dumps({HEADER_KEY: VERSION, "run": run_id}) + "\n"
                fh.write(header.encode())
                finished = {}
            elif end < len(data):
                fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            raise
        return cls(p, run_id, fh, finished, replaced, interval_s)

    def add(self, done: list[tuple[str | int, ItemResult]]) -> None:
        """Queue ``(input id, result)`` of items that finished ok (written by the next ``sync``)."""
        lines = [r.to_line(json_id).encode("utf-8") for json_id, r in done if r.status == "ok"]
        with self._lock:
            self._pending.extend(lines)

    def due(self) -> bool:
        """True when results are waiting and the last sync is ``interval_s`` old."""
        return bool(self._pending) and time.monotonic() - self._last >= self.interval_s

    def sync(self, before: Callable[[], None] | None = None) -> None:
        """Write the queued lines whole and fsync them; ``before`` runs first (the ledger flush:
        the items' rows are in the ledger before the items count as done). Safe to call from a
        worker thread while the event loop keeps calling ``add``."""
        with self._write_lock:
            with self._lock:
                lines, self._pending = self._pending, []
            if not lines or self._fh is None:
                return
            if before is not None:
                before()
            self._fh.write(b"".join(lines))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.kept += len(lines)
            self._last = time.monotonic()

    def close(self) -> None:
        """Release the file (queued lines not synced are dropped: their items run again)."""
        with self._write_lock:
            fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()  # closing releases the lock

    def remove(self) -> None:
        """The run is complete (its output written): the progress is no longer needed. Unlinked
        while still locked, so a run that starts meanwhile never has its new file removed."""
        if self._fh is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.close()
