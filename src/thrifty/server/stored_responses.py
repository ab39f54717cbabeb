"""Which provider holds each Responses API response thrifty passed through, and whose it is.

``GET /v1/responses/{id}`` and its siblings (server/response_resources.py) carry no model, so
the id alone must say where to go. When ``POST /v1/responses`` passes a stored response through
(the provider's answer says ``store`` is not false), thrifty remembers its id with the catalog
model, the provider, the request id, and the key and tenant that created it.

The entries live in the ledger database (table ``stored_responses``, migration
``004_stored_responses``), so a response created through one gateway instance can be retrieved
through another sharing the same PostgreSQL; a bounded in-memory map in front of it answers
repeated look-ups without a query, and is all there is when the ledger is disabled (one
instance only, then). An entry never changes once written but for its ``pending`` flag (a
deleted response is forgotten, and an instance still holding it in memory forwards to the
provider, which answers 404), so the memory copy cannot go stale in a way that matters.

``pending`` (migration ``005_background_usage``) marks a ``background: true`` response created
queued or in progress: its ledger rows hold an offline estimate (the prompt only) until a
retrieve relays it finished with its usage. ``amend`` then writes the real tokens and cost over
the estimate, exactly once: it claims the entry with ``UPDATE ... SET pending = 0 WHERE pending
= 1`` in the same transaction as the ledger updates, so of several retries or instances only
the one whose claim changed the row amends, and a claim made before the request's row reached
the database (it is written off the response path) is rolled back and left for a later
retrieve. A stale ``pending`` in another instance's memory only costs that instance a claim
that changes nothing. An entry nobody retrieves is settled by the reconciler
(server/reconcile.py: ``pending_before`` lists them, ``amend`` settles them as a retrieve does,
``give_up`` ends the wait for one the provider no longer holds).

The entry is written before the client sees the response's id (before the non-streaming answer
is returned, or the stream's first event relayed), so a client can use the id at once on any
instance. A failed write is logged and the response still returned: the create succeeded and
was billed; only the later look-ups of that id will answer 404.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thrifty.errors import ServiceUnavailableError, StorageError
from thrifty.ledger.store import SQLStore, in_thread
from thrifty.types import Usage

log = logging.getLogger("thrifty.server")

# Entries kept in memory per gateway app (a few hundred bytes each).
MEMORY_LIMIT = 10_000
# OpenAI keeps a stored response 30 days; an older entry points at nothing, so it is dropped
# (one DELETE every PRUNE_EVERY writes keeps the table at about 30 days of responses).
RETENTION_S = 30 * 86_400
PRUNE_EVERY = 1_000
LOOKUP_DOWN = ("The ledger database is unavailable, so thrifty cannot tell which provider holds this response; "
               "try again shortly.")
_COLUMNS = "response_id, request_id, ts, model, provider, key_id, tenant, pending"
# How long a request waits for the ledger database here (a primary-key statement answers in
# milliseconds): a frozen database costs a client this long, then the documented fallback
# (a 503 for a look-up; a logged miss for a write).
DB_WAIT_S = 3.0
FLUSH_WAIT_S = 10.0
# The claim, then the served attempt (the request's last: passthrough.py stops at the one that
# answered) and the request row, replaced rather than added to. A passthrough claims no saving:
# the request's baseline is its own cost; its cost is every attempt's, as ``spent_usd`` sums.
_CLAIM = "UPDATE stored_responses SET pending = 0 WHERE response_id = ? AND pending = 1"
_ATTEMPT = ("UPDATE attempts SET prompt_tokens = ?, cached_tokens = ?, completion_tokens = ?, reasoning_tokens = ?,"
            " cache_write_tokens = ?, service_tier = ?, cost_usd = ?, cost_source = ? WHERE request_id = ?"
            " AND seq = (SELECT MAX(seq) FROM attempts WHERE request_id = ?)")
_REQUEST = ("UPDATE requests SET prompt_tokens = ?, cached_tokens = ?, completion_tokens = ?, reasoning_tokens = ?,"
            " cache_write_tokens = ?, service_tier = ?, cost_usd = {cost}, baseline_cost_usd = ?{status}"
            " WHERE request_id = ?")
_FAILED = ", status = ?, error_type = ?, error = ?"
# The ledger's error type for a background response whose run failed at the provider.
FAILED_TYPE = "BackgroundResponseFailed"
_SPENT = "(SELECT SUM(cost_usd) FROM attempts WHERE request_id = ?)"


@dataclass(frozen=True)
class Outcome:
    """What a finished background response brings to its create's ledger rows."""

    usage: Usage
    cost_usd: float | None
    cost_source: str
    error: str | None = None  # the run failed at the provider: its message (already redacted)
    service_tier: str | None = None  # the tier the finished run was billed at (the queued one may differ)


