"""Budgets and rate limits shared by many gateway instances: Redis, one Lua script per step.

Each request costs two round trips: ADMIT checks rpm, tpm and the budget and, only if all
pass, counts the request and reserves its estimate; SETTLE swaps the estimate for the real
cost and tokens. Redis runs a script atomically, so concurrent instances can never both take
the last of a budget. The same rule as the in-process limiter (ratelimit.py).

Keys (``<prefix>`` is ``auth.redis_prefix``):
  <prefix>:budget:<key_id>:<period>   hash {spent, reserved, seeded_at}; expires a day after the period
  <prefix>:rpm:<key_id>:<minute>      requests in that minute window; expires after 2 minutes
  <prefix>:tpm:<key_id>:<minute>      tokens in that minute window; expires after 2 minutes
  <prefix>:op:<token>                 one ADMIT or SETTLE done (so a retry does not repeat it); 30 s
A budget hash that does not exist yet (first request of a period, or Redis was emptied) is
seeded from the ledger's recorded spend for the period before it is used (``seeded_at``: when
that read began, so a later correction knows whether the ledger already held it).

A redis.asyncio client is bound to the event loop it first ran in, and a gateway may be used
from several loops (``asyncio.run`` twice, the in-process sync client's loop thread), so the
limiter keeps one client, with its registered scripts, per loop (``thrifty.loops.PerLoop``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from thrifty.errors import ServiceUnavailableError
from thrifty.loops import PerLoop
from thrifty.ops.keys import VirtualKey
from thrifty.ops.outage import Outage
from thrifty.ops.ratelimit import Seed, Ticket, Usage, counters, period_of, refuse, window_of
from thrifty.redact import redact

log = logging.getLogger("thrifty.ops")
T = TypeVar("T")
# Seconds to connect to Redis or to wait for a reply (a Lua step answers in well under 1 ms).
REDIS_TIMEOUT_S = 2.0

# Each ADMIT and SETTLE carries a token of its own (KEYS[4] / KEYS[3], ``<prefix>:op:<token>``),
# marked done in the same atomic step for 30 s: ``_redis`` runs a step again when the connection
# dropped before the reply, and a step Redis had run must not count twice (a reservation never
# released for the rest of the period; a budget correction applied twice). A retry comes within
# seconds of the step it repeats.

# KEYS: budget, rpm, tpm, op token.
# ARGV: budget (-1: none), est_cost, rpm (-1), tpm (-1), est_tokens, budget_ttl, seed (-1: unknown),
# seeded_at (when the seed's ledger read began, unix seconds)
ADMIT = """
if redis.call('EXISTS', KEYS[4]) == 1 then return {'ok', '0', '0', '0', '0'} end
local budget = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local etok = tonumber(ARGV[5])
if budget >= 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  if tonumber(ARGV[7]) < 0 then return {'seed', '0', '0', '0', '0'} end
  redis.call('HSET', KEYS[1], 'spent', ARGV[7], 'reserved', '0', 'seeded_at', ARGV[8])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = tonumber(redis.call('GET', KEYS[3]) or '0')
local spent = 0
local reserved = 0
if budget >= 0 then
  spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
  reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
end
local verdict = 'ok'
if rpm >= 0 and n >= rpm then
  verdict = 'rpm'
elseif tpm >= 0 and (t >= tpm or (t > 0 and t + etok > tpm)) then
  verdict = 'tpm'
elseif budget >= 0 and spent + reserved + est > budget then
  verdict = 'budget'
end
if verdict == 'ok' then
  if budget >= 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', ARGV[2]) end
  if rpm >= 0 then redis.call('INCR', KEYS[2]); redis.call('EXPIRE', KEYS[2], 120) end
  if tpm >= 0 then redis.call('INCRBY', KEYS[3], etok); redis.call('EXPIRE', KEYS[3], 120) end
  redis.call('SET', KEYS[4], '1', 'EX', 30)
end
return {verdict, tostring(spent), tostring(reserved), tostring(n), tostring(t)}
"""

# KEYS: budget, tpm, op token.
# ARGV: cost, -est_cost, token correction, has_budget, has_tpm, seeded_before (-1: any; a
# correction: only a counter seeded before it began, see ``RedisLimiter.correct``)
SETTLE = """
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', 30) then return 0 end
local before = tonumber(ARGV[6])
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1
    and (before < 0 or tonumber(redis.call('HGET', KEYS[1], 'seeded_at') or '0') < before) then
  redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[1])
  local r = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', ARGV[2]))
  if r < 1e-12 then redis.call('HSET', KEYS[1], 'reserved', '0') end
end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  local t = redis.call('INCRBY', KEYS[2], ARGV[3])
  if t < 0 then redis.call('SET', KEYS[2], '0', 'KEEPTTL') end
end
return 1
"""


def _num(x: float) -> str:
    # Fixed-point: Lua's tonumber and HINCRBYFLOAT both read it, and the same string is
    # reserved and released so no rounding residue accumulates.
    return f"{x:.12f}"


@dataclass(frozen=True)
class _Bound:
    """One event loop's client and the scripts registered on it."""

    client: Any
    admit: Any
    settle: Any

    @classmethod
    def of(cls, client: Any) -> _Bound:
        return cls(client, client.register_script(ADMIT), client.register_script(SETTLE))

    async def aclose(self) -> None:
        await self.client.aclose()


