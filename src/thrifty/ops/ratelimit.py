"""Budget and rate-limit accounting for one key, and the in-process (single instance) limiter.

The rule, shared by this limiter and the Redis one (redis_limits.py), checked and applied as
one atomic step per request:

- rpm: at most ``rpm`` requests per fixed UTC minute window;
- tpm: at most ``tpm`` tokens per minute window, counting each request's estimate
  (prompt + max_tokens) at admission and correcting it with the real usage when it ends
  (a single request larger than ``tpm`` is let through in an otherwise empty window);
- budget: a request is admitted only if ``spent + reserved + estimate <= budget`` for the key's
  period (UTC day or month); its estimate stays reserved while it runs and is replaced by its
  real cost when it ends.

So recorded spend can pass the budget only by what in-flight requests cost beyond their
estimates, which is at most the cost of the requests in flight when the budget was reached
(docs/operations.md, "The overshoot bound"; tests/unit/test_ops_budgets.py measures it).
"""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from thrifty.cost import usd_text
from thrifty.errors import BudgetExceededError, RateLimitError
from thrifty.ops.keys import VirtualKey

WINDOW_S = 60
# What a key spent so far in a period, from the ledger: (key_id, period_start) -> USD.
Seed = Callable[[str, float], Awaitable[float]]


@dataclass(frozen=True)
class Period:
    id: str  # "2025-06-01" or "2025-06"
    start: float
    end: float


def period_of(kind: str, now: float) -> Period:
    """The UTC day or month containing ``now``.

    The last one of each kind is kept: every admitted request of a key with a budget or limits
    asks, and working it out (gmtime, timegm, strftime) cost ~2.5 us where a range check does."""
    last = _last_period.get(kind)
    if last is not None and last.start <= now < last.end:
        return last
    period = _period_of(kind, now)
    _last_period[kind] = period  # a frozen value: a thread reading the old one meanwhile is still right
    return period


_last_period: dict[str, Period] = {}


def _period_of(kind: str, now: float) -> Period:
    t = time.gmtime(now)
    if kind == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return Period(time.strftime("%Y-%m-%d", t), float(start), float(start + 86400))
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return Period(time.strftime("%Y-%m", t), float(start), float(calendar.timegm((year, month, 1, 0, 0, 0))))


def window_of(now: float) -> int:
    return int(now // WINDOW_S)


@dataclass
class Ticket:
    """An admitted request: what it reserved, to be settled when it ends."""

    key_id: str
    period_id: str
    window: int
    est_cost: float
    est_tokens: int
    has_budget: bool
    has_tpm: bool
    settled: bool = False


@dataclass
class Usage:
    """A key's state now (for the admin API).

    A minute counter is None when its limit is not set: the limiters count requests only for
    keys with ``rpm`` and tokens only for keys with ``tpm`` (no work, no Redis key, for limits
    nobody set), so a 0 there would be a guess, not a count."""

    period: str
    spent_usd: float
    reserved_usd: float
    requests_this_minute: int | None
    tokens_this_minute: int | None


def counters(key: VirtualKey, requests: int, tokens: int) -> tuple[int | None, int | None]:
    """The (requests, tokens) this minute as the admin API shows them: None for a limit not set."""
    return (requests if key.rpm is not None else None, tokens if key.tpm is not None else None)


class Limiter(Protocol):
    async def admit(self, key: VirtualKey, est_cost: float, est_tokens: int, now: float) -> Ticket: ...

    async def settle(self, ticket: Ticket, cost: float, tokens: int) -> None: ...

    async def usage(self, key: VirtualKey, now: float) -> Usage: ...

    async def correct(self, key_id: str, period_id: str, delta_usd: float, begun: float) -> None:
        """Add ``delta_usd`` to what ``key_id`` spent in ``period_id`` (a cost known after its
        request was settled), a correction that began at ``begun`` (unix seconds), after the
        ledger was amended: only to a counter seeded before then. A counter seeded since read the
        amended ledger and holds the real cost already; a period without a counter is seeded
        later, from the ledger, alike."""
        ...

    async def aclose(self) -> None: ...


def refuse(kind: str, key: VirtualKey, now: float, *, spent: float = 0.0, est_cost: float = 0.0) -> RateLimitError:
    """The 429 for a refused request, with Retry-After when waiting can help."""
    next_window = (window_of(now) + 1) * WINDOW_S - now
    if kind == "rpm":
        return RateLimitError(f"Rate limit reached for key {key.key_id}: {key.rpm} requests per minute. "
                              f"Retry in {max(1, round(next_window))} s.", retry_after=next_window)
    if kind == "tpm":
        return RateLimitError(f"Rate limit reached for key {key.key_id}: {key.tpm} tokens per minute. "
                              f"Retry in {max(1, round(next_window))} s.", retry_after=next_window,
                              code="tokens_rate_limit_exceeded")
    period = period_of(key.period, now)
    budget = key.budget_usd or 0.0
    # usd_text: a budget or a request's estimate under half a micro-dollar (cheap models, test
    # keys) read "$0.000000 of $0.000000 ... estimated at $0.000000", a refusal without a reason.
    if spent + est_cost > budget:
        # Settled spend alone leaves no room: nothing changes until the period resets.
        retry: float | None = period.end - now
        msg = (f"Budget exceeded for key {key.key_id}: ${usd_text(spent)} of ${usd_text(budget)} spent this "
               f"{key.period} (this request is estimated at ${usd_text(est_cost)}); the budget resets at "
               f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(period.end))}.")
    else:
        # Room is held by requests still running; it may free up within seconds.
        retry = 1.0
        msg = (f"Budget exceeded for key {key.key_id}: ${usd_text(spent)} of ${usd_text(budget)} spent this "
               f"{key.period} and the rest is reserved by requests in flight (this request is estimated at "
               f"${usd_text(est_cost)}).")
    return BudgetExceededError(msg, retry_after=retry)


