"""The embedded backend: one SQLite file in WAL mode.

Reads run inline on the caller's thread through their own connection (a primary-key lookup
takes microseconds, less than a thread hop); writes go through a second connection on a worker
thread so a commit never stalls the event loop. Several gateway processes on one host may
share the file: WAL gives them concurrent readers and serialised writers, and the lock table
gives them single flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from typing import Any

import numpy as np

from thrifty.cache.backends.base import EntryMeta, VectorRow, vec_bytes, vec_from
from thrifty.errors import StorageError

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS cache_entries (
        key TEXT PRIMARY KEY, tenant TEXT NOT NULL, model TEXT NOT NULL,
        created REAL NOT NULL, expires REAL NOT NULL, size INTEGER NOT NULL, value BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS cache_entries_created ON cache_entries (created)",
    "CREATE INDEX IF NOT EXISTS cache_entries_tenant ON cache_entries (tenant, model)",
    """CREATE TABLE IF NOT EXISTS cache_vectors (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, index_ns TEXT NOT NULL, key TEXT NOT NULL,
        tenant TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
        text TEXT NOT NULL, vec BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS cache_vectors_ns ON cache_vectors (index_ns, seq)",
    "CREATE TABLE IF NOT EXISTS cache_locks (key TEXT PRIMARY KEY, until REAL NOT NULL)",
]

