"""The shared backend: Redis, for several gateway instances serving one cache.

Layout under the configured prefix ``P`` (the deployment namespace):
- ``P:e:<key>``   hash {value, tenant, model, created}, with the entry's TTL;
- ``P:z``         sorted set of keys by creation time: size limit (oldest evicted) and clears;
- ``P:v:<index>`` list of packed vectors, appended in time order; a process remembers how far it
  has read as an absolute position, ``P:vo:<index>`` (the records popped from the list's head, plus
  a random base per list) turning it into a list index (see ``_ADD`` and ``_READ``);
- ``P:l:<key>``   single-flight lock (SET NX PX), so concurrent gateways make one upstream call.
Redis errors become misses (reads) or logged StorageErrors (writes): the cache never fails a request.
A Redis that times out or refuses connections is skipped for ``PAUSE_S`` (reads miss, writes are
dropped, locks are not taken) before the next call tries it again: a frozen Redis costs one
2-second timeout per pause instead of one per cache call (several per request). An outage is
logged when it starts and when Redis answers again; a write dropped during a pause is not an
error of its own (it raised one before: a warning line per request for as long as Redis was down).
A redis.asyncio client is bound to the event loop it first ran in, so there is one client per
loop (``thrifty.loops.LoopRedis``): a gateway used from two ``asyncio.run`` calls keeps hitting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import struct
import time
import uuid
from typing import Any

import numpy as np

from thrifty.cache.backends.base import EntryMeta, VectorRow, vec_bytes, vec_from
from thrifty.errors import ConfigError, StorageError
from thrifty.loops import LoopRedis
from thrifty.ops.outage import Outage
from thrifty.redact import redact

try:
    from redis.exceptions import RedisError
except ImportError:  # the `redis` extra is missing: RedisBackend() says so when it is built
    RedisError = OSError  # type: ignore[misc,assignment]

_HEADER = struct.Struct("<dI")  # expires, length of the JSON {key, text}
# Expired records popped from a vector list's head per append, at most (bounded script time).
TRIM_PER_ADD = 64

# Append one vector record and pop expired ones from the head, atomically. Without the pops a
# scope that never goes quiet kept every vector it was ever given (its list's TTL moves with each
# append): Redis memory and each new instance's first read grew without bound. Popping shifts list
# indexes, so readers keep absolute positions and ``P:vo`` counts what was popped. A new list's
# count starts at a random base: a reader holding a position in a list that expired (or was
# cleared) and was started again then lands outside the new one and reads it from its start,
# instead of skipping the new list's first records as a plain index would. "New" is the list
# missing, not the count: a list evicted under maxmemory (or deleted) beside a surviving count
# would otherwise restart at the old count and readers would skip its first records (a list
# present without its count gets a new base too: its readers then read it again, deduplicated).
# The list and its count expire together, when the longest-lived record does: the count's TTL
# is set to the list's on every append, so a count made beside an older, longer-lived list
# (the previous release's, or after the count alone was evicted) cannot outlive it.
# KEYS: list, count. ARGV: record, its expiry (ms), random base, now (s), max pops.
_ADD = """
if redis.call('exists', KEYS[1]) == 0 or redis.call('exists', KEYS[2]) == 0 then
  redis.call('set', KEYS[2], ARGV[3])
end
redis.call('rpush', KEYS[1], ARGV[1])
local now, popped = tonumber(ARGV[4]), 0
while popped < tonumber(ARGV[5]) do
  local head = redis.call('lindex', KEYS[1], 0)
  if not head or string.len(head) < 8 then break end
  if struct.unpack('<d', head) > now then break end
  redis.call('lpop', KEYS[1])
  popped = popped + 1
end
if popped > 0 then redis.call('incrby', KEYS[2], popped) end
local at, left = tonumber(ARGV[2]), redis.call('pttl', KEYS[1])
if left < 0 or now * 1000 + left < at then
  redis.call('pexpireat', KEYS[1], at)
