"""The per-request state that flows through the pipeline stages."""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from thrifty.types import ChatRequest, Usage

# Request ids need to be unique, not secret: a PRNG seeded once from the OS is enough, and
# avoids an os.urandom system call per request (measured at ~0.15 ms each on these VMs).
_ids = random.Random(os.urandom(16))


def new_request_id() -> str:
    """``req_`` + 12 hex digits of the time in ms + 12 random hex digits, so ids sort by time.

    Why time first: the ledger's primary keys are these ids, and random ones put each insert at
    a random place of the indexes, dirtying a page per row at commit. Time-ordered ids append at
    the end: the SQLite writer's CPU per request is about half on an empty ledger and a third on
    a grown one (bench/ledger_ids.py, docs/benchmarks.md). 48 random bits per millisecond keep
    ids from several gateway instances apart.
    """
    return f"req_{int(time.time() * 1000):012x}{_ids.getrandbits(48):012x}"


@dataclass
class Attempt:
    """One upstream call made for a request (answers, retries, fallbacks, judges, compressions)."""

    model: str
    provider: str
    started: float
    latency_ms: float = 0.0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    cost_source: str = "unknown"
    status: str = "ok"  # ok | error
    error: str | None = None
    tier: str | None = None
    purpose: str = "answer"  # answer | judge | classify | compress | summarize
    score: float | None = None
    score_reason: str | None = None
    accepted: bool | None = None
    batch: bool = False
    # The ``service_tier`` the call was billed at (pipeline/accounting.py served_service_tier).
    service_tier: str | None = None


@dataclass
class Tier:
    """One step of a plan: a model, and the score its answer needs to be accepted."""

    model: str
    threshold: float | None = None  # None: accept whatever this tier answers


@dataclass
class Plan:
    """What the route stage decided: the tiers to try in order, and why."""

    tiers: list[Tier]
    route: str | None = None
    reason: str = ""
    scorer: Any = None  # a thrifty.scoring Scorer when the plan is a cascade
    max_cost_usd: float | None = None
    # Extra context a policy needs at call time (e.g. agreement sets, detected answer format).
    policy: Any = None

    @property
    def is_cascade(self) -> bool:
        return len(self.tiers) > 1 or self.policy is not None


@dataclass
class RequestContext:
    """Everything known about one client request while it is being served."""

    request: ChatRequest
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    wall_started: float = field(default_factory=time.time)
    key_id: str | None = None  # virtual key id, never the key itself
    tenant: str = "default"  # cache scope: the key id or a configured namespace
    headers: dict[str, str] = field(default_factory=dict)  # incoming, lower-cased names
    task: str | None = None
    route: str | None = None
    plan: Plan | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # Outcome: exactly one of `response` or `chunks` is set by the time the pipeline returns.
    response: dict[str, Any] | None = None
    chunks: AsyncIterator[dict[str, Any]] | None = None
    served_model: str | None = None
    served_tier: str | None = None
    # The ``service_tier`` the served answer was billed at (None: standard, or no answer): the
    # ledger's requests.service_tier; each attempt keeps its own.
    served_service_tier: str | None = None
    usage: Usage = field(default_factory=Usage)  # the served answer's usage
    cost_usd: float | None = None  # everything this request spent (all attempts)
    baseline_cost_usd: float | None = None
    cache_status: str | None = None  # hit | miss | bypass | None (cache not configured)
    cache_saved_usd: float = 0.0
    compression_saved_tokens: int = 0
    compression_saved_usd: float = 0.0
    strategy: str = "passthrough"  # passthrough | routing | cascade | cache | batch
    status: str = "ok"
    error: str | None = None
    error_type: str | None = None
    batch: bool = False
    response_headers: dict[str, str] = field(default_factory=dict)
    # Called once when the request is completely finished (after a stream's last chunk).
    finalizers: list[Callable[[RequestContext], Awaitable[None]]] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def spent_usd(self) -> float | None:
        """Sum of every attempt's cost; None if any attempt's cost is unknown."""
        total = 0.0
        for a in self.attempts:
            if a.cost_usd is None:
                if a.status == "ok":
                    return None
                continue
            total += a.cost_usd
        return total


Handler = Callable[[RequestContext], Awaitable[None]]