# Check the size limit every this many writes (a COUNT(*) per write would cost more than it saves).
_EVICT_EVERY = 256
# Keys per ``IN (...)`` of ``get_many`` (SQLite's parameter limit is 999 on older builds).
_IN_CHUNK = 500


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, path: str, max_entries: int = 100_000) -> None:
        self.path = path
        self.max_entries = max_entries
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._writes = 0
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            self._w = self._connect()
            with self._wlock:
                for sql in _SCHEMA:
                    self._w.execute(sql)
                self._w.commit()
            self._r = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open cache {path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    # -- reads (inline) -------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        return self.get_sync(key)

    def get_sync(self, key: str) -> bytes | None:
        return self.get_many_sync([key])[0]

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return self.get_many_sync(keys)

    def get_many_sync(self, keys: list[str]) -> list[bytes | None]:
        """The live value of each key (an expired one is a miss, whatever eviction has not yet
        dropped), by ``IN`` lists of ``_IN_CHUNK`` keys (SQLite caps a statement's parameters)."""
        found: dict[str, bytes] = {}
        now = time.time()
        try:
            with self._rlock:
                for start in range(0, len(keys), _IN_CHUNK):
                    chunk = keys[start:start + _IN_CHUNK]
                    rows = self._r.execute(
                        f"SELECT key, value, expires FROM cache_entries WHERE key IN ({','.join('?' * len(chunk))})",
                        chunk).fetchall()
                    found.update((k, bytes(v)) for k, v, expires in rows if v is not None and expires > now)
        except sqlite3.Error:
            return [None] * len(keys)  # an unreadable store is a miss, never a failed request
        return [found.get(k) for k in keys]

    async def vectors_since(self, index_ns: str, cursor: int) -> tuple[list[VectorRow], int]:
        try:
            with self._rlock:
                rows = self._r.execute(
                    "SELECT seq, key, text, vec, expires FROM cache_vectors WHERE index_ns = ? AND seq > ? ORDER BY seq",
                    (index_ns, cursor),
                ).fetchall()
        except sqlite3.Error:
            return [], cursor
        out = []
        for seq, key, text, raw, expires in rows:
            cursor = max(cursor, int(seq))
            vec = vec_from(raw)
            if vec is not None:
                out.append(VectorRow(key, text, vec, float(expires)))
        return out, cursor

    # -- writes (worker thread) -----------------------------------------------------------
    def _write(self, fn: Any, *args: Any) -> Any:
        with self._wlock:
            try:
                result = fn(*args)
                if isinstance(result, sqlite3.Cursor):
                    # A cursor must not outlive the lock: CPython resets its statement when the
                    # cursor is freed, and a statement shared through the connection's statement
                    # cache may by then be running for another thread's write (SQLITE_MISUSE,
                    # "bad parameter or other API misuse").
                    result.close()
                    result = None
                self._w.commit()
                return result
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._w.rollback()
                raise StorageError(f"cache write failed: {exc}") from None

    async def put(self, meta: EntryMeta, value: bytes) -> None:
        await asyncio.to_thread(self.put_sync, meta, value)

    def put_sync(self, meta: EntryMeta, value: bytes) -> None:
        self._write(self._put, meta, value)

    def _put(self, meta: EntryMeta, value: bytes) -> None:
        self._put_many([(meta, value)])

    def _evict(self) -> None:
        """Drop expired entries, then the oldest ones beyond ``max_entries`` (with their vectors)."""
        now = time.time()
        self._w.execute("DELETE FROM cache_entries WHERE expires <= ?", (now,))
        self._w.execute("DELETE FROM cache_vectors WHERE expires <= ?", (now,))
        (count,) = self._w.execute("SELECT COUNT(*) FROM cache_entries").fetchone()
        excess = int(count) - self.max_entries
        if excess > 0:
            # Evict a little more than needed so the next writes do not evict one by one.
            n = excess + max(1, self.max_entries // 100)
            row = self._w.execute("SELECT created FROM cache_entries ORDER BY created LIMIT 1 OFFSET ?",
                                  (n - 1,)).fetchone()
            if row is not None:
                self._w.execute("DELETE FROM cache_entries WHERE created <= ?", (row[0],))
                self._w.execute("DELETE FROM cache_vectors WHERE created <= ?", (row[0],))

    async def add_vector(self, index_ns: str, meta: EntryMeta, text: str, vec: np.ndarray) -> None:
        await asyncio.to_thread(self.add_vectors_sync, index_ns, [(meta, text, vec)])

    def add_vectors_sync(self, index_ns: str, rows: list[tuple[EntryMeta, str, np.ndarray]]) -> None:
        self._write(lambda: self._w.executemany(
            "INSERT INTO cache_vectors (index_ns, key, tenant, model, created, expires, text, vec)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(index_ns, m.key, m.tenant, m.model, m.created, m.expires, t, vec_bytes(v)) for m, t, v in rows],
        ))

    async def put_many(self, items: list[tuple[EntryMeta, bytes]]) -> None:
        await asyncio.to_thread(self.put_many_sync, items)

    def put_many_sync(self, items: list[tuple[EntryMeta, bytes]]) -> None:
        """Bulk insert (an embeddings batch, benchmarks, imports) in one transaction; the size
        limit is checked at most once, when the batch passes a multiple of ``_EVICT_EVERY``
        writes, as that many single ``put``s would have checked it."""
        self._write(self._put_many, items)

    def _put_many(self, items: list[tuple[EntryMeta, bytes]]) -> None:
        self._w.executemany(
            "INSERT OR REPLACE INTO cache_entries (key, tenant, model, created, expires, size, value)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(m.key, m.tenant, m.model, m.created, m.expires, len(v), v) for m, v in items],
        ).close()
        before, self._writes = self._writes, self._writes + len(items)
        # Evict at writes 1, 1 + _EVICT_EVERY, ... (as often as one put at a time would): was one
        # of them in (before, after]?
        if items and (self._writes - 1) // _EVICT_EVERY > (before - 1) // _EVICT_EVERY:
            self._evict()

    async def try_lock(self, key: str, ttl_s: float) -> bool:
        return bool(await asyncio.to_thread(self._write, self._try_lock, key, ttl_s))

    def _try_lock(self, key: str, ttl_s: float) -> bool:
        now = time.time()
        self._w.execute("DELETE FROM cache_locks WHERE key = ? AND until <= ?", (key, now))
        cur = self._w.execute("INSERT OR IGNORE INTO cache_locks (key, until) VALUES (?, ?)", (key, now + ttl_s))
        taken = cur.rowcount == 1
        cur.close()
        return taken

    async def unlock(self, key: str) -> None:
        await asyncio.to_thread(self._write, lambda: self._w.execute("DELETE FROM cache_locks WHERE key = ?", (key,)))

    async def clear(self, tenant: str | None = None, model: str | None = None,
                    older_than: float | None = None) -> int:
        return int(await asyncio.to_thread(self.clear_sync, tenant, model, older_than))

    def clear_sync(self, tenant: str | None = None, model: str | None = None, older_than: float | None = None) -> int:
        where, params = [], []
        for col, op, val in (("tenant", "=", tenant), ("model", "=", model), ("created", "<", older_than)):
            if val is not None:
                where.append(f"{col} {op} ?")
                params.append(val)
        clause = (" WHERE " + " AND ".join(where)) if where else ""

        def run() -> int:
            n = self._w.execute("DELETE FROM cache_entries" + clause, params).rowcount
            self._w.execute("DELETE FROM cache_vectors" + clause, params)
            return int(n)

        return int(self._write(run))

    async def stats(self) -> dict[str, int]:
        return self.stats_sync()

    def stats_sync(self) -> dict[str, int]:
        with self._rlock:
            now = time.time()
            n, size = self._r.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache_entries WHERE expires > ?", (now,)
            ).fetchone()
            # Live vectors only, as entries: expired ones wait for the next eviction pass.
            (v,) = self._r.execute("SELECT COUNT(*) FROM cache_vectors WHERE expires > ?", (now,)).fetchone()
        return {"entries": int(n), "bytes": int(size), "vectors": int(v)}

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._w.close()
            self._r.close()
