"""Which provider holds each Responses API response thrifty passed through, and whose it is.

``GET /v1/responses/{id}`` and its siblings (server/response_resources.py) carry no model, so
the id alone must say where to go. When ``POST /v1/responses`` passes a stored response through
(the provider's answer says ``store`` is not false), thrifty remembers its id with the catalog
model, the provider, the request id, and the key and tenant that created it.

The entries live in the ledger database (table ``stored_responses``, migration
``004_stored_responses``), so a response created through one gateway instance can be retrieved
through another sharing the same PostgreSQL; a bounded in-memory map in front of it answers
repeated look-ups without a query, and is all there is when the ledger is disabled (one
instance only, then). An entry never changes once written (a deleted response is forgotten, and
an instance still holding it in memory forwards to the provider, which answers 404), so the
memory copy cannot go stale in a way that matters.

The entry is written before the client sees the response's id (before the non-streaming answer
is returned, or the stream's first event relayed), so a client can use the id at once on any
instance. A failed write is logged and the response still returned: the create succeeded and
was billed; only the later look-ups of that id will answer 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from thrifty.errors import ServiceUnavailableError, StorageError
from thrifty.ledger.store import SQLStore

log = logging.getLogger("thrifty.server")

# Entries kept in memory per gateway app (a few hundred bytes each).
MEMORY_LIMIT = 10_000
# OpenAI keeps a stored response 30 days; an older entry points at nothing, so it is dropped
# (one DELETE every PRUNE_EVERY writes keeps the table at about 30 days of responses).
RETENTION_S = 30 * 86_400
PRUNE_EVERY = 1_000
LOOKUP_DOWN = ("The ledger database is unavailable, so thrifty cannot tell which provider holds this response; "
               "try again shortly.")
_COLUMNS = "response_id, request_id, ts, model, provider, key_id, tenant"


@dataclass(frozen=True)
class StoredResponse:
    response_id: str
    request_id: str
    model: str  # the catalog model that answered
    provider: str
    key_id: str | None
    tenant: str
    ts: float = 0.0


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
        sql = (f"INSERT INTO stored_responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
               " ON CONFLICT (response_id) DO NOTHING")
        try:
            await asyncio.to_thread(self.store.execute, sql, (entry.response_id, entry.request_id, entry.ts,
                                                              entry.model, entry.provider, entry.key_id, entry.tenant))
            self._writes += 1
            if self._writes % PRUNE_EVERY == 1:
                await asyncio.to_thread(self.store.execute, "DELETE FROM stored_responses WHERE ts < ?",
                                        (time.time() - self.retention_s,))
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
            rows = await asyncio.to_thread(
                self.store.query, f"SELECT {_COLUMNS} FROM stored_responses WHERE response_id = ?", (response_id,))
        except StorageError as exc:
            log.warning("stored response look-up failed: %s", exc.message)
            raise ServiceUnavailableError(LOOKUP_DOWN) from None
        if not rows:
            return None
        rid, request_id, ts, model, provider, key_id, tenant = rows[0]
        entry = StoredResponse(str(rid), str(request_id), str(model), str(provider),
                               None if key_id is None else str(key_id), str(tenant), float(ts))
        self._keep(entry)
        return entry if self._live(entry) else None

    def _live(self, entry: StoredResponse) -> bool:
        """Younger than the retention: older ones the provider no longer holds either."""
        return entry.ts >= time.time() - self.retention_s

    async def forget(self, response_id: str) -> None:
        """Drop ``response_id`` (the provider deleted it); a failed delete is only logged."""
        self._memory.pop(response_id, None)
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.execute, "DELETE FROM stored_responses WHERE response_id = ?",
                                    (response_id,))
        except StorageError as exc:
            log.warning("response %s: could not drop its ledger entry: %s", response_id, exc.message)
