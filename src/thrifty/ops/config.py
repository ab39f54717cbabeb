"""The ``auth`` section of the config: virtual keys, budgets, rate limits, the admin API.

Kept free of heavy imports: thrifty.config imports it to type the section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Off: any bearer token is accepted (the token only scopes the cache). On: every request
    # needs a virtual key created with `thrifty keys create` or the admin API.
    enabled: bool = False
    # Bearer token for /admin/* and the dashboard data (/dashboard/data needs it whenever it is
    # set; unset with auth off: the data are open); the admin API is off when unset.
    admin_key: str | None = Field(default=None, repr=False)
    # HMAC secret for hashing keys; when unset a random per-install salt is stored in the
    # ledger database (shared by every instance using that database).
    key_salt: str | None = Field(default=None, repr=False)
    # Where budget and rate-limit counters live: "memory" (one instance), "redis" (shared;
    # needs redis_url), "auto" (redis when redis_url is set).
    backend: Literal["auto", "memory", "redis"] = "auto"
    redis_prefix: str = "thrifty"
    # Completion tokens reserved for a request that does not set max_tokens.
    default_completion_tokens: int = Field(default=512, ge=1)
    # Seconds a key lookup is cached per instance: a revoked key stops working within this.
    key_cache_ttl_s: float = Field(default=5.0, ge=0)
    # While the ledger database cannot be reached, a key read from it at most this many seconds
    # ago is still accepted with that record (logged); 0: refuse every request then (503).
    key_cache_stale_s: float = Field(default=300.0, ge=0)
