"""Per-request cache decisions: may this request read the cache, may its answer be stored, for how long.

Controls, strongest first:
- body ``"cache": false`` (or ``"thrifty": {"cache": false}``): bypass entirely;
- ``x-thrifty-cache: no-store`` / ``cache-control: no-store``: bypass entirely;
- ``x-thrifty-cache: no-cache`` / ``cache-control: no-cache`` (or ``max-age=0``): do not read,
  store the fresh answer (a refresh);
- ``cache-control: max-age=N``: serve only entries younger than N seconds;
- body ``"cache": true``: opt this request in even though it is not deterministic.
By default only deterministic requests (``temperature: 0``) are cached; a route can opt in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thrifty.cache.config import CacheConfig, RouteCacheConfig
from thrifty.pipeline.context import RequestContext

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


@dataclass(frozen=True)
class Decision:
    read: bool
    write: bool
    ttl_s: float
    semantic: bool
    max_age_s: float | None
    reason: str
    verifier: str | None = None
    threshold: float | None = None

    @property
    def bypass(self) -> bool:
        return not self.read and not self.write


def route_config(cfg: CacheConfig, ctx: RequestContext) -> RouteCacheConfig:
    """The overrides for this request's route, else for the model name asked for (a model, an
    alias or ``auto``). The route is ``NAME`` of ``route:NAME``, or, for ``auto``, the route the
    router chose in the normalize stage (unset when only the LLM classifier could choose: such
    requests use the ``auto`` entry). Keys that match nothing are refused at load (thrifty.config)."""
    if ctx.route and ctx.route in cfg.routes:
        return cfg.routes[ctx.route]
    return cfg.routes.get(ctx.request.model) or RouteCacheConfig()


def _directives(ctx: RequestContext) -> tuple[set[str], float | None]:
    words: set[str] = set()
    max_age: float | None = None
    for name in ("x-thrifty-cache", "cache-control"):
        raw = ctx.headers.get(name, "").lower()
        for part in raw.split(","):
            part = part.strip()
            m = _MAX_AGE.fullmatch(part)
            if m:
                age = float(m.group(1))
                max_age = age if max_age is None else min(max_age, age)
            elif part:
                words.add(part)
    return words, max_age


def _is_deterministic(ctx: RequestContext) -> bool:
    temp = ctx.request.params.get("temperature")
    return isinstance(temp, int | float) and not isinstance(temp, bool) and temp == 0


def decide(cfg: CacheConfig, ctx: RequestContext) -> Decision:
    route = route_config(cfg, ctx)
    ttl = route.ttl_s or cfg.ttl_s
    semantic = route.semantic if route.semantic is not None else cfg.semantic.enabled
    verifier = route.verifier or cfg.semantic.verifier
    threshold = route.threshold if route.threshold is not None else cfg.semantic.threshold
    opt = ctx.request.options.get("cache")
    words, max_age = _directives(ctx)

    def bypass(reason: str) -> Decision:
        return Decision(False, False, ttl, False, None, reason)

    if route.enabled is False:
        return bypass("disabled for this route")
    if opt is False:
        return bypass("request option cache: false")
    if "no-store" in words:
        return bypass("no-store")
    must_be_deterministic = route.require_deterministic if route.require_deterministic is not None \
        else cfg.require_deterministic
    if must_be_deterministic and opt is not True and not _is_deterministic(ctx):
        return bypass("not deterministic (temperature is not 0)")
    read = "no-cache" not in words and max_age != 0
    return Decision(read, True, ttl, bool(semantic), max_age, "cacheable", verifier, threshold)
