"""The ``cache`` section of the configuration file (validated with the rest of the config).

Kept free of thrifty imports: ``thrifty.config`` imports this module to type its ``cache`` key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Nearest cached questions the verifier examines per lookup. 10, not 5: on QQP a duplicate's own
# cached question is often outranked by other near-duplicates, and with 5 the density verifier lost
# 21 of 267 duplicates it accepted pairwise (bench fold 0); 10 recovered 16 of them for ~1 ms of p99.
DEFAULT_TOP_K = 10
# How sure `cache calibrate` is that the false-hit rate meets its target (None or 0: matched on
# average; cache/verifier.allowed_false_hits).
DEFAULT_CONFIDENCE = 0.9
# The false-hit rate `cache calibrate` and `cache eval --calibrate-on` aim at unless told: 0.5% of
# non-duplicates served another question's answer.
DEFAULT_MAX_FALSE_HIT_RATE = 0.005


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SemanticConfig(_Strict):
    """The semantic cache: nearest earlier question of the same scope, served only when verified."""

    enabled: bool = False
    # An embedder spec for thrifty.embeddings.build_embedder: "lexical", "minilm", "auto", {...}.
    # None (default): the embedder the configured verifier file was calibrated with, else lexical.
    embedder: str | dict[str, Any] | None = None
    # A verifier file written by `thrifty cache calibrate`; None: the built-in rule verifier.
    verifier: str | None = None
    # Minimum verifier score to serve; None: the threshold stored in the verifier file.
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)  # cosine or probability
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=50)
    # A cheap model asked "same question?" before a semantic hit is served (costs one call).
    confirm_model: str | None = None
    # Namespaces with more vectors than this use the ANN index instead of exact numpy search
    # (exact search costs O(entries x dim): ~100 ms at 100k x 1024 on a small CPU, docs/benchmarks.md).
    ann_min_entries: int = Field(default=10_000, ge=0)
    # auto: faiss, else hnswlib, else exact search. Naming one that is not installed also falls
    # back to exact search; the cache stage warns about it once when it is built.
    ann: Literal["auto", "hnswlib", "faiss", "none"] = "auto"
    # How often an index re-reads vectors written by other gateway processes.
    refresh_s: float = Field(default=1.0, ge=0)
    # In-memory bounds of a long-running gateway: every scope (tenant, system prompt, earlier turns)
    # has its own vector index, and past these the least recently used indexes are dropped (reloaded
    # from the backend when their scope comes back). max_vectors None: twice cache.max_entries.
    max_indexes: int = Field(default=2_000, ge=1)
    max_vectors: int | None = Field(default=None, ge=1)

    @field_validator("embedder")
    @classmethod
    def _embedder(cls, spec: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        """Checked by name and options at load time, also while semantic caching is off (a typo
        would otherwise surface only the day it is turned on). Imported here: the modules import
        thrifty.config, which imports this one."""
        from thrifty.config import KeyProblems
        from thrifty.embeddings.base import embedder_problems

        problems = embedder_problems(spec)
        if problems:
            raise KeyProblems(problems)
        return spec


class RouteCacheConfig(_Strict):
    """Overrides for one route (by its name: ``route:NAME`` requests, and ``auto`` requests the
    router classifies into it before the cache runs) or one requested model name (a model, an
    alias, ``auto``); unset fields inherit. A key that is none of these is refused at load."""

    enabled: bool | None = None
    ttl_s: float | None = Field(default=None, gt=0)
    require_deterministic: bool | None = None
    semantic: bool | None = None
    verifier: str | None = None
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)


class EmbeddingsCacheConfig(_Strict):
    """The exact cache of ``POST /v1/embeddings``, per input (cache/embeddings.py). Off unless
    turned on: a provider that updates a model under the same name would otherwise mix vectors
    of two spaces in one index, with nothing to tell them apart."""

    enabled: bool = False
    ttl_s: float = Field(default=30 * 86_400.0, gt=0)  # a re-indexed corpus mostly comes back within a month


class CacheConfig(_Strict):
    enabled: bool = True
    backend: Literal["sqlite", "redis"] = "sqlite"
    path: str = "thrifty-cache.db"
    # Redis URL for the shared backend; falls back to the top-level ``redis_url``.
    redis_url: str | None = Field(default=None, repr=False)
    # Prefix separating deployments sharing one store (e.g. staging/prod). The tenant is always
    # part of every key as well; a namespace never merges tenants.
    namespace: str = "thrifty"
    ttl_s: float = Field(default=86_400.0, gt=0)
    max_entries: int = Field(default=100_000, ge=1)
    # Only cache requests with temperature 0 unless a route or the request opts in.
    require_deterministic: bool = True
    # Responses that call tools are not stored unless this is set (see docs/caching.md).
    cache_tool_calls: bool = False
    # Followers of an in-flight identical request wait at most this long for its answer.
    lock_timeout_s: float = Field(default=30.0, gt=0)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    embeddings: EmbeddingsCacheConfig = Field(default_factory=EmbeddingsCacheConfig)
    routes: dict[str, RouteCacheConfig] = Field(default_factory=dict)
