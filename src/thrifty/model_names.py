"""The model family a provider's model id names, whatever a router or a fine-tune wraps it in.

Tokenizers, image rules and reasoning families are keyed by the base model (``gpt-4o-mini``),
while ids arrive as ``openai/gpt-4o-mini`` (routers prefix the vendor), ``gpt-4o-mini:nitro`` or
``deepseek-r1:free`` (OpenRouter's variants), and ``ft:gpt-4o-mini-2024-07-18:org::abc123``
(OpenAI fine-tunes: ``ft:BASE:ORG:SUFFIX:ID``). One reading of them, so that each rule does not
strip a different subset (a variant suffix once gave gpt-4o-mini's images gpt-4o's 33x lower
count).
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)
def base_model(model: str | None) -> str:
    """``model`` lower-cased, without a fine-tune wrapper, a vendor prefix or a variant suffix."""
    name = str(model or "").strip().lower()
    if name.startswith("ft:"):
        name = name[3:]
    return name.rsplit("/", 1)[-1].split(":", 1)[0]
