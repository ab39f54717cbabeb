"""Virtual API keys: created once, shown once, stored only as an HMAC-SHA256 hash.

A key looks like ``thr-<43 url-safe chars>`` (256 random bits; the ``thr-`` shape is masked by
thrifty.redact in every log line and error). The ledger database holds its hash, keyed with a
secret salt (``auth.key_salt``, or a random per-install salt stored in ``ops_settings`` on
first use), so a copy of the database alone cannot be used to test guessed keys offline.
Keys, budgets and limits live in the ledger database, so every instance using the same
PostgreSQL ledger sees the same keys; each instance caches lookups for ``key_cache_ttl_s``.

While the database cannot be reached, a key whose record was read at most ``key_cache_stale_s``
seconds ago is still served from that record (with a warning in the log): a short database
outage does not lock every client out. A key never seen (or only seen as unknown) cannot be
checked then and gets a 503. The next successful read replaces the record, so a key revoked
meanwhile is refused as soon as the database answers again.

"Cannot be reached" includes a database that accepts connections but does not answer (a frozen
server, a network partition that keeps the TCP connection open): a request waits at most
``DB_WAIT_S`` for a key read, and while an earlier read is still stuck no new one is started,
so requests are not held and worker threads do not pile up behind the store's lock.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, TypeVar

from thrifty.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError, StorageError
from thrifty.ledger.store import SQLStore, in_thread
from thrifty.ops.outage import Outage

KEY_PREFIX = "thr-"
# Largest rpm/tpm accepted: far above any real limit, and within a 64-bit SQL INTEGER column
# (a larger Python int fails the INSERT).
MAX_LIMIT = 10**15
MAX_NAME_CHARS = 200  # a key name labels a key in listings; past this it is a payload, not a label
PERIODS = ("day", "month")
_CACHE_MAX = 10_000
_COLUMNS = "key_id, name, key_prefix, budget_usd, period, rpm, tpm, routes, created_at, revoked_at"
# What clients are told when a key cannot be checked (the details go to the log).
KEY_DB_DOWN = "The key database (the ledger database) is unavailable; try again shortly."
# How long a request waits for a read of the key database (a primary-key read answers in
# milliseconds). Why bounded: a database that keeps the connection open but never answers
# would otherwise hold every request whose key needs a fresh read.
DB_WAIT_S = 3.0
T = TypeVar("T")

log = logging.getLogger("thrifty.ops")


@dataclass(frozen=True)
class VirtualKey:
    key_id: str
    name: str
    key_prefix: str  # the first characters, to recognise a key in listings
    budget_usd: float | None
    period: str  # day | month (UTC)
    rpm: int | None
    tpm: int | None
    routes: tuple[str, ...]  # allowed models/routes (glob patterns); empty = any
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, model: str) -> bool:
        return not self.routes or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.routes)

    def public(self) -> dict[str, Any]:
        """What listings show (never the key or its hash)."""
        out = asdict(self)
        # A key stored before budgets had to be finite may hold inf: shown as no limit (None),
        # which is what it means, instead of breaking the JSON of every listing.
        if self.budget_usd is not None and not math.isfinite(self.budget_usd):
            out["budget_usd"] = None
        out["routes"] = list(self.routes)
        out["active"] = self.active
        return out


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str, salt: str) -> str:
    return hmac.new(salt.encode(), secret.encode(), hashlib.sha256).hexdigest()


def validate_limits(
    name: str, budget_usd: float | None, period: str, rpm: int | None, tpm: int | None, routes: list[str] | None
) -> None:
    if not name or not name.strip():
        raise InvalidRequestError("a key needs a non-empty name", param="name")
    # Every key listing (admin API, dashboard, `keys list`) returns every name: an unbounded one
    # made each listing megabytes, and control characters (NUL, escapes) corrupt terminals and logs.
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequestError(f"name must be at most {MAX_NAME_CHARS} characters, got {len(name)}", param="name")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise InvalidRequestError("name must not contain control characters (newlines, tabs, NUL, escapes)",
                                  param="name")
    if period not in PERIODS:
        raise InvalidRequestError(f"period must be day or month, got {period!r}", param="period")
    # inf passes "> 0" but cannot be written back as JSON: the listing would fail for every key.
    if budget_usd is not None and not (math.isfinite(budget_usd) and budget_usd > 0):
        raise InvalidRequestError(f"budget_usd must be a finite positive number, got {budget_usd}", param="budget_usd")
    for label, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and not 1 <= value <= MAX_LIMIT:
            raise InvalidRequestError(f"{label} must be between 1 and {MAX_LIMIT}, got {value}", param=label)
    for r in routes or []:
        if not isinstance(r, str) or not r.strip():
            raise InvalidRequestError("routes must be non-empty model or route names", param="routes")


class _Cached(NamedTuple):
    fresh_until: float  # time.monotonic() until which the record is used without asking the database
    read_at: float  # time.monotonic() when the database last answered for it
    key: VirtualKey | None


class KeyStore:
    """Keys in the ledger database. Sync methods (CLI, worker threads); ``a*`` ones for the loop."""

    def __init__(self, store: SQLStore, *, salt: str | None = None, cache_ttl_s: float = 5.0,
                 stale_s: float = 300.0) -> None:
        self.store = store
        # An empty salt (``key_salt: ${THRIFTY_KEY_SALT}`` with the variable unset) is no secret:
        # treat it as unset, so the random per-install salt is used instead.
        self._salt = salt if salt and salt.strip() else None
        self.cache_ttl_s = cache_ttl_s
        self.stale_s = stale_s
        self._by_hash: dict[str, _Cached] = {}
        self._by_id: dict[str, _Cached] = {}
        self._reads = _BoundedCalls(DB_WAIT_S)
        # While the database does not answer, each key id served from its record ("-" for a key
        # that could not be checked) is logged once per outage, not on every request or every TTL
        # (per key, per instance, for its whole length).
        self._outage = Outage(log, "key database answers again")

    def salt(self) -> str:
        if self._salt is None:
            fresh = secrets.token_hex(32)
            # Whoever inserts first wins; every instance then reads the same salt.
            self.store.execute("INSERT INTO ops_settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                               ("key_salt", fresh))
            rows = self.store.query("SELECT value FROM ops_settings WHERE name = ?", ("key_salt",))
            self._salt = str(rows[0][0])
        return self._salt

    def create(
        self,
        name: str,
        *,
        budget_usd: float | None = None,
        period: str = "month",
        rpm: int | None = None,
        tpm: int | None = None,
        routes: list[str] | None = None,
    ) -> tuple[VirtualKey, str]:
        """A new key and its secret (the only time the secret exists outside the client)."""
        validate_limits(name, budget_usd, period, rpm, tpm, routes)
        secret = new_secret()
        key = VirtualKey(
            key_id="key_" + secrets.token_hex(6),
            name=name.strip(),
            key_prefix=secret[:8],
            budget_usd=budget_usd,
            period=period,
            rpm=rpm,
            tpm=tpm,
            routes=tuple(r.strip() for r in routes or []),
            created_at=time.time(),
        )
        self.store.execute(
            "INSERT INTO virtual_keys (key_id, name, key_hash, key_prefix, budget_usd, period, rpm, tpm, routes,"
            " created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (key.key_id, key.name, hash_key(secret, self.salt()), key.key_prefix, budget_usd, period, rpm, tpm,
             json.dumps(list(key.routes)), key.created_at),
        )
        return key, secret

    def list(self, *, include_revoked: bool = True) -> list[VirtualKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        return [_row(r) for r in self.store.query(f"SELECT {_COLUMNS} FROM virtual_keys{where} ORDER BY created_at")]

    def get(self, key_id: str) -> VirtualKey | None:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM virtual_keys WHERE key_id = ?", (key_id,))
        return _row(rows[0]) if rows else None

    def find(self, secret: str) -> VirtualKey | None:
        return self._find_hash(hash_key(secret, self.salt()))

    def _find_hash(self, key_hash: str) -> VirtualKey | None:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM virtual_keys WHERE key_hash = ?", (key_hash,))
        return _row(rows[0]) if rows else None

    def revoke(self, key_id: str) -> VirtualKey:
        n = self.store.execute("UPDATE virtual_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                               (time.time(), key_id))
        key = self.get(key_id)
        if key is None:
            raise NotFoundError(f"no key with id {key_id!r}", code="key_not_found")
        if n == 0 and key.revoked_at is None:  # pragma: no cover - concurrent un-revoke does not exist
            raise NotFoundError(f"key {key_id!r} could not be revoked", code="key_not_found")
        self._by_id.pop(key_id, None)
        self._by_hash = {h: v for h, v in self._by_hash.items() if v.key is None or v.key.key_id != key_id}
        return key

    def spent_since(self, key_id: str, since: float) -> float:
        rows = self.store.query("SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE key_id = ? AND ts >= ?",
                                (key_id, since))
        return float(rows[0][0] or 0.0)

    # Async, cached lookups for the request path (the store is synchronous: run it off the loop).
    # Both raise ServiceUnavailableError (503) when the database is needed and cannot be reached.
    async def afind(self, secret: str) -> VirtualKey | None:
        if self._salt is None:
            try:
                await self._reads.run(self.salt)
            except StorageError as exc:
                self._outage.failed("key database unavailable: cannot read the key salt: %s", exc.message,
                                    about="-")
                raise ServiceUnavailableError(KEY_DB_DOWN) from None
        h = hash_key(secret, self.salt())
        if len(self._by_hash) > _CACHE_MAX:  # random wrong keys must not grow memory forever
            self._by_hash.clear()
        key = await self._lookup(self._by_hash, h, lambda: self._find_hash(h), "a key")
        if key is not None:
            self._by_id[key.key_id] = self._by_hash[h]
        return key

    async def aspent_since(self, key_id: str, since: float) -> float:
        """``spent_since`` off the loop, bounded like the key reads (StorageError when it fails)."""
        return await self.bounded(lambda: self.spent_since(key_id, since))

    async def bounded(self, call: Callable[[], T]) -> T:
        """``call()`` (one of the sync methods) in a worker thread, awaited at most ``DB_WAIT_S``
        and not started while an earlier call is stuck: StorageError instead of waiting."""
        return await self._reads.run(call)

    async def aget(self, key_id: str) -> VirtualKey | None:
        return await self._lookup(self._by_id, key_id, lambda: self.get(key_id), f"key {key_id}")

    async def _lookup(self, cache: dict[str, _Cached], name: str, read: Callable[[], VirtualKey | None],
                      what: str) -> VirtualKey | None:
        """The cached record of ``name`` while fresh, else the database's (cached again); the last
        known record, at most ``stale_s`` old, when the database cannot be reached."""
        hit = cache.get(name)
        if hit is not None and hit.fresh_until > time.monotonic():
            return hit.key
        try:
            key = await self._reads.run(read)
        except StorageError as exc:
            now = time.monotonic()
            if hit is None or hit.key is None or now - hit.read_at > self.stale_s:
                # Never seen, seen as unknown, or known too long ago: nothing trustworthy to serve.
                self._outage.failed("key database unavailable, cannot check %s (503 until it answers): %s",
                                    what, exc.message, about="-")
                raise ServiceUnavailableError(KEY_DB_DOWN) from None
            self._outage.failed("key database unavailable, serving key %s from its record of %.0f s ago "
                                "until it answers: %s", hit.key.key_id, now - hit.read_at, exc.message,
                                about=hit.key.key_id)
            # Ask the database again after another TTL, not on every request of the outage.
            cache[name] = hit._replace(fresh_until=now + self.cache_ttl_s)
            return hit.key
        self._outage.answered()
        now = time.monotonic()
        cache[name] = _Cached(now + self.cache_ttl_s, now, key)
        return key


class _BoundedCalls:
    """Key database calls (reads; the admin API's writes too) in worker threads, each awaited at
    most ``wait_s``.

    A read that times out keeps its thread (a blocking driver call cannot be interrupted) and,
    with it, the store's lock; later reads would only queue behind it, each parking one more
    thread of the default pool. So while any read has been running longer than ``wait_s``, new
    ones fail at once, and the caller serves its stale record or a 503 without waiting."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # running reads: token -> when their thread started
        self._next = 0

    def _stuck(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(now - t > self.wait_s for t in self._started.values())

    async def run(self, read: Callable[[], T]) -> T:
        if self._stuck():
            raise StorageError("an earlier read of the key database has not answered yet")
        with self._lock:
            token = self._next
            self._next += 1

        def timed() -> T:
            with self._lock:
                self._started[token] = time.monotonic()
            try:
                return read()
            finally:
                with self._lock:
                    self._started.pop(token, None)

        return await in_thread(timed, self.wait_s, "key database")


def _row(r: tuple[Any, ...]) -> VirtualKey:
    key_id, name, prefix, budget, period, rpm, tpm, routes, created, revoked = r
    return VirtualKey(
        key_id=str(key_id),
        name=str(name),
        key_prefix=str(prefix),
        budget_usd=float(budget) if budget is not None else None,
        period=str(period),
        rpm=int(rpm) if rpm is not None else None,
        tpm=int(tpm) if tpm is not None else None,
        routes=tuple(json.loads(routes)) if routes else (),
        created_at=float(created),
        revoked_at=float(revoked) if revoked is not None else None,
    )
