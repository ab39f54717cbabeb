"""The cache stage: between normalize/compress and route.

    hit    -> the stored answer is served (streamed in chunks when the client streams), cost 0,
              with the cost it avoided recorded as ``cache_saved_usd``;
    miss   -> the rest of the pipeline runs; a complete, successful, storable answer is stored
              (a stream once its last chunk has gone, never a broken one), unless a fallback
              model served it instead of the model or route tier planned (``_served_as_planned``);
    bypass -> the request may not use the cache (policy.py) and passes straight through.

Identical concurrent misses make one upstream call: in-process followers wait on the leader's
flight (flight.py) and, across processes sharing a backend, on the backend's short lock.
Cache failures (an unreadable store, a corrupt entry) are misses, never errors.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator
from importlib.util import find_spec
from typing import Any

import anyio
import numpy as np

from thrifty.cache.assemble import assemble, storable
from thrifty.cache.backends.base import CacheBackend, EntryMeta
from thrifty.cache.config import CacheConfig
from thrifty.cache.entry import CacheEntry, decode_entry
from thrifty.cache.fingerprint import Fingerprints
from thrifty.cache.flight import Flight, SingleFlight, wait
from thrifty.cache.keys import CacheKey, make_key
from thrifty.cache.policy import Decision, decide
from thrifty.cache.semantic import SemanticCache, SemanticMatch
from thrifty.cache.verifier import HitVerifier, LearnedVerifier, RuleVerifier
from thrifty.catalog import Catalog
from thrifty.errors import StorageError, ThriftyError
from thrifty.pipeline.accounting import baseline_cost
from thrifty.pipeline.context import Handler, RequestContext
from thrifty.streaming import close_below, iterate, response_to_chunks
from thrifty.types import Usage

log = logging.getLogger("thrifty.cache")

HEADER = "x-thrifty-cache"
# How often a follower in another process re-reads the store while the leader holds the lock.
_POLL_S = 0.02


def warn_missing_ann(kind: str) -> bool:
    """Log once, when the stage is built, that ``cache.semantic.ann`` names an index library that
    is not installed: the index then silently uses exact search (cache/index.py ``make_ann``),
    which is slow for large namespaces. ``auto`` falls back without a warning, as documented."""
    if kind in ("faiss", "hnswlib") and find_spec(kind) is None:
        log.warning("cache.semantic.ann: %s is not installed, so large namespaces use exact search "
                    "(pip install %s, or set ann: auto)", kind, "faiss-cpu" if kind == "faiss" else kind)
        return True
    return False


class CacheStage:
    def __init__(self, cfg: CacheConfig, backend: CacheBackend, catalog: Catalog,
                 semantic: SemanticCache | None = None, confirm: Any = None,
                 fingerprints: Fingerprints | None = None) -> None:
        self.cfg = cfg
        # What serves each name (model, alias, route), part of every key; None: the name alone.
        self.fingerprints = fingerprints
        self.backend = backend
        self.catalog = catalog
        self.semantic = semantic
        if semantic is not None:
            warn_missing_ann(cfg.semantic.ann)
        self.confirm = confirm  # a ConfirmModel asking a cheap model about semantic hits
        self.flights = SingleFlight()
        self._verifiers: dict[str | None, HitVerifier] = {}

    # -- the stage ------------------------------------------------------------------------
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        decision = decide(self.cfg, ctx, self.catalog)
        if decision.bypass:
            self._status(ctx, "bypass")
            await call_next(ctx)
            return
        serving = self.fingerprints.of(ctx) if self.fingerprints is not None else ""
        key = make_key(ctx.request, tenant=ctx.tenant, model=ctx.request.model, namespace=self.cfg.namespace,
                       route=ctx.route, task=ctx.task, serving=serving)
        qvec: np.ndarray | None = None
        if decision.read:
            entry = await self.lookup(key.exact, ctx.tenant, decision.max_age_s)
            if entry is not None:
                self.serve(ctx, entry, "exact")
                return
            if decision.semantic and self.semantic is not None and key.query is not None:
                served, qvec = await self._semantic(ctx, key, decision)
                if served:
                    return
        flight = await self._join(ctx, key, decision)
        if flight is None:
            return  # served from the answer of an identical request that was in flight
        await self._run_and_store(ctx, call_next, key, decision, flight, qvec)

    # -- lookups --------------------------------------------------------------------------
    async def lookup(self, key: str, tenant: str, max_age_s: float | None = None) -> CacheEntry | None:
        try:
            raw = await self.backend.get(key)
        except Exception:  # a broken store is a miss
            log.warning("cache read failed", exc_info=True)
            return None
        now = time.time()
        entry = decode_entry(raw, key=key, tenant=tenant, now=now)
        if entry is not None and max_age_s is not None and now - entry.created > max_age_s:
            return None
        return entry

    def verifier(self, path: str | None) -> HitVerifier:
        if path not in self._verifiers:
            if path:
                self._verifiers[path] = LearnedVerifier.load(path)
            else:
                name = self.semantic.embedder.name if self.semantic is not None else "lexical"
                self._verifiers[path] = RuleVerifier.for_embedder(name)
        return self._verifiers[path]

    async def _semantic(self, ctx: RequestContext, key: CacheKey, d: Decision) -> tuple[bool, np.ndarray | None]:
        assert self.semantic is not None and key.query is not None
        verifier = self.verifier(d.verifier)
        threshold = d.threshold if d.threshold is not None else verifier.threshold
        try:
            matches, qvec = await self.semantic.matches(key.scope, key.query, verifier, threshold)
        except ThriftyError:
            raise
        except Exception:
            log.warning("semantic cache lookup failed", exc_info=True)
            return False, None
        # Every verified candidate, best first, from one search. A candidate's entry may be
        # unservable (deleted by `cache clear`, evicted, older than the request's max-age) while
        # its vector stays in memory until its TTL: the next one is served instead, so paraphrases
        # stored since a clear are still answered. The entry must also belong to this very scope:
        # same tenant, model, system prompt, parameters.
        for match in matches:
            entry = await self.lookup(match.key, ctx.tenant, d.max_age_s)
            if entry is not None and entry.scope == key.scope:
                break
        else:
            return False, qvec
        if self.confirm is not None and not await self.confirm.same_question(ctx, key.query, match.text):
            return False, qvec
        self.serve(ctx, entry, "semantic", match)
        return True, qvec

    # -- serving a hit --------------------------------------------------------------------
    def serve(self, ctx: RequestContext, entry: CacheEntry, match: str, sem: SemanticMatch | None = None) -> None:
        response = copy.deepcopy(entry.response)
        response["id"] = "chatcmpl-cache-" + ctx.request_id.removeprefix("req_")
        usage = Usage.from_openai(entry.usage)
        ctx.cache_status = "hit"
        ctx.strategy = "cache"
        ctx.served_model = entry.served_model or entry.model
        # The tier of the model whose answer this is, so `report --by tier` shows the hit with
        # the answers of its tier rather than under "(none)".
        info = self.catalog.get(ctx.served_model)
        ctx.served_tier = info.tier if info is not None else None
        ctx.usage = usage
        spent = ctx.spent_usd()  # a confirming judge call, if any, is the only spend
        ctx.cost_usd = spent if ctx.attempts and spent is not None else 0.0
        baseline = self.catalog.baseline
        priced = baseline_cost(ctx, usage, baseline.price) if baseline is not None else None
        ctx.baseline_cost_usd = priced if priced is not None else entry.baseline_cost_usd
        ctx.cache_saved_usd = float(entry.cost_usd or 0.0)
        ctx.response_headers[HEADER] = "hit"
        ctx.response_headers["x-thrifty-cache-match"] = match
        if sem is not None:
            ctx.response_headers["x-thrifty-cache-similarity"] = f"{sem.similarity:.4f}"
        if ctx.request.stream:
            ctx.chunks = iterate(response_to_chunks(response))
        else:
            ctx.response = response

    @staticmethod
    def _status(ctx: RequestContext, status: str) -> None:
        ctx.cache_status = status
        ctx.response_headers[HEADER] = status

    # -- single flight --------------------------------------------------------------------
    async def _join(self, ctx: RequestContext, key: CacheKey, d: Decision) -> Flight | None:
        """Wait for an identical in-flight request; returns our own flight, or None once served."""
        if d.read:
            deadline = time.monotonic() + self.cfg.lock_timeout_s
            while (current := self.flights.current(key.exact)) is not None:
                if not await wait(current, max(0.0, deadline - time.monotonic())):
                    break  # the leader stored nothing (or took too long): call upstream ourselves
                entry = await self.lookup(key.exact, ctx.tenant, d.max_age_s)
                if entry is not None:
                    self.serve(ctx, entry, "exact")
                    return None
        flight = self.flights.lead(key.exact)
        try:
            if d.read and not await self._try_lock(key.exact):
                # Another process is computing this answer: poll for it until its lock expires.
                deadline = time.monotonic() + self.cfg.lock_timeout_s
                while time.monotonic() < deadline:
                    await asyncio.sleep(_POLL_S)
                    entry = await self.lookup(key.exact, ctx.tenant, d.max_age_s)
                    if entry is not None:
                        self.serve(ctx, entry, "exact")
                        self.flights.finish(key.exact, flight, stored=True)
                        return None
                    if await self._try_lock(key.exact):
                        break
        except BaseException:
            # Cancelled while waiting (client gone, deadline): a flight left registered would stay
            # in memory for good and make every identical request wait lock_timeout_s for it.
            self.flights.finish(key.exact, flight, stored=False)
            raise
        return flight

    async def _try_lock(self, key: str) -> bool:
        """The cross-process lock for ``key``; True (compute it ourselves) when the store cannot
        take it: like an unreadable entry, a failing lock costs a duplicate call, never the request."""
        try:
            return await self.backend.try_lock(key, self.cfg.lock_timeout_s)
        except StorageError as exc:
            log.warning("cache lock failed, answering without it: %s", exc.message)
            return True

    async def _release(self, key: CacheKey, flight: Flight, stored: bool) -> None:
        self.flights.finish(key.exact, flight, stored)
        try:
            await self.backend.unlock(key.exact)
        except Exception:
            log.warning("cache unlock failed", exc_info=True)

    # -- misses ---------------------------------------------------------------------------
    async def _run_and_store(self, ctx: RequestContext, call_next: Handler, key: CacheKey, d: Decision,
                             flight: Flight, qvec: np.ndarray | None) -> None:
        self._status(ctx, "miss")
        try:
            await call_next(ctx)
        except BaseException:
            with anyio.CancelScope(shield=True):  # cancelled (client gone): still unlock, as above
                await self._release(key, flight, stored=False)
            raise
        if ctx.chunks is not None:
            ctx.chunks = self._store_after_stream(ctx, ctx.chunks, key, d, flight, qvec)
            return
        stored = await self._store(ctx, ctx.response, key, d, qvec)
        await self._release(key, flight, stored)

    async def _store_after_stream(self, ctx: RequestContext, chunks: AsyncIterator[dict[str, Any]], key: CacheKey,
                                  d: Decision, flight: Flight, qvec: np.ndarray | None,
                                  ) -> AsyncIterator[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        completed = False
        try:
            async for chunk in chunks:
                seen.append(chunk)
                yield chunk
            completed = True
        finally:
            # Shielded: a reader that leaves while this waits on the provider cancels the request,
            # and anyio cancels every await inside it again, so the release never ran: the flight
            # and the store's lock stayed taken and the same question waited lock_timeout_s.
            with anyio.CancelScope(shield=True):
                await close_below(chunks)  # the answer under it priced and settled first
                stored = False
                if completed and ctx.status == "ok":
                    stored = await self._store(ctx, assemble(seen), key, d, qvec)
                await self._release(key, flight, stored)

    async def _store(self, ctx: RequestContext, response: dict[str, Any] | None, key: CacheKey, d: Decision,
                     qvec: np.ndarray | None) -> bool:
        if ctx.status != "ok" or response is None or not storable(response, tool_calls=self.cfg.cache_tool_calls):
            return False
        if not self._served_as_planned(ctx):
            return False
        now = time.time()
        raw_usage = response.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else ctx.usage.to_openai()
        entry = CacheEntry(
            key=key.exact, scope=key.scope, tenant=ctx.tenant, model=ctx.request.model,
            served_model=ctx.served_model, response=response, usage=usage, cost_usd=ctx.cost_usd,
            baseline_cost_usd=ctx.baseline_cost_usd, created=now, expires=now + d.ttl_s, query=key.query,
        )
        meta = EntryMeta(key.exact, ctx.tenant, ctx.request.model, now, entry.expires)
        try:
            await self.backend.put(meta, entry.encode())
            if d.semantic and self.semantic is not None and key.query is not None:
                await self.semantic.add(key.scope, meta, key.query, qvec)
        except ThriftyError as exc:
            log.warning("cache store failed: %s", exc.message)
            return False
        return True

    def _served_as_planned(self, ctx: RequestContext) -> bool:
        """Whether a model or tier the plan named served the answer. A fallback model's answer
        (the planned model failed) is served once but not stored: under the planned model's key it
        would outlive the outage for the whole TTL."""
        plan, served = ctx.plan, ctx.served_model
        if plan is None or served is None:
            return True
        planned = set()
        for tier in plan.tiers:
            info = self.catalog.get(tier.model)
            planned.add(info.name if info is not None else tier.model)
        if served in planned:
            return True
        log.info("cache: not storing the answer of fallback model %s (planned: %s)", served,
                 ", ".join(sorted(planned)))
        return False

    async def aclose(self) -> None:
        await self.backend.aclose()
