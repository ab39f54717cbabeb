"""Deterministic randomness: every "random" choice of the mock is a hash of the request.

The same (seed, model, messages, answer-affecting params) always yields the same key, and every
decision derived from the key (answer length, wrong option, logprobs, tool arguments) is a
salted hash of it, so answers are reproducible across runs, processes and machines (no
``random`` module state, no ``hash()`` randomisation).
"""

from __future__ import annotations

import hashlib
from typing import Any

from thrifty import fastjson

# Request fields that change the answer text (shape-only fields like ``stream`` or ``n`` do not).
_ANSWER_PARAMS = ("seed", "temperature", "top_p", "response_format", "tools", "tool_choice")


def request_key(seed: int, model: str, body: dict[str, Any]) -> bytes:
    """16-byte key of everything that determines the answer to ``body``."""
    material: dict[str, Any] = {"s": seed, "m": model, "msgs": body.get("messages")}
    for name in _ANSWER_PARAMS:
        if body.get(name) is not None:
            material[name] = body[name]
    try:
        blob = fastjson.dumps(_sorted(material))
    except (TypeError, ValueError):  # exotic values orjson rejects (huge ints): fall back to repr
        blob = repr(material).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=16).digest()


def _sorted(value: Any) -> Any:
    # Key order in the client's JSON must not change the answer.
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def sub_key(key: bytes, salt: str | int) -> bytes:
    """A derived key, e.g. per choice index."""
    return hashlib.blake2b(key + str(salt).encode(), digest_size=16).digest()


def unit(key: bytes, salt: str) -> float:
    """A float in [0, 1) determined by ``key`` and ``salt``."""
    h = hashlib.blake2b(key + salt.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def pick(key: bytes, salt: str, low: int, high: int) -> int:
    """An int in [low, high] determined by ``key`` and ``salt``."""
    if high <= low:
        return low
    h = hashlib.blake2b(key + salt.encode(), digest_size=8).digest()
    return low + int.from_bytes(h, "big") % (high - low + 1)


def stream(key: bytes, salt: str, length: int) -> bytes:
    """``length`` deterministic bytes (for choosing many words at once)."""
    return hashlib.shake_128(key + salt.encode()).digest(length)
