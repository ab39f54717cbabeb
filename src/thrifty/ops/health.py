"""``GET /ready``: readiness, for load balancers and orchestrators.

``GET /health`` is liveness: 200 whenever the process answers, whatever its services do, so a
supervisor never restarts a gateway because its database is down (a restart would not help).
``/ready`` also reaches the services the config names, each probed on a connection of its own
(a probe never waits behind, or delays, the requests' connections):

- the ledger database (``SELECT 1``; PostgreSQL with a short connect timeout);
- each Redis server (``PING``): ``redis_url`` (budgets, rate limits, shared caches) and a
  different ``cache.redis_url``.

200 ``{"status": "ready", "checks": {"ledger": "ok", "redis": "ok"}}`` when all answer, else 503
with ``"unavailable"`` for the ones that did not. The body names services only; why a probe
failed (hosts, ports, driver text) goes to the server log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thrifty.ledger.store import SQLStore
from thrifty.ops.outage import Outage
from thrifty.redact import mask_credentials

log = logging.getLogger("thrifty.server")

PROBE_TIMEOUT_S = 3.0

Probe = Callable[[], Awaitable[None]]


def ledger_probe(store: SQLStore | None, dsn: str | None) -> Probe | None:
    """A probe of the ledger database: its own short-lived connection for PostgreSQL, the
    gateway's (local, never blocking for long) store for SQLite."""
    if dsn:
        def pg() -> None:
            import psycopg

            with psycopg.connect(dsn, connect_timeout=int(PROBE_TIMEOUT_S), application_name="thrifty-ready") as c:
                c.execute("SELECT 1")

        return lambda: asyncio.to_thread(pg)
    if store is not None:
        sqlite = store

        async def lite() -> None:
            await asyncio.to_thread(sqlite.query, "SELECT 1")

        return lite
    return None


def redis_probe(url: str) -> Probe:
    async def ping() -> None:
        import redis.asyncio as aioredis

        client = aioredis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
        try:
            await client.ping()
        finally:
            await client.aclose()

    return ping


class Readiness:
    def __init__(self, probes: dict[str, Probe]) -> None:
        self.probes = probes
        # A load balancer asks every few seconds: an outage is logged when it starts, when it
        # fails for a new reason and when it ends, not on every check (thousands of identical
        # lines per instance in an hour's outage).
        self._outages = {name: Outage(log, "readiness: %s answers again", name) for name in probes}

    async def check(self) -> dict[str, str]:
        """``{service: "ok" | "unavailable"}`` for every probe, run concurrently."""
        names = list(self.probes)
        results = await asyncio.gather(*(self._one(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def _one(self, name: str) -> str:
        outage = self._outages[name]
        try:
            await asyncio.wait_for(self.probes[name](), PROBE_TIMEOUT_S + 1)
        except Exception as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            detail = mask_credentials(" ".join(detail.split()))
            outage.failed("readiness: %s unavailable: %s", name, detail, about=detail)
            return "unavailable"
        outage.answered()
        return "ok"

    def route(self) -> Route:
        async def ready(request: Request) -> Response:
            checks = await self.check()
            ok = all(v == "ok" for v in checks.values())
            return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks},
                                status_code=200 if ok else 503, headers={"cache-control": "no-store"})

        return Route("/ready", ready, methods=["GET"])
