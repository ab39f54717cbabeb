"""Where compressions and history summaries live: SQLite (default) or Redis (shared).

Both stores hold JSON documents by ``(kind, key)`` (kind ``prompt`` keyed by the hash of the
original system prompt, kind ``summary`` keyed by the hash of a conversation prefix) plus a
short-lived claim so that two gateway instances do not compress the same prompt at once.
Calls are synchronous; the stage runs them in a thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from typing import Any, Protocol

from thrifty.compress.config import StoreConfig
from thrifty.errors import ConfigError, StorageError


class DocStore(Protocol):
    def get(self, kind: str, key: str) -> dict[str, Any] | None: ...
    def put(self, kind: str, key: str, doc: dict[str, Any]) -> None: ...
    def delete(self, kind: str, key: str) -> bool: ...
    def keys(self, kind: str) -> list[str]: ...
    def claim(self, kind: str, key: str, ttl_s: float) -> bool: ...
    def release(self, kind: str, key: str) -> None: ...
    def close(self) -> None: ...


class SQLiteDocStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS compress_docs (kind TEXT NOT NULL, key TEXT NOT NULL,"
                " doc TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (kind, key))"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS compress_claims (kind TEXT NOT NULL, key TEXT NOT NULL,"
                " until REAL NOT NULL, PRIMARY KEY (kind, key))"
            )
            self._conn.commit()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open compression store {path}: {exc}") from None

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Rows and row count of one statement, committed. The cursor is closed inside the lock:
        one left for the garbage collector can finalize its statement while another thread uses
        the shared connection."""
        with self._lock:
            try:
                with contextlib.closing(self._conn.execute(sql, params)) as cur:
                    rows, count = cur.fetchall(), cur.rowcount
                self._conn.commit()
                return rows, count
            except sqlite3.Error as exc:
                self._conn.rollback()
                raise StorageError(f"compression store: {exc}") from None

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        rows, _ = self._run("SELECT doc FROM compress_docs WHERE kind = ? AND key = ?", (kind, key))
        return json.loads(rows[0][0]) if rows else None

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO compress_docs (kind, key, doc, updated) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
            (kind, key, json.dumps(doc), time.time()),
        )

    def delete(self, kind: str, key: str) -> bool:
        return self._run("DELETE FROM compress_docs WHERE kind = ? AND key = ?", (kind, key))[1] > 0

    def keys(self, kind: str) -> list[str]:
        rows, _ = self._run("SELECT key FROM compress_docs WHERE kind = ? ORDER BY updated", (kind,))
        return [r[0] for r in rows]

    def claim(self, kind: str, key: str, ttl_s: float) -> bool:
        now = time.time()
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                with contextlib.closing(self._conn.execute(
                        "SELECT until FROM compress_claims WHERE kind = ? AND key = ?", (kind, key))) as cur:
                    row = cur.fetchone()
                if row is not None and row[0] > now:
                    self._conn.rollback()
                    return False
                self._conn.execute(
                    "INSERT INTO compress_claims (kind, key, until) VALUES (?, ?, ?)"
                    " ON CONFLICT (kind, key) DO UPDATE SET until = excluded.until",
                    (kind, key, now + ttl_s),
                )
                self._conn.commit()
                return True
            except sqlite3.Error as exc:
                self._conn.rollback()
                raise StorageError(f"compression store: {exc}") from None

    def release(self, kind: str, key: str) -> None:
        self._run("DELETE FROM compress_claims WHERE kind = ? AND key = ?", (kind, key))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisDocStore:
    """Documents as JSON strings under ``<prefix>:<kind>:<key>``, an index set per kind."""

    def __init__(self, url: str, prefix: str = "thrifty:compress", client: Any = None) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError("the Redis compression store needs the 'redis' extra") from None
        # Explicit timeouts, as the cache's Redis clients have: a Redis that stops answering costs a
        # request 2 s (then the prompt goes uncompressed), never a hang.
        self._r = client or redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix

    def _k(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{key}"

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # redis.RedisError and connection failures
            raise StorageError(f"compression store (redis): {type(exc).__name__}") from None

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        raw = self._call(self._r.get, self._k(kind, key))
        return json.loads(raw) if raw else None

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        pipe = self._r.pipeline()
        pipe.set(self._k(kind, key), json.dumps(doc))
        pipe.zadd(f"{self.prefix}:index:{kind}", {key: time.time()})
        self._call(pipe.execute)

    def delete(self, kind: str, key: str) -> bool:
        pipe = self._r.pipeline()
        pipe.delete(self._k(kind, key))
        pipe.zrem(f"{self.prefix}:index:{kind}", key)
        return bool(self._call(pipe.execute)[0])

    def keys(self, kind: str) -> list[str]:
        raw = self._call(self._r.zrange, f"{self.prefix}:index:{kind}", 0, -1)
        return [k.decode() if isinstance(k, bytes) else str(k) for k in raw]

    def claim(self, kind: str, key: str, ttl_s: float) -> bool:
        ms = max(1, int(ttl_s * 1000))
        name = f"{self.prefix}:claim:{kind}:{key}"
        return bool(self._call(lambda: self._r.set(name, "1", px=ms, nx=True)))

    def release(self, kind: str, key: str) -> None:
        self._call(self._r.delete, f"{self.prefix}:claim:{kind}:{key}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._r.close()


def sqlite_path(cfg: StoreConfig, redis_url: str | None, resolve_path: Any = None) -> str | None:
    """The SQLite file ``open_doc_store`` would open, or None when the store is Redis."""
    if cfg.backend == "redis" or (cfg.backend == "auto" and bool(redis_url)):
        return None
    return str(resolve_path(cfg.path) if resolve_path else cfg.path)


def open_doc_store(cfg: StoreConfig, redis_url: str | None, resolve_path: Any = None) -> DocStore:
    """Redis when configured (``backend: redis``, or ``auto`` with a redis_url), else SQLite."""
    path = sqlite_path(cfg, redis_url, resolve_path)
    if path is None:
        if not redis_url:
            raise ConfigError("compression.store.backend: redis needs the top-level redis_url")
        return RedisDocStore(redis_url, cfg.redis_prefix)
    return SQLiteDocStore(path)