def decide(
    key: VirtualKey, est_cost: float, est_tokens: int, spent: float, reserved: float, n_requests: int, n_tokens: int
) -> str | None:
    """Which limit refuses the request (rpm, tpm, budget), or None to admit it."""
    if key.rpm is not None and n_requests >= key.rpm:
        return "rpm"
    if key.tpm is not None and (n_tokens >= key.tpm or (n_tokens > 0 and n_tokens + est_tokens > key.tpm)):
        return "tpm"
    if key.budget_usd is not None and spent + reserved + est_cost > key.budget_usd:
        return "budget"
    return None


class MemoryLimiter:
    """One instance: counters in this process, checked and updated under one lock.

    A key's spend for the current period is read from the ledger the first time the key is
    seen in that period, so a restart does not reset budgets. The counter keeps when that read
    began (as the Redis one keeps ``seeded_at``), for ``correct``.
    """

    def __init__(self, seed: Seed) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        # (key, period) -> [spent, reserved, seeded_at]: when the seed's ledger read began (of the
        # first seed to land, whose spend the counter holds, when two requests seed at once).
        self._budget: dict[tuple[str, str], list[float]] = {}
        self._requests: dict[tuple[str, int], int] = {}
        self._tokens: dict[tuple[str, int], int] = {}

    async def admit(self, key: VirtualKey, est_cost: float, est_tokens: int, now: float) -> Ticket:
        period = period_of(key.period, now)
        bkey = (key.key_id, period.id)
        if key.budget_usd is not None:
            await self._ensure_counter(key.key_id, period)
        window = window_of(now)
        wkey = (key.key_id, window)
        with self._lock:
            self._forget_old(window)
            self._forget_old_periods(now)
            state = self._budget.get(bkey, [0.0, 0.0, 0.0])
            verdict = decide(key, est_cost, est_tokens, state[0], state[1], self._requests.get(wkey, 0),
                             self._tokens.get(wkey, 0))
            if verdict is not None:
                raise refuse(verdict, key, now, spent=state[0], est_cost=est_cost)
            if key.budget_usd is not None:
                state[1] += est_cost
            if key.rpm is not None:
                self._requests[wkey] = self._requests.get(wkey, 0) + 1
            if key.tpm is not None:
                self._tokens[wkey] = self._tokens.get(wkey, 0) + est_tokens
        return Ticket(key.key_id, period.id, window, est_cost, est_tokens, key.budget_usd is not None,
                      key.tpm is not None)

    async def settle(self, ticket: Ticket, cost: float, tokens: int) -> None:
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            state = self._budget.get((ticket.key_id, ticket.period_id))
            if ticket.has_budget and state is not None:
                state[0] += cost
                state[1] = max(0.0, state[1] - ticket.est_cost)
            wkey = (ticket.key_id, ticket.window)
            if ticket.has_tpm and wkey in self._tokens:
                self._tokens[wkey] = max(0, self._tokens[wkey] + tokens - ticket.est_tokens)

    async def _ensure_counter(self, key_id: str, period: Period) -> None:
        """Seed the key's budget counter for ``period`` from the ledger when it has none yet."""
        if (key_id, period.id) in self._budget:
            return
        began = time.time()  # before the read: what the ledger held by then is in it
        spent = await self._seed(key_id, period.start)
        with self._lock:
            self._budget.setdefault((key_id, period.id), [spent, 0.0, began])

    async def correct(self, key_id: str, period_id: str, delta_usd: float, begun: float) -> None:
        """``Limiter.correct``: onto a counter seeded before ``begun`` only."""
        with self._lock:
            state = self._budget.get((key_id, period_id))
            if state is not None and state[2] < begun:
                state[0] += delta_usd

    async def usage(self, key: VirtualKey, now: float) -> Usage:
        period = period_of(key.period, now)
        await self._ensure_counter(key.key_id, period)
        wkey = (key.key_id, window_of(now))
        with self._lock:
            spent, reserved, _ = self._budget[(key.key_id, period.id)]
            return Usage(period.id, spent, reserved,
                         *counters(key, self._requests.get(wkey, 0), self._tokens.get(wkey, 0)))

    def _forget_old(self, window: int) -> None:
        if len(self._requests) + len(self._tokens) < 4096:
            return
        self._requests = {k: v for k, v in self._requests.items() if k[1] >= window - 1}
        self._tokens = {k: v for k, v in self._tokens.items() if k[1] >= window - 1}

    def _forget_old_periods(self, now: float) -> None:
        """Budgets of periods that are over (yesterday, last month): one entry per budgeted key
        per period otherwise stays for the life of the process. Only the current day's and
        month's are kept (a late settle of an old period is dropped: that period is closed)."""
        if len(self._budget) < 4096:
            return
        current = {period_of("day", now).id, period_of("month", now).id}
        self._budget = {k: v for k, v in self._budget.items() if k[1] in current}

    async def aclose(self) -> None:
        return None
