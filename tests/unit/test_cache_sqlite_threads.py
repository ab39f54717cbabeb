"""The SQLite cache backend under concurrent writers: no cursor may outlive the write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import numpy as np

from thrifty.cache.backends.base import EntryMeta
from thrifty.cache.backends.sqlite import SQLiteBackend


def _meta(key: str) -> EntryMeta:
    now = time.time()
    return EntryMeta(key, "tenant", "model", now, now + 60)


def test_write_never_hands_a_cursor_out_of_the_lock(tmp_path: Path) -> None:
    # A cursor freed after the lock is released resets its (cached, shared) statement while
    # another thread may be running it: the SQLITE_MISUSE seen in the soak bench.
    backend = SQLiteBackend(str(tmp_path / "c.db"))
    try:
        result = backend._write(lambda: backend._w.execute("DELETE FROM cache_locks WHERE key = ?", ("k",)))
        assert result is None
        assert not isinstance(backend._write(lambda: backend._w.execute("SELECT 1")), sqlite3.Cursor)
    finally:
        backend.close()


async def test_concurrent_locks_puts_vectors_and_unlocks_all_succeed(tmp_path: Path) -> None:
    backend = SQLiteBackend(str(tmp_path / "c.db"))
    try:
        async def worker(i: int) -> int:
            taken = 0
            for j in range(40):
                key = f"k{i}-{j % 4}"
                taken += int(await backend.try_lock(key, 5))
                await backend.put(_meta(key), b"x" * 64)
                await backend.add_vector("ns", _meta(key), "text", np.ones(8, dtype=np.float32))
                await backend.unlock(key)
            return taken

        taken = await asyncio.gather(*(worker(i) for i in range(8)))
        assert sum(taken) == 8 * 40  # each worker's keys are its own, so every lock is won
        stats = backend.stats_sync()
        assert stats["entries"] == 8 * 4
        assert stats["vectors"] == 8 * 40
    finally:
        backend.close()
