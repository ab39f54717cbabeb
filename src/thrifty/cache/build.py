"""Building the cache stage from the ``cache`` config section (None when caching is off)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from thrifty.cache.backends.base import CacheBackend
from thrifty.cache.config import CacheConfig
from thrifty.cache.embeddings import EmbeddingsCache
from thrifty.cache.fingerprint import Fingerprints
from thrifty.cache.semantic import SemanticCache
from thrifty.cache.stage import CacheStage
from thrifty.catalog import Catalog
from thrifty.config import Config
from thrifty.errors import ConfigError


def open_backend(config: Config, cfg: CacheConfig) -> CacheBackend:
    if cfg.backend == "redis":
        url = cfg.redis_url or config.redis_url
        if not url:
            raise ConfigError("cache.backend is redis but neither cache.redis_url nor redis_url is set")
        from thrifty.cache.backends.redis import RedisBackend

        return RedisBackend(url, prefix=cfg.namespace, max_entries=cfg.max_entries)
    from thrifty.cache.backends.sqlite import SQLiteBackend

    return SQLiteBackend(config.resolve_path(cfg.path), max_entries=cfg.max_entries)


def semantic_wanted(cfg: CacheConfig) -> bool:
    return cfg.semantic.enabled or any(r.semantic for r in cfg.routes.values())


def build_cache_stage(config: Config, catalog: Catalog, caller: Any = None) -> CacheStage | None:
    cfg = config.cache
    if cfg is None or not cfg.enabled:
        return None
    backend = open_backend(config, cfg)
    # Fail at start-up, not on the first request, when a configured verifier file is unusable.
    verifiers = load_verifiers(config, cfg)
    semantic = None
    if semantic_wanted(cfg):
        from thrifty.embeddings import build_embedder

        s = cfg.semantic
        spec = s.embedder if s.embedder is not None else embedder_spec(verifiers.values())
        semantic = SemanticCache(backend, build_embedder(spec), top_k=s.top_k, ann=s.ann,
                                 ann_min_entries=s.ann_min_entries, refresh_s=s.refresh_s,
                                 max_indexes=s.max_indexes,
                                 # Twice the backend's bound: an index the backend pruned is
                                 # reloaded at most once per max_entries additions.
                                 max_vectors=s.max_vectors if s.max_vectors is not None else 2 * cfg.max_entries)
    confirm = None
    if cfg.semantic.confirm_model:
        if catalog.get(cfg.semantic.confirm_model) is None:
            raise ConfigError(f"cache.semantic.confirm_model: unknown model {cfg.semantic.confirm_model!r}")
        from thrifty.cache.confirm import ConfirmModel

        confirm = ConfirmModel(caller, cfg.semantic.confirm_model)
    stage = CacheStage(cfg, backend, catalog, semantic, confirm, Fingerprints(config, catalog))
    for path, verifier in verifiers.items():
        if semantic is not None and verifier.embedder and verifier.embedder != semantic.embedder.name:
            raise ConfigError(f"cache verifier {path} was calibrated with embedder {verifier.embedder}, but "
                              f"cache.semantic.embedder is {semantic.embedder.name}: re-run `thrifty cache "
                              "calibrate` with the same embedder")
        stage._verifiers[path] = verifier
    return stage


def build_embeddings_cache(config: Config, stage: CacheStage | None) -> EmbeddingsCache | None:
    """The per-input embeddings cache (``cache.embeddings``), on the very backend object of the
    chat cache ``stage`` (one store: its namespace, eviction, clear and stats cover both); None
    when the cache, or its embeddings part, is off."""
    cfg = config.cache
    if stage is None or cfg is None or not cfg.embeddings.enabled:
        return None
    return EmbeddingsCache(cfg, stage.backend)


def load_verifiers(config: Config, cfg: CacheConfig) -> dict[str, Any]:
    """Every verifier file the cache section names (global and per route), by its configured path."""
    paths = sorted({p for p in (cfg.semantic.verifier, *(r.verifier for r in cfg.routes.values())) if p})
    return {p: _load(config.resolve_path(p)) for p in paths}


def embedder_spec(verifiers: Iterable[Any]) -> str:
    """The embedder spec when none is named: the one the verifiers were calibrated with (a verifier
    only fits the similarity scale it was fitted on), else the lexical default."""
    from thrifty.embeddings.base import spec_for_name

    names = sorted({v.embedder for v in verifiers} - {""})
    if not names:
        return "lexical"
    spec = spec_for_name(names[0])
    if len(names) > 1 or spec is None:
        raise ConfigError(f"cache verifiers were calibrated with embedder(s) {', '.join(names)}: name the "
                          "embedder (cache.semantic.embedder, or --embedder)")
    return spec


def _load(path: str) -> Any:
    from thrifty.cache.verifier import LearnedVerifier

    return LearnedVerifier.load(path)
