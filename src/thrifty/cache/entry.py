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
        return frame(MAGIC, json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode())


def frame(magic: bytes, payload: bytes) -> bytes:
    """``payload`` as stored: ``magic``, a checksum of the payload, a newline, the payload. The
    checksum turns a torn or corrupted value into a miss instead of a wrong answer."""
    return magic + hashlib.sha256(payload).hexdigest()[:32].encode() + b"\n" + payload


def unframe(magic: bytes, raw: bytes | None) -> bytes | None:
    """The payload ``frame`` stored in ``raw``; None when absent, of another kind or corrupt."""
    if not raw or not raw.startswith(magic):
        return None
    head, sep, payload = raw[len(magic):].partition(b"\n")
    if not sep or hashlib.sha256(payload).hexdigest()[:32].encode() != head:
        return None
    return payload


def decode_entry(raw: bytes | None, *, key: str, tenant: str, now: float) -> CacheEntry | None:
    """The entry stored under ``key`` for ``tenant``, or None if absent, expired, corrupt or foreign."""
    payload = unframe(MAGIC, raw)
    if payload is None:
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
