"""Settling background Responses API requests that nobody retrieves through thrifty.

A ``background: true`` create is recorded at an offline estimate (the prompt, no output) and
its ``stored_responses`` entry is ``pending`` until a retrieve relays it finished
(server/response_resources.py). A client that polls the provider directly, uses webhooks or
gives up never does, so the estimate would stay in the ledger, the key's budget and the savings.
The reconciler asks the provider for each pending entry older than a minimum age, exactly as a
client's ``GET /v1/responses/{id}`` does (``ResponseResources.fetch``: same URL, same retry
policy), and hands a finished answer to the same ``ResponseResources.settle`` a retrieve uses:
the same ledger rows, budget correction, /metrics and log line, under the same claim
(``ResponseIndex.amend``), so a concurrent client retrieve, a second pass, or another instance
settles it once.

Outcomes, one per entry:

- ``settled``: finished; its real usage replaced the estimate (or another call had already done
  it). A finished one with nothing to price (``completed`` without ``usage``, a model this
  config no longer prices) keeps its estimate and stops being pending: asking again would
  never tell more.
- ``running``: still ``queued`` / ``in_progress`` (or its ledger row not written yet, or the
  ledger database failed the amendment): it stays pending for a later pass.
- ``gone``: the provider answers 404 (deleted or expired there). It will never be settled: its
  rows keep the estimate (the prompt, which the provider billed if it ever ran), and the entry
  stops being pending, with a warning naming the request.
- ``failed``: the provider could not be asked (unreachable, a 5xx or 401 after retries, a
  provider this config no longer has): it stays pending, and the next pass asks again. A
  provider that could not be reached (no connection, no answer in time) is not asked about its
  other entries in this pass (failed too): one timeout per provider and pass, not one per entry.

It runs two ways: ``Reconciler.start`` in the gateway's lifespan (every
``server.reconcile_background_s``, on by default), and ``thrifty ledger reconcile`` (one pass,
cli/ledger_cmd.py). A serve pass asks only about the entries it could take
(``ResponseIndex.lease``): instances sharing a database take turns per entry instead of each
asking the provider about all of them. Neither blocks client requests: the provider calls are the event loop's
usual non-blocking ones, a few at a time, and the database statements run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from thrifty.errors import (
    NotFoundError,
    StorageError,
    ThriftyError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from thrifty.pipeline.context import new_request_id
from thrifty.server.response_resources import TERMINAL, ResponseResources
from thrifty.server.stored_responses import StoredResponse

log = logging.getLogger("thrifty.server")

# Provider look-ups in flight at once: enough to get through a backlog after an outage, few
# enough not to look like a burst to the provider's rate limits.
CONCURRENCY = 4
# Entries one serve pass looks at; the rest wait for the next pass (oldest first).
BATCH = 500
# How far before the previous pass's window the next one starts again: an entry written late
# (another instance's clock behind this one's, a slow insert) is still found.
OVERLAP_S = 600.0
# The listing may scan a month of entries (the CLI, a first pass): more than a look-up's wait.
LIST_WAIT_S = 60.0
# A serve pass takes the entries it asks about for this share of the interval (``lease``).
LEASE_SHARE = 0.9


@dataclass
class Tally:
    """How many entries a pass left in each outcome class."""

    settled: int = 0
    running: int = 0
    gone: int = 0
    failed: int = 0
    oldest_pending: float | None = None  # the ts of the oldest entry left pending (serve's next window)
    newest: float = 0.0  # the ts of the newest entry listed (where a pass after a full batch resumes)
    not_due: int = 0  # pending entries younger than the minimum age (counted by the CLI only)
    elsewhere: int = 0  # pending entries another gateway's pass took (serve passes only)
    window_end: float = 0.0  # entries created before this were listed (now minus the minimum age)

    def add(self, outcome: str, entry: StoredResponse) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.newest = max(self.newest, entry.ts)
        if outcome in ("running", "failed", "elsewhere"):
            oldest = self.oldest_pending
            self.oldest_pending = entry.ts if oldest is None else min(oldest, entry.ts)

    def summary(self) -> str:
        return f"settled {self.settled}, still running {self.running}, gone {self.gone}, failed {self.failed}"


class Reconciler:
    """Passes over the pending entries of one gateway's ``ResponseIndex``."""

    def __init__(self, resources: ResponseResources, *, min_age_s: float, failure_level: int = logging.WARNING) -> None:
        self.resources = resources
        self.index = resources.index
        self.min_age_s = min_age_s
        # The level of each "could not be asked" line: a warning for the CLI's one pass; the serve
        # loop says them at INFO and warns once per pass, so a provider outage is not hundreds of
        # warnings a minute.
        self.failure_level = failure_level

    async def run_once(self, since: float = 0.0, limit: int | None = None, lease_s: float | None = None) -> Tally:
        """One pass over the entries pending since ``since`` and older than the minimum age.
        ``lease_s``: ask only about the entries no other gateway's pass took in the last
        ``lease_s`` seconds, and take them (the serve loop; the CLI's pass asks about all).
        Raises ``StorageError`` when they cannot be listed (nothing was asked then)."""
        before = time.time() - self.min_age_s
        entries = await self.index.pending_before(before, since, limit, wait_s=LIST_WAIT_S)
        tally = Tally(window_end=before)
        if lease_s is not None:
            taken = {e.response_id for e in await self.index.lease(entries, lease_s, wait_s=LIST_WAIT_S)}
            for entry in entries:
                if entry.response_id not in taken:
                    tally.add("elsewhere", entry)  # still pending: the sweep's window keeps it
            entries = [e for e in entries if e.response_id in taken]
        gate = asyncio.Semaphore(CONCURRENCY)
        # Providers a look-up of this pass could not reach (no connection, no answer in time):
        # their other entries are not asked this pass. Each look-up waits out the provider's
        # timeout and retries, so asking a provider that stopped answering about every entry in
        # turn took hours per pass (500 entries, four at a time), holding up every other
        # provider's entries and the CLI. An HTTP error status is not counted: it comes back at
        # once and may be the entry's own, which must not keep its provider's others waiting.
        # A 429 still left after the retries is (an UpstreamRateLimitError, not a status error):
        # asking a rate-limited provider about its other entries would only prolong the limit.
        down: set[str] = set()

        async def one(entry: StoredResponse) -> None:
            async with gate:
                if entry.provider in down:
                    outcome = self._failed(entry, None, "it did not answer an earlier look-up of this pass")
                else:
                    outcome = await self.reconcile(entry, down)
                tally.add(outcome, entry)

        await asyncio.gather(*(one(e) for e in entries))
        return tally

    async def reconcile(self, entry: StoredResponse, unreachable: set[str] | None = None) -> str:
        """Ask the provider about ``entry`` and settle it if finished: its outcome class. A
        provider that could not be reached is added to ``unreachable``."""
        request_id = new_request_id()  # the look-up's own id in the log, as a retrieve has
        try:
            response = await self.resources.fetch(entry)
        except UpstreamStatusError as exc:
            if exc.upstream_status == 404:
                return await self._gone(entry)
            return self._failed(entry, exc)
        except NotFoundError as exc:  # the provider is no longer in this config (``unknown``)
            return self._failed(entry, exc, f"provider '{entry.provider}' is not in this config")
        except ThriftyError as exc:  # unreachable, timed out, not an HTTP provider
            # A body it could not read (UpstreamProtocolError) may be this entry's alone.
            if unreachable is not None and isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamProtocolError):
                unreachable.add(entry.provider)
            return self._failed(entry, exc)
        except Exception as exc:  # anything else from the HTTP stack: this entry fails, not the pass
            return self._failed(entry, None, f"{type(exc).__name__}: {exc}")
        if not isinstance(response, dict) or response.get("status") not in TERMINAL:
            return "running"
        outcome = self.resources.outcome(entry, response)  # priced once, handed to settle
        if outcome is None:
            # Finished with nothing to price: the estimate is all there will ever be.
            if await self.index.give_up(entry):
                log.info("request %s: background response %s %s without usage to price; request %s keeps its "
                         "estimate", request_id, entry.response_id, response.get("status"), entry.request_id)
        else:
            await self.resources.settle(entry, response, request_id, outcome)
        # Not settled: its row is not in the ledger yet, or the database failed (``amend`` and
        # ``give_up`` logged it).
        return "settled" if self.index.settled(entry.response_id) else "running"

    async def _gone(self, entry: StoredResponse) -> str:
        if await self.index.give_up(entry):
            log.warning("background response %s is gone at provider %s (404: deleted or expired) and will never be "
                        "settled: request %s keeps its estimate in the ledger", entry.response_id, entry.provider,
                        entry.request_id, extra={"request_id": entry.request_id})
        return "gone"

    def _failed(self, entry: StoredResponse, exc: ThriftyError | None, why: str | None = None) -> str:
        reason = self.resources.gateway.redactor(why or (exc.message if exc is not None else "unknown error"))
        log.log(self.failure_level, "background response %s (request %s) stays pending: provider %s could not be "
                "asked: %s", entry.response_id, entry.request_id, entry.provider, reason)
        return "failed"

    def start(self, interval_s: float) -> asyncio.Task[None] | None:
        """The periodic pass as a task of the running loop (the server's), or None when it is
        off (``interval_s`` 0) or there is no ledger database to settle in. The caller cancels it."""
        if interval_s <= 0 or self.index.store is None:
            return None
        return asyncio.get_running_loop().create_task(self._serve(interval_s), name="thrifty: reconcile background")

    async def _serve(self, interval_s: float) -> None:
        """Every ``interval_s``: one pass. The first sweep looks back over the whole retention (a
        gateway that was down); later ones start a little before the oldest entry the previous
        sweep left pending, or its window's end, so a pass does not rescan a month of entries. A
        full batch is followed by the entries after it, so a backlog of still-running ones
        cannot hide the newer ones."""
        cursor = 0.0  # where the next pass's listing starts
        oldest: float | None = None  # the oldest entry this sweep left pending
        while True:
            await asyncio.sleep(interval_s)
            window_end = time.time() - self.min_age_s
            try:
                # Taken for a little less than the interval: the next pass, this gateway's or
                # another's, may ask again.
                tally = await self.run_once(cursor, BATCH, lease_s=interval_s * LEASE_SHARE)
            except StorageError as exc:
                log.warning("background responses not reconciled this time: %s", exc.message)
                continue
            except Exception:  # a bug must not end the loop for the life of the server
                log.exception("background responses not reconciled this time")
                continue
            if tally.settled or tally.gone or tally.failed:
                log.log(logging.WARNING if tally.failed else logging.INFO, "background responses reconciled: %s",
                        tally.summary())
            if tally.oldest_pending is not None:
                oldest = tally.oldest_pending if oldest is None else min(oldest, tally.oldest_pending)
            if tally.settled + tally.running + tally.gone + tally.failed + tally.elsewhere >= BATCH:
                cursor = tally.newest  # the same sweep goes on after this batch
                continue
            cursor = min(oldest if oldest is not None else window_end, window_end) - OVERLAP_S
            oldest = None


def summary_lines(tally: Tally) -> list[str]:
    """``thrifty ledger reconcile``'s output: one line per outcome class."""
    return [f"settled {tally.settled} (their real usage is in the ledger now)",
            f"still running {tally.running} (left pending for a later pass)",
            f"gone {tally.gone} (the provider no longer holds them: their estimate stays, never to be settled)",
            f"failed to reach the provider {tally.failed} (left pending)",
            f"not due yet {tally.not_due} (younger than --min-age: left for a later pass)"]
