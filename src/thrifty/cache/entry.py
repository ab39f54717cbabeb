"""A stored answer and its on-disk encoding.

Every entry carries a checksum of its payload and the scope it was stored under: a truncated,
bit-flipped, foreign-format or foreign-scope value decodes to None, which the cache treats as a
miss (a broken entry must never become an error, nor another tenant's answer).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

MAGIC = b"TC1:"


@dataclass
class CacheEntry:
    key: str
    scope: str
    tenant: str
    model: str  # the model the client asked for
    served_model: str | None  # the model that produced the answer
    response: dict[str, Any]
    usage: dict[str, Any]
    cost_usd: float | None  # what producing the answer cost (what a hit avoids)
    baseline_cost_usd: float | None
    created: float
    expires: float
    query: str | None = None  # the question text, for semantic candidates

    def encode(self) -> bytes:
        payload = json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode()
        return MAGIC + hashlib.sha256(payload).hexdigest()[:32].encode() + b"\n" + payload


def decode_entry(raw: bytes | None, *, key: str, tenant: str, now: float) -> CacheEntry | None:
    """The entry stored under ``key`` for ``tenant``, or None if absent, expired, corrupt or foreign."""
    if not raw or not raw.startswith(MAGIC):
        return None
    head, sep, payload = raw[len(MAGIC):].partition(b"\n")
    if not sep or hashlib.sha256(payload).hexdigest()[:32].encode() != head:
        return None
    try:
        data = json.loads(payload)
        entry = CacheEntry(**data)
    except (ValueError, TypeError):
        return None
    if entry.key != key or entry.tenant != tenant or entry.expires <= now:
        return None
    if not isinstance(entry.response, dict) or not isinstance(entry.response.get("choices"), list):
        return None
    return entry
