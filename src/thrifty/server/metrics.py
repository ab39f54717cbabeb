"""``GET /metrics``: Prometheus metrics fed by every finished request (a gateway observer).

Labels are kept low-cardinality: served model, route (``-`` when none), strategy, status and
cache status; never key ids, tenants or prompt text. Each Gateway has its own registry, so
several gateways in one process (tests, embedding apps) do not mix their numbers.
"""

from __future__ import annotations

import hmac
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Container
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from thrifty.errors import AuthenticationError
from thrifty.ledger.report import request_saved_usd
from thrifty.pipeline.accounting import escalations
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.server.credentials import client_key
from thrifty.server.http_errors import error_response
from thrifty.types import Usage

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# The histograms' bucket bounds as prometheus_client keeps them (``_upper_bounds``: floats, +Inf last).
_BOUNDS = [*map(float, _LATENCY_BUCKETS), math.inf]


UNKNOWN = "(unknown)"


class Metrics:
    def __init__(self, ledger_failures: Callable[[], float] | None = None, *,
                 known_models: Container[str] | None = None, known_routes: Container[str] | None = None) -> None:
        """``known_models`` (what a request may name: models, aliases, ``auto``, ``route:NAME``) and
        ``known_routes`` bound the labels a failed request brings: its ``model`` (and ``route:X``)
        are the client's text, and every new label value is a series kept forever (a client
        naming a new 100 kB model per request grew memory and /metrics without end). Anything
        else is counted as ``(unknown)``. None: labels are not checked (tests, embedding apps)."""
        self.known_models = known_models
        self.known_routes = known_routes
        self._key: str | None = None  # the key /metrics needs (require_key); None: open, for scrapers
        r = self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Per request, counter increments are only summed as plain numbers (a prometheus_client
        # inc is a Python call and a lock: a dozen a request were most of this observer's cost);
        # ``flush`` applies them before anything reads the metrics. The pending sums are keyed by
        # series, so they stay bounded however long nobody scrapes. Histogram observations too,
        # as a sum and a count per bucket (a list of plain numbers per child, as bounded): an
        # observe was five Python calls and two locks, twice a request, the largest part of this
        # observer's cost. One lock for the lot: ``amended`` runs on the event loop, a test or
        # an embedding app may collect from another thread, and a collect must see each request whole.
        self._lock = threading.Lock()
        self._pending_inc: dict[Any, float] = {}  # child -> increments not yet applied
        self._pending_obs: dict[Any, list[float]] = {}  # histogram child -> [sum, count per bucket]
        self._series: dict[tuple[str, str, str, str], _Series] = {}  # (model, route, strategy, status)
        # Registered first, so collected first: every collect (GET /metrics, get_sample_value)
        # applies what is pending before the metrics are read.
        r.register(_Flusher(self.flush))
        req_labels = ["model", "route", "strategy", "status"]
        self.requests = Counter("thrifty_requests", "Finished client requests.", req_labels, registry=r)
        self.errors = Counter("thrifty_errors", "Failed client requests, by error type.",
                              ["model", "route", "error_type"], registry=r)
        self.latency = Histogram("thrifty_request_latency_seconds", "Client request latency (to the last chunk).",
                                 ["model", "route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_latency = Histogram("thrifty_upstream_latency_seconds", "Latency of each upstream attempt.",
                                          ["model", "purpose", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("thrifty_tokens", "Tokens of served answers.", ["model", "route", "kind"], registry=r)
        self.cost = Counter("thrifty_cost_usd", "What requests spent upstream (all attempts), USD.",
                            ["model", "route"], registry=r)
        self.baseline = Counter("thrifty_baseline_cost_usd", "What the baseline model would have cost, USD.",
                                ["model", "route"], registry=r)
        # Compression's saving is inside baseline minus cost (the baseline prices the prompt as
        # sent by the client, migration 006): "plus compression" told a reader to add it twice.
        self.savings = Counter("thrifty_savings_usd", "Baseline cost minus cost (compression's saving "
                               "included), USD; failed requests and negative savings are not counted.",
                               ["route", "strategy"], registry=r)
        self.cache = Counter("thrifty_cache_requests", "Requests by cache outcome.", ["route", "cache_status"],
                             registry=r)
        self.cache_hits = Counter("thrifty_cache_hits", "Requests answered from the cache.", ["route"], registry=r)
        self.escalations = Counter("thrifty_escalations", "Cascade levels moved past before the served answer.",
                                   ["route"], registry=r)
        self.auth_failures = Counter("thrifty_auth_failures", "Requests refused by authentication.", ["reason"],
                                     registry=r)
        if ledger_failures is not None:
            g = Gauge("thrifty_ledger_failed_batches", "Ledger batches spilled after repeated write failures.",
                      registry=r)
            g.set_function(ledger_failures)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: prometheus_client's lookup costs ~15 us a call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _inc(self, metric: Any, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """``_child(metric, *labels).inc(amount)``, deferred to ``flush``; the caller holds ``_lock``."""
        _add(self._pending_inc, self._child(metric, *labels), amount)  # the child made now, as before

    def flush(self) -> None:
        """Apply the pending increments and observations to the prometheus metrics. Every
        ``registry.collect()`` runs it first (``_Flusher``); call it before reading the registry
        any other way (a restricted registry, a metric's value directly). Under the lock
        throughout: a collect running alongside another's flush still sees every request."""
        with self._lock:
            pending, self._pending_inc = self._pending_inc, {}
            for child, amount in pending.items():
                child.inc(amount)
            observed, self._pending_obs = self._pending_obs, {}
            for child, sums in observed.items():
                # What ``observe`` does, one call per bucket instead of per observation: no public
                # API adds n observations at once (tests/unit/test_hot_path_cpu3.py pins the result
                # to observe's, bucket by bucket).
                child._sum.inc(sums[0])
                for bucket, n in zip(child._buckets, sums[1:], strict=True):
                    if n:
                        bucket.inc(n)

    def observe(self, ctx: RequestContext) -> None:
        """A gateway observer: count one finished request."""
        with self._lock:
            self._observe(ctx)

    def _observe(self, ctx: RequestContext) -> None:
        inc, pending, observed = self._inc, self._pending_inc, self._pending_obs
        model = ctx.served_model or _bounded(ctx.request.model, self.known_models)
        route = _bounded(ctx.route, self.known_routes) if ctx.route else "-"
        labels = (model, route, ctx.strategy, ctx.status)
        # The children a request's labels lead to, looked up once (the ``_child`` call per
        # counter, not the counting, was most of this method's cost).
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(self, labels)
        children = series.children
        child = children[_REQUESTS] or series.make(_REQUESTS)
        pending[child] = pending.get(child, 0.0) + 1.0
        if ctx.status != "ok":
            inc(self.errors, (model, route, ctx.error_type or "unknown"))
        _observation(observed, children[_LATENCY] or series.make(_LATENCY), ctx.elapsed_ms / 1000.0)
        for a in ctx.attempts:
            _observation(observed, self._child(self.upstream_latency, a.model, a.purpose, a.status),
                         a.latency_ms / 1000.0)
        u = ctx.usage
        for slot, n in ((_PROMPT, u.prompt_tokens), (_COMPLETION, u.completion_tokens), (_CACHED, u.cached_tokens)):
            if n:
                _add(pending, children[slot] or series.make(slot), n)
        if ctx.cost_usd is not None:
            # 0.0 too: a free (local) model's requests still get their cost series, at 0.
            _add(pending, children[_COST] or series.make(_COST), ctx.cost_usd)
        if ctx.status == "ok" and ctx.baseline_cost_usd is not None and ctx.cost_usd is not None:
            # As the report's BASELINE_SQL: an unpriced request is out of the cost counter, so out of this one.
            _add(pending, children[_BASELINE] or series.make(_BASELINE), ctx.baseline_cost_usd)
        if ctx.status == "ok":
            # The report's rule (docs/operations.md, "Accounting"), failures apart: an unpriced
            # request claims nothing (not its whole baseline), a hit without a baseline counts
            # what the cache saved. A counter only grows: negative savings are skipped.
            saved = request_saved_usd(ctx.status, ctx.cost_usd, ctx.baseline_cost_usd, ctx.cache_status,
                                      ctx.cache_saved_usd)
            if saved > 0:
                _add(pending, children[_SAVINGS] or series.make(_SAVINGS), saved)
        if ctx.cache_status:
            inc(self.cache, (route, ctx.cache_status))
            if ctx.cache_status == "hit":
                inc(self.cache_hits, (route,))
        levels = escalations(ctx)  # the ledger's definition (pipeline/accounting.py)
        if levels:
            inc(self.escalations, (route,), levels)

    def amended(self, model: str, before_usd: float | None, before: Usage, after_usd: float | None,
                after: Usage, *, failed: bool) -> None:
        """A background Responses API request was counted when its create was answered, at an
        offline estimate (no output yet); its real usage, relayed by a later retrieve, amends the
        ledger row (server/response_resources.py) and, here, adds the difference so the cost,
        baseline and token counters meet the ledger again. A counter cannot go down: a run
        that came out below its estimate (cancelled, failed) keeps the estimate here, and the
        request stays counted under the status its create had."""
        model, route = _bounded(model, self.known_models), "-"  # the passthrough endpoints have no route
        with self._lock:
            for kind, n in (("prompt", after.prompt_tokens - before.prompt_tokens),
                            ("completion", after.completion_tokens - before.completion_tokens),
                            ("cached", after.cached_tokens - before.cached_tokens)):
                if n > 0:
                    self._inc(self.tokens, (model, route, kind), n)
            if before_usd is not None and after_usd is not None and after_usd > before_usd:
                self._inc(self.cost, (model, route), after_usd - before_usd)
                if not failed:  # a passthrough's baseline is its own cost; a failed request has none
                    self._inc(self.baseline, (model, route), after_usd - before_usd)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def require_key(self, key: str | None) -> None:
        """``server.metrics_key_required``: /metrics answers only requests bearing ``key`` (the
        admin key; any header ``server/credentials.py`` reads, e.g. a Prometheus
        ``authorization`` bearer token). The labels name models and routes, not secrets, so open is
        the default; this is for gateways whose model names are themselves private."""
        self._key = key

    def route(self) -> Route:
        async def metrics(request: Request) -> Response:
            key = self._key
            if key is not None and not hmac.compare_digest(client_key(request.headers).encode(), key.encode()):
                err = AuthenticationError("/metrics needs the admin key (Authorization: Bearer <auth.admin_key>): "
                                          "server.metrics_key_required is on.")
                return error_response(err, new_request_id())
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Route("/metrics", metrics, methods=["GET"])


# The slots of a _Series: which metric, under which of its label set's labels.
_REQUESTS, _LATENCY, _PROMPT, _COMPLETION, _CACHED, _COST, _BASELINE, _SAVINGS = range(8)


class _Series:
    """The children one (model, route, strategy, status) label set counts a request in, each
    made on its first use (as ``_child`` did: a series appears with its first request)."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str, str]) -> None:
        model, route, strategy, _status = labels
        m = metrics
        self._metrics = metrics
        self._specs: tuple[tuple[Any, tuple[str, ...]], ...] = (
            (m.requests, labels), (m.latency, (model, route)), (m.tokens, (model, route, "prompt")),
            (m.tokens, (model, route, "completion")), (m.tokens, (model, route, "cached")),
            (m.cost, (model, route)), (m.baseline, (model, route)), (m.savings, (route, strategy)))
        self.children: list[Any] = [None] * len(self._specs)

    def make(self, slot: int) -> Any:
        metric, labels = self._specs[slot]
        child = self.children[slot] = self._metrics._child(metric, *labels)
        return child


def _add(pending: dict[Any, float], child: Any, amount: float) -> None:
    """A counter's increment, pending; refused now if negative, as ``inc`` would (later it would
    break the scrape)."""
    if amount < 0:
        raise ValueError("Counters can only be incremented by non-negative amounts.")
    pending[child] = pending.get(child, 0.0) + amount


def _observation(observed: dict[Any, list[float]], child: Any, amount: float) -> None:
    """A histogram child's ``observe(amount)``, pending: added to its sum and to the count of the
    first bucket whose bound is at or above it (observe's scan; a NaN is in no bucket)."""
    sums = observed.get(child)
    if sums is None:
        sums = observed[child] = [0.0] * (len(_BOUNDS) + 1)
    sums[0] += amount
    if amount == amount:  # not a NaN
        sums[bisect_left(_BOUNDS, amount) + 1] += 1


class _Flusher:
    """A collector of no metrics: collecting it applies ``Metrics``' pending numbers."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def collect(self) -> list[Any]:
        self._flush()
        return []


def _bounded(value: str, known: Container[str] | None) -> str:
    return value if known is None or value in known else UNKNOWN
