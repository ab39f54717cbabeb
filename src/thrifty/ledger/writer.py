"""Ledger writes off the response path, never lost silently.

Requests put their rows on a queue and return; a daemon thread writes them in batches. A
failed batch is retried with backoff (0.5, 1.5, 4, 8, then 16 s between tries: the default 5
retries span about 30 s, so a database restart or failover does not spill rows); after
``retries`` failures it is appended to a spill file (``<ledger>.failed.jsonl``, read back by
``thrifty ledger import-spill``) and logged as an error, and ``failed_batches`` counts it for
the metrics endpoint. Rows queued meanwhile wait in memory, up to ``max_queued`` of them: past
that (a database down for longer than the retries last, under load), the batch being retried is
spilled at once, and so is every further batch that fails while the backlog stays that long, so
a gateway running for weeks never holds an outage's worth of rows in memory. ``close()`` cuts
the backoff short: what still fails is spilled at once rather than lost when the process exits.
``flush()`` waits until everything queued so far is written (tests, shutdown).

The thread is a daemon (it must never keep a process alive), and Python kills daemon threads
at exit, so a writer also registers an ``atexit`` hook that writes what is queued and closes
the store: a script that never calls ``Gateway.close()`` still has its rows. The hook holds the
writer weakly and is unregistered by ``close()``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import queue
import threading
import weakref
from collections.abc import Sequence

from thrifty.errors import StorageError
from thrifty.ledger.records import AttemptRow, RequestRow
from thrifty.ledger.spill import append_spill
from thrifty.ledger.store import SQLStore

log = logging.getLogger("thrifty.ledger")

_Item = tuple[RequestRow, list[AttemptRow]] | threading.Event | None

# Seconds to wait before each retry of a failed batch; later retries wait the last figure.
BACKOFF_S: tuple[float, ...] = (0.5, 1.5, 4.0, 8.0, 16.0)


class LedgerWriter:
    def __init__(
        self,
        store: SQLStore,
        *,
        retries: int = 5,
        spill_path: str | None = None,
        max_batch: int = 500,
        flush_interval_s: float = 0.05,
        backoff_s: Sequence[float] = BACKOFF_S,
        max_queued: int = 100_000,
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.retries = retries
        self.backoff_s = tuple(backoff_s) or (0.0,)
        self._stopping = threading.Event()  # set by close(): no more backoff waits
        self._urgent = threading.Event()  # set during drain(): no backoff waits either
        # Set by close() and by submit() when the backlog passes max_queued: ends a backoff wait.
        self._hurry = threading.Event()
        self.max_queued = max_queued
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
        if self._queue.qsize() > self.max_queued:
            self._hurry.set()

    def backlog(self) -> int:
        """Items waiting to be written (rows, plus any pending flush markers)."""
        return self._queue.qsize()

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every row submitted before this call is written (or spilled)."""
        if not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()
        return done.wait(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """``flush()`` for a process about to end: a batch that fails is spilled after one more
        try instead of retried with backoff.

        Why: a server shutting down while its database is down would otherwise wait through the
        retries (half a minute) and be killed meanwhile (uvicorn re-raises the SIGTERM it caught
        once it has stopped, so no exit hook runs): the queued rows were neither written nor
        spilled. The writer stays open; later rows get the usual retries.
        """
        self._urgent.set()
        self._hurry.set()
        try:
            return self.flush(timeout)
        finally:
            self._urgent.clear()
            if not self._stopping.is_set():
                self._hurry.clear()

    def close(self) -> None:
        """Write everything queued, stop the thread, close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        self._stopping.set()
        self._hurry.set()
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
            # submitted row. flush() and close() cut the sleep short, and so does a backlog.
            if isinstance(first, tuple) and self._queue.qsize() < self.max_batch:
                self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            items: list[_Item] = [first]
            rows = int(isinstance(first, tuple))
            # One batch per round: the rest stays on the queue, where submit() sees the backlog.
            while rows < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                rows += isinstance(item, tuple)
            batch = [i for i in items if isinstance(i, tuple)]
            if batch:
                self._write(batch)
            for i in items:
                if isinstance(i, threading.Event):
                    i.set()
            if any(i is None for i in items):
                return

    def _write(self, batch: list[tuple[RequestRow, list[AttemptRow]]]) -> None:
        requests = [r for r, _ in batch]
        attempts = [a for _, rows in batch for a in rows]
        tries = 0
        while True:
            tries += 1
            try:
                self.store.write(requests, attempts)
                self.written += len(requests)
                return
            except StorageError as exc:
                log.warning("ledger write failed (try %d of %d): %s", tries, self.retries + 1, exc)
            if (tries > self.retries or self._stopping.is_set() or self._urgent.is_set()
                    or self._queue.qsize() > self.max_queued):
                break
            # Returns early when close() or drain() is called or the backlog passes max_queued:
            # one more try, then the spill file.
            self._hurry.wait(self.backoff_s[min(tries - 1, len(self.backoff_s) - 1)])
            if not (self._stopping.is_set() or self._urgent.is_set()):
                self._hurry.clear()  # the backlog is measured again after the next try
        self.failed_batches += 1
        self._spill(batch)

    def _spill(self, batch: list[tuple[RequestRow, list[AttemptRow]]]) -> None:
        if not self.spill_path:
            log.error("ledger: %d request rows could not be written and no spill file is set", len(batch))
            return
        try:
            append_spill(self.spill_path, batch)
            log.error("ledger: %d request rows spilled to %s after repeated write failures (write them back "
                      "with `thrifty ledger import-spill`)", len(batch), self.spill_path)
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