end
left = redis.call('pttl', KEYS[1])
if left > 0 then redis.call('pexpire', KEYS[2], left) else redis.call('del', KEYS[2]) end
return popped
"""
# The records after absolute position ARGV[1]: {count, list index read from, records}. A position
# before the head (popped, so expired) or past the end (another list's) reads from the head.
_READ = """
local raw = redis.call('get', KEYS[2]) or '0'
local start = tonumber(ARGV[1]) - tonumber(raw)
if start < 0 or start > redis.call('llen', KEYS[1]) then start = 0 end
return {raw, start, redis.call('lrange', KEYS[1], start, -1)}
"""
# How long the cache leaves Redis alone after a timeout or a refused connection.
PAUSE_S = 10.0

log = logging.getLogger("thrifty.cache")


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, prefix: str = "thrifty", max_entries: int = 100_000) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigError("the redis cache backend needs the optional extra: pip install 'thrifty[redis]'") from None
        # A pooled connection that Redis closed (a restart, its `timeout`, CLIENT KILL) fails its
        # next command with a ConnectionError although Redis answers: without a retry that paused
        # the cache for PAUSE_S after every Redis restart (misses, dropped writes, "not answering"
        # logged). So a connection error is retried once on a new connection; a timeout is not
        # (a frozen Redis would cost each call twice the wait), nor is a second refusal.
        self._clients = LoopRedis(lambda: aioredis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 1, supported_errors=(aioredis.ConnectionError,)),
            retry_on_error=[aioredis.ConnectionError]),  # redis-py 5.x retries only the errors listed here
            what="the Redis cache's connection pool")
        self.prefix = f"{prefix}:cache"
        self.max_entries = max_entries
        self._tokens: dict[str, str] = {}
        # What says "Redis is not answering" (not a bad command): then pause until _paused_until.
        self._unreachable: tuple[type[BaseException], ...] = (aioredis.ConnectionError, aioredis.TimeoutError,
                                                               OSError, TimeoutError)
        self._paused_until = 0.0
        self._outage = Outage(log, "cache: Redis answers again")

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _failed(self, exc: BaseException) -> None:
        """Note a failed call: one that says Redis is unreachable pauses the cache's use of it."""
        if isinstance(exc, self._unreachable):
            self._outage.failed("cache: Redis is not answering (%s): cache calls skip it for %.0f s at a time "
                                "until it answers again (reads miss, writes are dropped)", type(exc).__name__, PAUSE_S)
            self._paused_until = time.monotonic() + PAUSE_S

    def _answered(self) -> None:
        """Note a call that succeeded: the end of an outage is logged once."""
        self._outage.answered()

    @property
    def _redis(self) -> Any:
        """The running event loop's client."""
        return self._clients.get()

    def _k(self, kind: str, key: str = "") -> str:
        return f"{self.prefix}:{kind}:{key}" if key else f"{self.prefix}:{kind}"

    async def get(self, key: str) -> bytes | None:
        if self._paused():
            return None
        try:
            value = await self._redis.hget(self._k("e", key), "value")
        except Exception as exc:
            self._failed(exc)
            return None
        self._answered()
        return bytes(value) if value is not None else None

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``get`` of each key through one connection: one pipeline, not one call per key (a
        batch larger than the pool failed with MaxConnectionsError and paused the cache)."""
        if self._paused() or not keys:
            return [None] * len(keys)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(self._k("e", key), "value")
                values = await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._answered()
        return [bytes(v) if v is not None else None for v in values]

    async def put(self, meta: EntryMeta, value: bytes) -> None:
        await self.put_many([(meta, value)])

    async def put_many(self, items: list[tuple[EntryMeta, bytes]]) -> None:
        if self._paused() or not items:
            return  # dropped: the pause was logged when it began
        now = time.time()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for meta, value in items:
                    pipe.hset(self._k("e", meta.key), mapping={"value": value, "tenant": meta.tenant,
                                                                "model": meta.model, "created": meta.created})
                    pipe.pexpire(self._k("e", meta.key), max(1, int((meta.expires - now) * 1000)))
                    pipe.zadd(self._k("z"), {meta.key: meta.created})
                pipe.zcard(self._k("z"))
                *_, count = await pipe.execute()
            self._answered()
            if int(count) > self.max_entries:
                await self._evict(int(count) - self.max_entries)
        except Exception as exc:
            self._failed(exc)
            raise StorageError(f"cache write failed (redis): {type(exc).__name__}") from None

    async def _evict(self, n: int) -> None:
        popped = await self._redis.zpopmin(self._k("z"), n)
        if popped:
            await self._redis.delete(*[self._k("e", k.decode()) for k, _ in popped])

    async def add_vector(self, index_ns: str, meta: EntryMeta, text: str, vec: np.ndarray) -> None:
        head = json.dumps({"key": meta.key, "text": text}).encode()
        record = _HEADER.pack(meta.expires, len(head)) + head + vec_bytes(vec)
        if self._paused():
            return  # dropped, like put()'s
        try:
            await self._redis.eval(_ADD, 2, self._k("v", index_ns), self._k("vo", index_ns), record,
                                   int(meta.expires * 1000), secrets.randbelow(1 << 50) + (1 << 40),
                                   repr(time.time()), TRIM_PER_ADD)
        except Exception as exc:
            self._failed(exc)
            raise StorageError(f"cache vector write failed (redis): {type(exc).__name__}") from None

    async def vectors_since(self, index_ns: str, cursor: int) -> tuple[list[VectorRow], int]:
        if self._paused():
            return [], cursor
        try:
            base, start, raws = await self._redis.eval(_READ, 2, self._k("v", index_ns), self._k("vo", index_ns),
                                                       cursor)
        except Exception as exc:
            self._failed(exc)
            return [], cursor
        self._answered()
        cursor = int(base) + int(start)
        out = []
        for raw in raws:
            cursor += 1
            try:
                expires, n = _HEADER.unpack_from(raw)
                head = json.loads(raw[_HEADER.size:_HEADER.size + n])
                vec = vec_from(raw[_HEADER.size + n:])
            except (struct.error, ValueError):
                continue  # a damaged record is skipped, never fatal
            if vec is not None and isinstance(head, dict):
                out.append(VectorRow(str(head.get("key")), str(head.get("text", "")), vec, float(expires)))
        return out, cursor

    async def try_lock(self, key: str, ttl_s: float) -> bool:
        if self._paused():
            return True  # Redis down: proceed without the lock rather than stall the client
        token = uuid.uuid4().hex
        try:
            ok = await self._redis.set(self._k("l", key), token, nx=True, px=max(1, int(ttl_s * 1000)))
        except Exception as exc:
            self._failed(exc)
            return True
        self._answered()
        if ok:
            self._tokens[key] = token
        return bool(ok)

    async def unlock(self, key: str) -> None:
        token = self._tokens.pop(key, None)
        if token is None or self._paused():
            return  # a lock left behind expires by its own TTL
        # Delete only our own lock (it may have expired and been taken by another process).
        with contextlib.suppress(Exception):
            await self._redis.eval(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                1, self._k("l", key), token,
            )

    async def clear(self, tenant: str | None = None, model: str | None = None,
                    older_than: float | None = None) -> int:
        try:
            return await self._clear(tenant, model, older_than)
        except RedisError as exc:
            raise _unavailable("clear", exc) from None

    async def _clear(self, tenant: str | None, model: str | None, older_than: float | None) -> int:
        hi = "(" + repr(older_than) if older_than is not None else "+inf"
        keys = [k.decode() for k in await self._redis.zrangebyscore(self._k("z"), "-inf", hi)]
        doomed = []
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            async with self._redis.pipeline(transaction=False) as pipe:
                for k in batch:
                    pipe.hmget(self._k("e", k), "tenant", "model")
                metas = await pipe.execute()
            for k, (t, m) in zip(batch, metas, strict=True):
                if (tenant is None or (t is not None and t.decode() == tenant)) and (
                        model is None or (m is not None and m.decode() == model)):
                    doomed.append(k)
        deleted = 0
        for start in range(0, len(doomed), 500):
            batch = doomed[start:start + 500]
            deleted += int(await self._redis.delete(*[self._k("e", k) for k in batch]))
            await self._redis.zrem(self._k("z"), *batch)
        if tenant is None and model is None and older_than is None:
            for kind in ("v", "vo"):
                async for vk in self._redis.scan_iter(match=self._k(kind, "*")):
                    await self._redis.delete(vk)
        return deleted

    async def stats(self) -> dict[str, int]:
        try:
            return await self._stats()
        except RedisError as exc:
            raise _unavailable("stats", exc) from None

    async def _stats(self) -> dict[str, int]:
        n = int(await self._redis.zcard(self._k("z")))
        vectors = 0
        async for vk in self._redis.scan_iter(match=self._k("v", "*")):
            vectors += int(await self._redis.llen(vk))
        return {"entries": n, "bytes": 0, "vectors": vectors}

    async def aclose(self) -> None:
        """Close the clients of every event loop the cache was used from (forget those whose loop
        is closed)."""
        await self._clients.aclose()


def _unavailable(what: str, exc: RedisError) -> StorageError:
    """The one-line error of a ``clear`` or ``stats`` that Redis did not serve. Why: these are the
    operator's commands (`thrifty cache clear` / `stats`), which print a ThriftyError as one line;
    redis-py's own exceptions reached them as a traceback."""
    return StorageError(f"cache {what} failed: the Redis cache is unavailable "
                        f"({type(exc).__name__}: {redact(str(exc))})")