@dataclass(frozen=True)
class Amended:
    """An amendment made: the cost the replaced attempt held before (its estimate; None if unknown)."""

    estimate_usd: float | None
    # The tokens the row held before: /metrics counted them when the create finished and gets
    # the difference (Metrics.amended), so its counters meet the ledger's amended row.
    estimate_usage: Usage = dataclasses.field(default_factory=Usage)


@dataclass(frozen=True)
class StoredResponse:
    response_id: str
    request_id: str
    model: str  # the catalog model that answered
    provider: str
    key_id: str | None
    tenant: str
    ts: float = 0.0
    pending: bool = False  # a background response whose real usage the ledger has not yet (see amend)


class ResponseIndex:
    """Response id -> ``StoredResponse``: the ledger database when there is one, memory in front."""

    def __init__(self, store: SQLStore | None, *, memory_limit: int = MEMORY_LIMIT,
                 retention_s: float = RETENTION_S) -> None:
        self.store = store
        self.memory_limit = memory_limit
        self.retention_s = retention_s
        self._memory: OrderedDict[str, StoredResponse] = OrderedDict()
        self._writes = 0

    def _keep(self, entry: StoredResponse) -> None:
        self._memory[entry.response_id] = entry
        self._memory.move_to_end(entry.response_id)
        while len(self._memory) > self.memory_limit:
            self._memory.popitem(last=False)

    async def remember(self, entry: StoredResponse) -> None:
        """Record ``entry`` (a failed database write is logged, never raised: the call succeeded)."""
        if not entry.ts:
            entry = StoredResponse(**{**vars(entry), "ts": time.time()})
        self._keep(entry)
        if self.store is None:
            return
        sql = (f"INSERT INTO stored_responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
               " ON CONFLICT (response_id) DO NOTHING")
        try:
            store = self.store
            values = (entry.response_id, entry.request_id, entry.ts, entry.model, entry.provider, entry.key_id,
                      entry.tenant, int(entry.pending))
            await in_thread(lambda: store.execute(sql, values), DB_WAIT_S, "stored response write")
            self._writes += 1
            if self._writes % PRUNE_EVERY == 1:
                cutoff = time.time() - self.retention_s
                await in_thread(lambda: store.execute("DELETE FROM stored_responses WHERE ts < ?", (cutoff,)),
                                DB_WAIT_S, "stored responses prune")
        except StorageError as exc:
            log.warning("request %s: response %s not recorded in the ledger database (other instances will not "
                        "find it): %s", entry.request_id, entry.response_id, exc.message)

    async def find(self, response_id: str) -> StoredResponse | None:
        """The entry of ``response_id``, or None. ``ServiceUnavailableError`` when the database
        is down (without it, whose the response is cannot be checked)."""
        entry = self._memory.get(response_id)
        if entry is not None or self.store is None:
            return entry if entry is None or self._live(entry) else None
        try:
            store = self.store
            rows = await in_thread(
                lambda: store.query(f"SELECT {_COLUMNS} FROM stored_responses WHERE response_id = ?", (response_id,)),
                DB_WAIT_S, "stored response look-up")
        except StorageError as exc:
            log.warning("stored response look-up failed: %s", exc.message)
            raise ServiceUnavailableError(LOOKUP_DOWN) from None
        if not rows:
            return None
        rid, request_id, ts, model, provider, key_id, tenant, pending = rows[0]
        entry = StoredResponse(str(rid), str(request_id), str(model), str(provider),
                               None if key_id is None else str(key_id), str(tenant), float(ts), bool(pending))
        self._keep(entry)
        return entry if self._live(entry) else None

    def _live(self, entry: StoredResponse) -> bool:
        """Younger than the retention: older ones the provider no longer holds either."""
        return entry.ts >= time.time() - self.retention_s

    async def amend(self, entry: StoredResponse, outcome: Outcome,
                    flush: Callable[[], Any] | None = None) -> Amended | None:
        """Write the finished background response's ``outcome`` over its create's estimate in
        the ledger, if ``entry`` is pending and this call wins the claim: what it replaced when it
        did, else None. ``flush`` (the ledger writer's) is called when the request's row is not in
        the database yet, then the amendment is tried once more; a row still missing (another
        instance's buffer, a stream still relaying) leaves the entry pending for a later retrieve.

        The estimate's cost is read just before the claim: only the call whose claim changes the
        row amends, and nothing else writes that row's cost, so what it read is the estimate."""
        if not entry.pending or self.store is None:
            return None
        steps = _amendment(entry.request_id, entry.response_id, outcome)
        store = self.store

        def attempt() -> tuple[int | None, float | None, Usage]:
            # The estimate is the cost of the attempt the amendment replaces (the request's last),
            # not the request's total: earlier attempts that billed (a retry) keep their cost, so
            # the request's total moves by exactly (real - estimate), which the budget then gets.
            before = store.query("SELECT a.cost_usd, r.prompt_tokens, r.cached_tokens, r.completion_tokens"
                                 " FROM requests r JOIN attempts a ON a.request_id = r.request_id"
                                 " WHERE r.request_id = ? AND a.seq = (SELECT MAX(seq) FROM attempts"
                                 " WHERE request_id = ?)", (entry.request_id, entry.request_id))
            if not before:
                # Not written yet: no claim. Claiming now could succeed if the writer inserted the
                # row just after this read, and the amendment would go out without its estimate
                # (the budget correction and /metrics difference lost). Reported as the
                # request's row missing: flushed, then read again.
                return 1, None, Usage()
            estimate = None if before[0][0] is None else float(before[0][0])
            usage = Usage(prompt_tokens=int(before[0][1]), cached_tokens=int(before[0][2]),
                          completion_tokens=int(before[0][3]))
            return store.execute_all(steps), estimate, usage

        try:
            missing, estimate, usage = await in_thread(attempt, DB_WAIT_S, "background usage")
            if missing is not None and missing > 0 and flush is not None:
                # The writer's flush waits out its retries when the database fails: bounded too.
                await in_thread(flush, FLUSH_WAIT_S, "ledger flush")
                missing, estimate, usage = await in_thread(attempt, DB_WAIT_S, "background usage")
        except StorageError as exc:
            log.warning("request %s: the usage of background response %s was not recorded: %s", entry.request_id,
                        entry.response_id, exc.message)
            return None
        if missing is None or missing == 0:  # amended now, or already by another call or instance
            self._settled(entry)
        else:
            log.info("request %s: its ledger row is not written yet; background response %s keeps its estimate "
                     "until a later retrieve or reconciliation", entry.request_id, entry.response_id)
        return Amended(estimate, usage) if missing is None else None

    async def pending_before(self, before: float, since: float = 0.0, limit: int | None = None,
                             wait_s: float = DB_WAIT_S) -> list[StoredResponse]:
        """The entries still ``pending`` created in ``[since, before)``, oldest first (at most
        ``limit``), for the reconciler (server/reconcile.py). Entries past the retention are left
        out: the provider no longer holds them, and the prune removes them. They are kept in
        memory, so ``settled`` can tell afterwards what ``amend`` made of each. Raises
        ``StorageError`` (the caller decides: a pass skipped, or the CLI's error)."""
        if self.store is None:
            return []
        store = self.store
        since = max(since, time.time() - self.retention_s)
        sql = (f"SELECT {_COLUMNS} FROM stored_responses WHERE pending = 1 AND ts >= ? AND ts < ? ORDER BY ts"
               + ("" if limit is None else f" LIMIT {int(limit)}"))
        rows = await in_thread(lambda: store.query(sql, (since, before)), wait_s, "pending background responses")
        entries = []
        for rid, request_id, ts, model, provider, key_id, tenant, pending in rows:
            entry = StoredResponse(str(rid), str(request_id), str(model), str(provider),
                                   None if key_id is None else str(key_id), str(tenant), float(ts), bool(pending))
            self._keep(entry)
            entries.append(entry)
        return entries

    async def lease(self, entries: list[StoredResponse], hold_s: float,
                    wait_s: float = DB_WAIT_S) -> list[StoredResponse]:
        """Of ``entries``, those this gateway takes to ask the provider about now: each is taken
        for ``hold_s`` by moving its ``poll_after`` forward where it had passed (one conditional
        UPDATE each, so of several gateways listing the same pending entries one takes each).
        Without it every instance of a fleet asked the provider about every pending entry on
        every pass. Raises ``StorageError`` (the pass is skipped; nothing was asked)."""
        if self.store is None or not entries:
            return list(entries)
        store = self.store
        now = time.time()
        sql = ("UPDATE stored_responses SET poll_after = ? WHERE response_id = ? AND pending = 1"
               " AND poll_after <= ?")

        def take() -> list[StoredResponse]:
            return [e for e in entries if store.execute(sql, (now + hold_s, e.response_id, now))]

        return await in_thread(take, wait_s, "background response leases")

    async def pending_since(self, since: float, wait_s: float = DB_WAIT_S) -> int:
        """How many entries created at ``since`` or later are still ``pending`` (those a pass with
        a minimum age leaves for later, for ``thrifty ledger reconcile`` to say so)."""
        if self.store is None:
            return 0
        store = self.store
        rows = await in_thread(lambda: store.query("SELECT COUNT(*) FROM stored_responses WHERE pending = 1 AND ts >= ?",
                                                   (since,)), wait_s, "pending background responses")
        return int(rows[0][0]) if rows else 0

    def settled(self, response_id: str) -> bool:
        """Whether this index knows ``response_id`` as no longer pending (``amend`` marks it so
        when it amended the rows, or found them amended by another call or instance)."""
        entry = self._memory.get(response_id)
        return entry is not None and not entry.pending

    async def give_up(self, entry: StoredResponse) -> bool:
        """Stop treating ``entry`` as pending without touching its ledger rows (they keep the
        estimate): the provider no longer holds it, or it finished with nothing to price. The
        same claim as ``amend``, alone, so of several reconcilers only one reports it: True for
        the call whose claim changed the row. A failed write is logged and leaves it pending."""
        if self.store is None:
            return False
        store = self.store
        try:
            changed = await in_thread(lambda: store.execute(_CLAIM, (entry.response_id,)), DB_WAIT_S,
                                      "background response give-up")
        except StorageError as exc:
            log.warning("background response %s stays pending: %s", entry.response_id, exc.message)
            return False
        self._settled(entry)
        return bool(changed)

    def _settled(self, entry: StoredResponse) -> None:
        """Remember ``entry`` as no longer pending, kept in memory even when the LRU had let it
        go: the reconciler asks ``settled`` right after, and a pass over more entries than
        ``memory_limit`` (the CLI lists a whole backlog at once) evicted its first ones while the
        rest were listed, so they were reported still running once settled."""
        self._keep(dataclasses.replace(entry, pending=False))

    async def forget(self, response_id: str) -> None:
        """Drop ``response_id`` (the provider deleted it); a failed delete is only logged."""
        self._memory.pop(response_id, None)
        if self.store is None:
            return
        store = self.store
        try:
            await in_thread(lambda: store.execute("DELETE FROM stored_responses WHERE response_id = ?", (response_id,)),
                            DB_WAIT_S, "stored response delete")
        except StorageError as exc:
            log.warning("response %s: could not drop its ledger entry: %s", response_id, exc.message)


def _amendment(request_id: str, response_id: str, outcome: Outcome) -> list[tuple[str, tuple[Any, ...]]]:
    """The claim and the two ledger updates ``amend`` runs in one transaction."""
    usage, cost_usd = outcome.usage, outcome.cost_usd
    tokens = (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens,
              usage.cache_write_tokens, outcome.service_tier)
    # A run that failed at the provider is a failed request, whatever its create answered.
    status = ("error", FAILED_TYPE, outcome.error) if outcome.error is not None else None
    sets = _FAILED if status else ""
    # An unknown price makes the request's cost unknown too (as spent_usd has it for a served attempt).
    if cost_usd is None:
        request: tuple[str, tuple[Any, ...]] = (_REQUEST.format(cost="NULL", status=sets),
                                                (*tokens, None, *(status or ()), request_id))
    else:
        request = (_REQUEST.format(cost=_SPENT, status=sets), (*tokens, request_id, cost_usd, *(status or ()),
                                                                request_id))
    return [(_CLAIM, (response_id,)),
            (_ATTEMPT, (*tokens, cost_usd, outcome.cost_source, request_id, request_id)),
            request]
