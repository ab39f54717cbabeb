"""Attach operations to a Gateway: metrics, request logs, readiness, dashboard, and (when
``auth.enabled``) virtual keys, budgets, rate limits and the admin API. Everything hooks in
through the gateway's extension points (observers, extra_routes, authenticate, one pipeline stage).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from thrifty.capture import build_capture
from thrifty.errors import ConfigError, ServiceUnavailableError, StorageError
from thrifty.ledger.store import SQLStore, open_store
from thrifty.logs import register_secrets, request_logger
from thrifty.ops.admin import admin_routes
from thrifty.ops.auth import Authenticator, LabelRoute
from thrifty.ops.budgets import BudgetStage
from thrifty.ops.config import AuthConfig
from thrifty.ops.health import Probe, Readiness, ledger_probe, redis_probe
from thrifty.ops.key_routes import request_names
from thrifty.ops.keys import KEY_DB_DOWN, KeyStore
from thrifty.ops.ratelimit import Limiter, MemoryLimiter, Seed
from thrifty.redact import url_passwords
from thrifty.server.dashboard import dashboard_routes
from thrifty.server.metrics import Metrics
from thrifty.server.stored_responses import ResponseIndex

if TYPE_CHECKING:
    from thrifty.config import Config
    from thrifty.gateway import Gateway
    from thrifty.types import ChatRequest

log = logging.getLogger("thrifty.ops")


class Ops:
    """What operations added to one gateway (closed with it)."""

    def __init__(self, gateway: Gateway) -> None:
        config = gateway.config
        auth: AuthConfig = config.auth
        ledger = gateway.ledger
        self.metrics = Metrics(ledger_failures=(lambda: float(ledger.failed_batches)) if ledger else None,
                               known_models=frozenset(request_names(config)),
                               known_routes=frozenset(config.routing.routes))
        gateway.observers.append(self.metrics.observe)
        gateway.observers.append(request_logger(config.server.log_prompts, gateway.redactor))
        # The other secrets of the config are masked like provider keys wherever the redactor
        # runs (log lines, error bodies): the admin key and salt, the passwords of the ledger
        # DSN and Redis URLs (a driver error may quote them, even without the URL around them).
        cache_url = config.cache.redis_url if config.cache is not None else None
        for secret in (auth.admin_key, auth.key_salt, *url_passwords(config.ledger.dsn, config.redis_url, cache_url)):
            gateway.redactor.add(secret)
        # The JSON log handlers `thrifty serve` installed before this gateway existed learn its
        # provider keys: a key that is not key-shaped is masked in every line, not only prompts.
        register_secrets(gateway.redactor)
        if config.server.metrics_key_required:
            # /metrics then needs the admin key (the config checked that one is set: config.py).
            self.metrics.require_key(auth.admin_key)
        gateway.extra_routes.append(self.metrics.route())
        # Keys and the dashboard read the ledger database on their own connection, so they
        # never wait behind the writer thread's batches.
        self.store: SQLStore | None = None
        if config.ledger.enabled:
            self.store = open_store(config.resolve_path(config.ledger.path), config.ledger.dsn)
        gateway.extra_routes.append(Readiness(_probes(config, self.store)).route())
        # Which provider holds each stored Responses API id, and whose it is (server/stored_responses.py),
        # on a connection of its own (opened on first use): a create waits for its insert, never
        # behind a dashboard query on the store above.
        self.responses = ResponseIndex(open_store(config.resolve_path(config.ledger.path), config.ledger.dsn)
                                       if config.ledger.enabled else None)
        # The dashboard data (spend per key, key names) need the admin key whenever one is set,
        # with or without auth.enabled; with neither they are open, as the rest of the gateway.
        gateway.extra_routes.extend(dashboard_routes(self.store, admin_key=auth.admin_key,
                                                     require_admin=auth.enabled or bool(auth.admin_key)))
        self.keys: KeyStore | None = None
        self.limiter: Limiter | None = None
        self.budget_stage: BudgetStage | None = None
        if self.store is not None:
            self.keys = KeyStore(self.store, salt=auth.key_salt, cache_ttl_s=auth.key_cache_ttl_s,
                                 stale_s=auth.key_cache_stale_s)
        if auth.enabled:
            if self.keys is None:
                raise ConfigError("auth.enabled: virtual keys live in the ledger database; enable the ledger")
            self.limiter = build_limiter(auth, config.redis_url, self.keys)
            self.budget_stage = BudgetStage(self.keys, self.limiter, gateway.catalog, auth.default_completion_tokens)
            gateway.authenticate = Authenticator(self.keys, self.metrics.auth_failed, _label_route(gateway))
        if self.keys is not None and auth.admin_key:
            limiter = self.limiter or MemoryLimiter(_seeder(self.keys))
            gateway.extra_routes.extend(admin_routes(self.keys, limiter, auth.admin_key, request_names(config)))
        # A sample of traffic as `outcomes collect` prompts (`capture:`); None, and no observer, when off.
        # Last: its writer thread is not left running by a part above that failed.
        self.capture = build_capture(config, gateway.redactor)
        if self.capture is not None:
            gateway.observers.append(self.capture.observe)

    async def correct_spend(self, key_id: str, created: float, delta_usd: float) -> None:
        """A key's spend corrected after the fact (``BudgetStage.correct``); without budgets,
        nothing to do. A budget store that is down only loses the correction (logged): the
        ledger holds the real cost, and a restart or new period reseeds from it."""
        if self.budget_stage is None:
            return
        try:
            await self.budget_stage.correct(key_id, created, delta_usd)
        except (ServiceUnavailableError, StorageError) as exc:
            log.warning("key %s: its budget counter keeps an estimate (off by $%.6f): %s", key_id, delta_usd,
                        exc.message)

    async def aclose(self) -> None:
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        if self.responses.store is not None:
            await asyncio.to_thread(self.responses.store.close)


def _probes(config: Config, store: SQLStore | None) -> dict[str, Probe]:
    """What ``/ready`` checks: the ledger database and each Redis server the config names."""
    probes: dict[str, Probe] = {}
    if config.ledger.enabled:
        ledger = ledger_probe(store, config.ledger.dsn)
        if ledger is not None:
            probes["ledger"] = ledger
    if config.redis_url:
        probes["redis"] = redis_probe(config.redis_url)
    cache = config.cache
    if cache is not None and cache.enabled and cache.backend == "redis" and cache.redis_url \
            and cache.redis_url != config.redis_url:
        probes["cache_redis"] = redis_probe(cache.redis_url)
    return probes


def _label_route(gateway: Gateway) -> LabelRoute:
    """The route a client label of an ``auto`` request names, as the router will read it (the
    router is built lazily, so it is looked up at request time)."""

    def label_route(chat: ChatRequest, headers: Mapping[str, str]) -> str | None:
        router = gateway.router
        if router is None or not router.cfg.classify.client_labels:
            return None
        from thrifty.routing.classify import client_label

        found = client_label(chat, dict(headers))
        return router.route_for_task(found[0]) if found else None

    return label_route


def _seeder(keys: KeyStore) -> Seed:
    async def seed(key_id: str, since: float) -> float:
        try:
            return await keys.aspent_since(key_id, since)
        except StorageError as exc:
            # Without the period's recorded spend the budget cannot be enforced: fail closed,
            # telling the client which service is down (the details are for the log only).
            log.warning("key database unavailable, cannot read the spend of key %s: %s", key_id, exc.message)
            raise ServiceUnavailableError(KEY_DB_DOWN) from None

    return seed


def build_limiter(auth: AuthConfig, redis_url: str | None, keys: KeyStore) -> Limiter:
    backend = auth.backend
    if backend == "auto":
        backend = "redis" if redis_url else "memory"
    if backend == "redis":
        if not redis_url:
            raise ConfigError("auth.backend: redis needs redis_url to be set")
        from thrifty.ops.redis_limits import RedisLimiter

        return RedisLimiter(redis_url, _seeder(keys), prefix=auth.redis_prefix)
    return MemoryLimiter(_seeder(keys))
