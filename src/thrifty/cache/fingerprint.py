"""What serves a request, as a short hash in its cache key: a config change makes old answers miss.

The key names the model the client asked for; that name alone outlived config changes (a model
pointed at another upstream model or provider, a route sent to another model kept serving the
old answers for the whole TTL). So the key also carries a fingerprint of:

- a model name or alias: the catalog model it resolves to, its provider (name and base URL) and
  its upstream model name;
- ``route:NAME``, and ``auto`` once the router has chosen its route: the route name and that
  route's configuration, with the fingerprints of the models it names (every catalog model for a
  learned route that does not list its models) and a hash of the files it reads (a learned
  router, a learned scorer);
- ``auto`` whose route is not known before the cache runs (the LLM classifier decides it later):
  the whole ``routing`` section and every model;
- ``auto`` without routing: its ``default_model``.

Computed once when the cache stage is built (a gateway's configuration does not change while it
runs). Provider API keys and headers are never part of it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from thrifty.cache.keys import canonical
from thrifty.catalog import Catalog, ModelInfo
from thrifty.pipeline.context import RequestContext

ROUTE_PREFIX = "route:"


def _hash(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()[:24]


def _file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:24]
    except OSError:
        return "unreadable"


def _files(obj: Any) -> list[str]:
    """Every ``file`` value in a route's configuration (learned router, learned scorers)."""
    if isinstance(obj, dict):
        found = [v for k, v in obj.items() if k == "file" and isinstance(v, str)]
        return found + [f for k, v in obj.items() if k != "file" for f in _files(v)]
    if isinstance(obj, list):
        return [f for v in obj for f in _files(v)]
    return []


class Fingerprints:
    """The serving fingerprint of each name a request may ask for (``of``)."""

    def __init__(self, config: Any, catalog: Catalog) -> None:
        providers = getattr(config, "providers", {}) or {}

        def model_fp(info: ModelInfo) -> str:
            provider = providers.get(info.provider)
            return _hash({"model": info.name, "provider": info.provider, "upstream": info.upstream_model,
                          "base_url": getattr(provider, "base_url", None)})

        self.catalog = catalog
        self.models = {m.name: model_fp(m) for m in catalog}
        every_model = dict(sorted(self.models.items()))
        routing = getattr(config, "routing", None)
        routes = dict(getattr(routing, "routes", None) or {})
        resolve = getattr(config, "resolve_path", lambda p: p)
        self.routes: dict[str, str] = {}
        for name, route in routes.items():
            dumped = route.model_dump(mode="json")
            mine = sorted({m for _, m in routing.route_model_refs(name)}) if routing is not None else []
            named = {m: self._model(m) for m in mine}
            if route.learned is not None and not route.learned.models:
                named = every_model  # the router file may choose any of them
            files = {f: _file_hash(resolve(f)) for f in sorted(_files(dumped))}
            self.routes[name] = _hash({"route": name, "config": dumped, "models": named, "files": files})
        default = getattr(config, "default_model", None)
        if routes:
            self.unrouted = _hash({"routing": routing.model_dump(mode="json") if routing is not None else None,
                                   "routes": dict(sorted(self.routes.items())), "models": every_model})
        else:
            self.unrouted = _hash({"default_model": default, "model": self._model(default) if default else None})

    def _model(self, name: str) -> str:
        info = self.catalog.get(name)
        return self.models[info.name] if info is not None else f"unknown:{name}"

    def of(self, ctx: RequestContext) -> str:
        """The fingerprint for this request: by its route when one is known, else by the name asked for."""
        if ctx.route is not None:
            return self.routes.get(ctx.route, f"unknown-route:{ctx.route}")
        asked = ctx.request.model
        if asked == "auto":
            return self.unrouted
        if asked.startswith(ROUTE_PREFIX):
            return self.routes.get(asked.removeprefix(ROUTE_PREFIX), f"unknown-route:{asked}")
        return self._model(asked)
