"""Per-request cache decisions: may this request read the cache, may its answer be stored, for how long.

Controls, strongest first:
- body ``"cache": false`` (or ``"thrifty": {"cache": false}``): bypass entirely;
- ``x-thrifty-cache: no-store`` / ``cache-control: no-store`` / ``pragma: no-cache``: bypass entirely;
- ``x-thrifty-cache: no-cache`` / ``cache-control: no-cache`` (or ``max-age=0``): do not read,
  store the fresh answer (a refresh);
- ``cache-control: max-age=N`` (or ``x-thrifty-cache: max-age=N``): serve only entries younger
  than N seconds;
- body ``"cache": true``: opt this request in even though it is not deterministic.
An unknown value in any of these is refused (400) rather than ignored: a client that believes it
bypassed the cache must not be served from it. ``cache-control`` directives that only concern HTTP
caches (``private``, ``no-transform``...) are accepted and ignored.
By default only deterministic requests (``temperature: 0``) are cached; a route can opt in.
Requests asking for ``logprobs`` are never cached (bypass): a stream carries them per chunk and
the cache does not replay them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thrifty.cache.config import CacheConfig, RouteCacheConfig
from thrifty.catalog import Catalog
from thrifty.errors import InvalidRequestError
from thrifty.pipeline.context import RequestContext

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")
_OURS = ("no-store", "no-cache")
# Request directives of RFC 9111 (and common extensions) that govern HTTP caches between the
# client and thrifty, not thrifty's own cache: accepted and ignored.
_HTTP_ONLY = re.compile(r"(?:public|private|no-transform|must-revalidate|proxy-revalidate|immutable|"
                        r"must-understand|max-stale(?:\s*=\s*\d+)?|min-fresh\s*=\s*\d+|s-maxage\s*=\s*\d+|"
                        r"stale-while-revalidate\s*=\s*\d+|stale-if-error\s*=\s*\d+)")
ACCEPTED = {
    "x-thrifty-cache": "no-store, no-cache, max-age=N",
    "cache-control": "no-store, no-cache, max-age=N (HTTP-only directives such as private are ignored)",
    "pragma": "no-cache",
}


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


def route_config(cfg: CacheConfig, ctx: RequestContext, catalog: Catalog | None = None) -> RouteCacheConfig:
    """The overrides for this request's route, else for the model it names. The route is
    ``NAME`` of ``route:NAME``, or, for ``auto``, the route the router chose in the normalize
    stage (unset when only the LLM classifier could choose: such requests use the ``auto``
    entry). A model's entry applies under any of its names: the name asked for first, then the
    model's own name, then its aliases (so ``routes.gpt-4o`` covers requests for its alias
    ``premium``). Keys that match nothing are refused at load (thrifty.config)."""
    if ctx.route and ctx.route in cfg.routes:
        return cfg.routes[ctx.route]
    asked = ctx.request.model
    if asked in cfg.routes:
        return cfg.routes[asked]
    info = catalog.get(asked) if catalog is not None else None
    if info is not None:
        for name in (info.name, *sorted(info.aliases)):
            if name in cfg.routes:
                return cfg.routes[name]
    return RouteCacheConfig()


def _refuse(header: str, value: str) -> InvalidRequestError:
    return InvalidRequestError(f"Unsupported {header} value {value!r}; accepted: {ACCEPTED[header]}.", param=header)


def _directives(ctx: RequestContext) -> tuple[set[str], float | None]:
    """The cache directives of the request headers; InvalidRequestError for one thrifty does not know."""
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
            elif part in _OURS:
                words.add(part)
            elif part and not (name == "cache-control" and _HTTP_ONLY.fullmatch(part)):
                raise _refuse(name, part)
    pragma = ctx.headers.get("pragma", "").strip().lower()
    if pragma == "no-cache":
        words.add("pragma")
    elif pragma:
        raise _refuse("pragma", pragma)
    return words, max_age


def _option(ctx: RequestContext) -> bool | None:
    """The body's ``cache`` option: true, false or absent; anything else is refused (a string
    "false" or a 0 used to be ignored, and the request then read the cache)."""
    opt = ctx.request.options.get("cache")
    if opt is None or isinstance(opt, bool):
        return opt
    raise InvalidRequestError(f"'cache' must be true or false, got {opt!r}.", param="cache")


def _is_deterministic(ctx: RequestContext) -> bool:
    temp = ctx.request.params.get("temperature")
    return isinstance(temp, int | float) and not isinstance(temp, bool) and temp == 0


def decide(cfg: CacheConfig, ctx: RequestContext, catalog: Catalog | None = None) -> Decision:
    route = route_config(cfg, ctx, catalog)
    ttl = route.ttl_s or cfg.ttl_s
    semantic = route.semantic if route.semantic is not None else cfg.semantic.enabled
    verifier = route.verifier or cfg.semantic.verifier
    threshold = route.threshold if route.threshold is not None else cfg.semantic.threshold
    # Checked first, so a malformed control is refused even where the cache would not be used.
    opt = _option(ctx)
    words, max_age = _directives(ctx)

    def bypass(reason: str) -> Decision:
        return Decision(False, False, ttl, False, None, reason)

    if route.enabled is False:
        return bypass("disabled for this route")
    if opt is False:
        return bypass("request option cache: false")
    if "no-store" in words:
        return bypass("no-store")
    if "pragma" in words:
        return bypass("pragma: no-cache")
    if ctx.request.params.get("logprobs") or ctx.request.params.get("top_logprobs"):
        return bypass("logprobs requested (not replayed from the cache)")
    must_be_deterministic = route.require_deterministic if route.require_deterministic is not None \
        else cfg.require_deterministic
    if must_be_deterministic and opt is not True and not _is_deterministic(ctx):
        return bypass("not deterministic (temperature is not 0)")
    read = "no-cache" not in words and max_age != 0
    return Decision(read, True, ttl, bool(semantic), max_age, "cacheable", verifier, threshold)
