"""Plausible, deterministic per-token logprobs in OpenAI's ``choices[].logprobs`` shape.

Each token of the answer (cl100k tokens) gets a log-probability in about [-1.2, 0): confident
enough to look like a real model, varied enough that scorers using mean logprob see a signal.
Alternatives in ``top_logprobs`` are other vocabulary tokens with strictly lower values.
"""

from __future__ import annotations

import math
from typing import Any

from thrifty.mock import digest
from thrifty.tokens import encoding

_VOCAB_SPAN = 50_000  # alternatives are drawn from the common part of cl100k


def _entry(token_id: int, logprob: float) -> dict[str, Any]:
    raw = encoding().decode_single_token_bytes(token_id)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def token_logprobs(text: str, key: bytes, top_n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Entries for every token of ``text``; ``offset`` numbers tokens across stream chunks."""
    entries = []
    for pos, token_id in enumerate(encoding().encode(text, disallowed_special=()), start=offset):
        u = digest.unit(key, f"lp{pos}")
        # p in (0.3, 1.0], skewed towards 1: most tokens of a fluent answer are near-certain.
        logprob = round(math.log(1.0 - 0.7 * u * u), 6)
        entry = _entry(token_id, logprob)
        tops = [dict(entry)] if top_n > 0 else []
        for k in range(1, top_n):
            alt = (token_id + digest.pick(key, f"alt{pos}.{k}", 1, _VOCAB_SPAN)) % _VOCAB_SPAN
            tops.append(_entry(alt, round(logprob - 1.5 * k - digest.unit(key, f"gap{pos}.{k}"), 6)))
        entry["top_logprobs"] = tops
        entries.append(entry)
    return entries
