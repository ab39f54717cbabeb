"""Ledger writes off the response path, never lost silently.

Requests put their rows on a queue and return; a daemon thread writes them in batches. A
failed batch is retried with backoff; after ``retries`` failures it is appended to a spill file
(``<ledger>.failed.jsonl``) and logged as an error, and ``failed_batches`` counts it for the
metrics endpoint. ``flush()`` waits until everything queued so far is written (tests, shutdown).

The thread is a daemon (it must never keep a process alive), and Python kills daemon threads
at exit, so a writer also registers an ``atexit`` hook that writes what is queued and closes
the store: a script that never calls ``Gateway.close()`` still has its rows. The hook holds the
writer weakly and is unregistered by ``close()``.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import queue
import threading
import time
import weakref
from dataclasses import asdict

from thrifty.errors import StorageError
from thrifty.ledger.records import AttemptRow, RequestRow
from thrifty.ledger.store import SQLStore

log = logging.getLogger("thrifty.ledger")

_Item = tuple[RequestRow, list[AttemptRow]] | threading.Event | None


class LedgerWriter:
    def __init__(
        self,
        store: SQLStore,
        *,
        retries: int = 5,
        spill_path: str | None = None,
        max_batch: int = 500,
        flush_interval_s: float = 0.05,
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.retries = retries
        self.spill_path = spill_path
        self.max_batch = max_batch
        self.written = 0
        self.failed_batches = 0
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="thrifty-ledger", daemon=True)
        self._thread.start()
        # A partial of its own (not a bound method): unregister() removes this writer's hook only.
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def submit(self, request: RequestRow, attempts: list[AttemptRow]) -> None:
        if self._closed:
            log.error("ledger: request %s not recorded: the ledger was closed (Gateway.close())", request.request_id)
            return
        self._queue.put((request, attempts))

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every row submitted before this call is written (or spilled)."""
        if not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self) -> None:
        """Write everything queued, stop the thread, close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        self.flush()
        self._queue.put(None)
        self._wake.set()
        self._thread.join(timeout=10)
        self.store.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            # Gather for up to `flush_interval_s` by sleeping, not by waiting on the queue: a
            # queue wait would wake this thread (and take the GIL from the event loop) on every
            # submitted row. flush() and close() cut the sleep short.
            if not isinstance(first, threading.Event) and first is not None:
                self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            items: list[_Item] = [first]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [i for i in items if isinstance(i, tuple)]
            for start in range(0, len(batch), self.max_batch):
                self._write(batch[start : start + self.max_batch])
            for i in items:
                if isinstance(i, threading.Event):
                    i.set()
            if any(i is None for i in items):
                return

    def _write(self, batch: list[tuple[RequestRow, list[AttemptRow]]]) -> None:
        requests = [r for r, _ in batch]
        attempts = [a for _, rows in batch for a in rows]
        delay = 0.05
        for i in range(self.retries + 1):
            try:
                self.store.write(requests, attempts)
                self.written += len(requests)
                return
            except StorageError as exc:
                log.warning("ledger write failed (try %d of %d): %s", i + 1, self.retries + 1, exc)
                if i < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
        self.failed_batches += 1
        self._spill(batch)

    def _spill(self, batch: list[tuple[RequestRow, list[AttemptRow]]]) -> None:
        if not self.spill_path:
            log.error("ledger: %d request rows could not be written and no spill file is set", len(batch))
            return
        try:
            with open(self.spill_path, "a", encoding="utf-8") as fh:
                for req, attempts in batch:
                    fh.write(json.dumps({"request": asdict(req), "attempts": [asdict(a) for a in attempts]}) + "\n")
            log.error("ledger: %d request rows spilled to %s after repeated write failures", len(batch), self.spill_path)
        except OSError as exc:
            log.error("ledger: %d request rows lost: write and spill both failed (%s)", len(batch), exc)


def _close_at_exit(ref: weakref.ref[LedgerWriter]) -> None:
    writer = ref()
    if writer is None:
        return
    try:
        writer.close()
    except Exception as exc:  # at exit there is no caller left to raise to
        log.error("ledger: closing at interpreter exit failed: %s", exc)
