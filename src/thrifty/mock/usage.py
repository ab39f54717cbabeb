"""The ``usage`` object, in each provider convention cost code must handle, and a prompt cache.

Conventions (``ModelBehaviour.usage_convention``):
  * "openai": ``prompt_tokens`` includes cached tokens, reported again in
    ``prompt_tokens_details.cached_tokens``; ``completion_tokens`` includes reasoning tokens,
    reported again in ``completion_tokens_details.reasoning_tokens``.
  * "deepseek": the OpenAI fields plus ``prompt_cache_hit_tokens`` and
    ``prompt_cache_miss_tokens`` (hit + miss == prompt_tokens).
  * "openrouter": the OpenAI fields plus ``prompt_tokens_details.cache_write_tokens`` (inside
    ``prompt_tokens``), as OpenRouter reports Anthropic's prompt-cache writes: with
    ``prompt_cache``, the prompt's cacheable part (whole blocks, from ``MIN_CACHED`` tokens) not
    read from the cache is reported written to it.
With ``price`` set, ``usage.cost`` (USD, as OpenRouter reports it) is added to either.

Simulated prompt cache (``prompt_cache: true``), OpenAI's documented rule: prompts are cached
in blocks of 128 tokens once they are at least 1,024 tokens long; a request reports as cached
the longest prefix, in whole 128-token blocks and at least 1,024 tokens, that an earlier
request (to the same model) shared. The prefix is the token stream of the tools and the
messages (role and text) in order.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from typing import Any

from thrifty.mock.behaviour import ModelBehaviour
from thrifty.tokens import content_text, encoding

BLOCK = 128
MIN_CACHED = 1024


class PromptCache:
    """Remembers 128-token prefix blocks of prompts seen, per model; bounded in size."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: set[bytes] = set()
        self._max = max_entries

    def reset(self) -> None:
        self._seen.clear()

    def lookup_and_store(self, model: str, messages: list[Any], tools: Any) -> int:
        """Cached tokens for this prompt, then remember its blocks for later requests."""
        ids = encoding().encode(_prompt_text(messages, tools), disallowed_special=())
        blocks = len(ids) // BLOCK
        if blocks * BLOCK < MIN_CACHED:
            return 0
        chain = hashlib.blake2b(model.encode(), digest_size=16).digest()
        hashes = []
        for i in range(blocks):
            chunk = array("I", ids[i * BLOCK : (i + 1) * BLOCK]).tobytes()
            chain = hashlib.blake2b(chain + chunk, digest_size=16).digest()
            hashes.append(chain)
        cached = 0
        for i in range(blocks - 1, -1, -1):
            if (i + 1) * BLOCK < MIN_CACHED:
                break
            if hashes[i] in self._seen:
                cached = (i + 1) * BLOCK
                break
        if len(self._seen) + blocks > self._max:
            self._seen.clear()  # a crude eviction; the mock only needs recent prompts
        self._seen.update(hashes)
        return cached


def _prompt_text(messages: list[Any], tools: Any) -> str:
    parts = [json.dumps(tools, sort_keys=True)] if tools else []
    for m in messages:
        if isinstance(m, dict):
            parts.append(f"<{m.get('role')}>{content_text(m.get('content'))}")
    return "\n".join(parts)


def build_usage(
    behaviour: ModelBehaviour,
    prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
    cached_tokens: int,
) -> dict[str, Any]:
    """``usage`` for a response; ``completion_tokens`` already includes ``reasoning_tokens``.
    Convention ``none``: an empty object, as servers that do not count tokens send."""
    if behaviour.usage_convention == "none":
        return {}
    cached_tokens = min(cached_tokens, prompt_tokens)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if behaviour.usage_convention == "deepseek":
        usage["prompt_cache_hit_tokens"] = cached_tokens
        usage["prompt_cache_miss_tokens"] = prompt_tokens - cached_tokens
    if behaviour.usage_convention == "openrouter":
        # ``usage.cost`` (with ``price``) bills writes as input: Price has no write premium.
        usage["prompt_tokens_details"]["cache_write_tokens"] = cache_writes(behaviour, prompt_tokens, cached_tokens)
    price = behaviour.price
    if price is not None:
        cached_price = price.input if price.cached_input is None else price.cached_input
        cost = (
            (prompt_tokens - cached_tokens) * price.input
            + cached_tokens * cached_price
            + completion_tokens * price.output
        ) / 1_000_000
        usage["cost"] = round(cost, 10)
    return usage


def cache_writes(behaviour: ModelBehaviour, prompt_tokens: int, cached_tokens: int) -> int:
    """The prompt tokens an ``openrouter`` convention reports written to the prompt cache: its
    cacheable whole blocks beyond the part read (0 without a cache)."""
    if not behaviour.prompt_cache:
        return 0
    cacheable = prompt_tokens // BLOCK * BLOCK
    return max(0, cacheable - cached_tokens) if cacheable >= MIN_CACHED else 0