class RedisLimiter:
    def __init__(self, url: str, seed: Seed, *, prefix: str = "thrifty") -> None:
        import redis.asyncio as aioredis

        # Explicit timeouts: redis-py's defaults differ between the versions allowed (older ones
        # wait forever), and a Redis that keeps the connection open but does not answer (frozen,
        # a network partition) must fail a limited request with the 503, not hold it.
        self._clients: PerLoop[_Bound] = PerLoop(
            lambda: _Bound.of(aioredis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                                socket_connect_timeout=REDIS_TIMEOUT_S)),
            _Bound.aclose, what="the Redis limiter's connection pool")
        self._seed = seed
        self._prefix = prefix
        # An outage is logged once when it starts and once when it ends, not on every limited
        # request (two lines each, at any rate).
        self._outage = Outage(log, "budget store (Redis) answers again: limited requests are admitted")

    def _bound(self) -> _Bound:
        """The running event loop's client and scripts."""
        return self._clients.get()

    def _keys(self, key_id: str, period_id: str, window: int) -> list[str]:
        p = self._prefix
        return [f"{p}:budget:{key_id}:{period_id}", f"{p}:rpm:{key_id}:{window}", f"{p}:tpm:{key_id}:{window}"]

    def _op(self) -> str:
        """A fresh step token's key: the same for a step and its retry, never for two steps."""
        return f"{self._prefix}:op:{secrets.token_hex(12)}"

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self._redis(lambda: script(keys=keys, args=args))

    async def _redis(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``, run once more on a fresh connection when the pooled one turns out dead.

        Why: after Redis restarts (or drops idle clients) every pooled connection is closed, and
        redis-py reports that on first use ("Connection closed by server") after discarding it;
        without the second try the first limited request on every instance failed. Should a
        connection drop after Redis ran a script but before its reply, the retry finds the
        step's token marked done and changes nothing (the scripts, above). Anything else, or a
        second failure, fails closed: without the shared
        counters a budget cannot be enforced. The client is told which service is down; the
        address and the driver's text go to the log only."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return self._up(await op())
        except RedisTimeoutError as exc:  # not answering is not a closed connection: a retry would wait again
            failure: Exception = exc
        except (RedisConnectionError, ConnectionError) as exc:
            log.log(logging.DEBUG if self._outage.down else logging.INFO,
                    "budget store (Redis): %s; retrying on a new connection", redact(str(exc)))
            try:
                return self._up(await op())
            except Exception as again:
                failure = again
        except Exception as exc:
            failure = exc
        self._outage.failed("budget store (Redis) unavailable: %s: %s; requests of keys with limits get a 503 "
                            "until it answers again", type(failure).__name__, redact(str(failure)))
        raise ServiceUnavailableError("The budget store (Redis) is unavailable; try again shortly.") from None

    def _up(self, result: T) -> T:
        """``result``, after logging the end of an outage the first time Redis answers again."""
        self._outage.answered()
        return result

    async def admit(self, key: VirtualKey, est_cost: float, est_tokens: int, now: float) -> Ticket:
        period = period_of(key.period, now)
        window = window_of(now)
        keys = [*self._keys(key.key_id, period.id, window), self._op()]
        ttl = int(period.end - now) + 86400
        args = [
            _num(key.budget_usd) if key.budget_usd is not None else "-1", _num(est_cost),
            key.rpm if key.rpm is not None else -1, key.tpm if key.tpm is not None else -1,
            est_tokens, ttl, "-1", "0",
        ]
        reply = await self._call(self._bound().admit, keys, args)
        if _s(reply[0]) == "seed":
            args[-1] = f"{time.time():.6f}"  # before the read: what the ledger held by then is in it
            args[-2] = _num(await self._seed(key.key_id, period.start))
            reply = await self._call(self._bound().admit, keys, args)
        verdict = _s(reply[0])
        if verdict != "ok":
            raise refuse(verdict, key, now, spent=float(_s(reply[1])), est_cost=est_cost)
        return Ticket(key.key_id, period.id, window, est_cost, est_tokens, key.budget_usd is not None,
                      key.tpm is not None)

    async def settle(self, ticket: Ticket, cost: float, tokens: int) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        budget_key, _, tpm_key = self._keys(ticket.key_id, ticket.period_id, ticket.window)
        await self._call(self._bound().settle, [budget_key, tpm_key, self._op()], [
            _num(cost), "-" + _num(ticket.est_cost), tokens - ticket.est_tokens,
            "1" if ticket.has_budget else "0", "1" if ticket.has_tpm else "0", "-1",
        ])

    async def correct(self, key_id: str, period_id: str, delta_usd: float, begun: float) -> None:
        """Add ``delta_usd`` to what ``key_id`` spent in ``period_id``, a correction that began at
        ``begun`` (unix seconds) after the ledger was amended: not to a counter seeded since
        (by any instance), whose seed read the amended ledger and holds the real cost already;
        not to a period without a counter (seeded later, from the ledger, alike)."""
        budget_key, _, tpm_key = self._keys(key_id, period_id, 0)
        await self._call(self._bound().settle, [budget_key, tpm_key, self._op()], [
            _num(delta_usd), "-" + _num(0.0), 0, "1", "0", f"{begun:.6f}",
        ])

    async def usage(self, key: VirtualKey, now: float) -> Usage:
        period = period_of(key.period, now)
        budget_key, rpm_key, tpm_key = self._keys(key.key_id, period.id, window_of(now))
        client = self._bound().client
        spent, reserved = await self._redis(lambda: client.hmget(budget_key, ["spent", "reserved"]))
        n, t = await self._redis(lambda: client.mget([rpm_key, tpm_key]))
        if spent is None:
            spent = await self._seed(key.key_id, period.start)
        return Usage(period.id, float(spent), float(reserved or 0), *counters(key, int(n or 0), int(t or 0)))

    async def aclose(self) -> None:
        """Close the clients of every event loop the limiter was used from (forget those whose
        loop is closed)."""
        await self._clients.aclose()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

