"""A replay upstream: answers a known prompt for a known model with what that model really said.

The index is built from outcome data (``thrifty.evaluation.dataset``) with the scores stripped,
so nothing served through it can leak whether an answer was right. A request is keyed by its
user text (whitespace normalised) and model name; the response carries the recorded answer,
token usage counted with the offline tokenizer, and the recorded dollars as ``usage.cost``
(which the pipeline's accounting prefers over any price table). An unknown prompt or model is
a 404 ``NotFoundError``, the way a real API rejects an unknown model.

When several rows share the same prompt, ``metadata.eval_id`` ("<file>#<row>", sent by
``thrifty eval``) picks the row; without it the first row answers.

Used in-process (``ReplayProvider``, no HTTP) and over HTTP (``thrifty replay-upstream``).
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from thrifty.errors import InvalidRequestError, NotFoundError, UpstreamStatusError
from thrifty.evaluation.dataset import Item, OutcomeSet
from thrifty.providers.function import InProcessProvider
from thrifty.tokens import content_text, count_messages, count_text

EVAL_ID_KEY = "eval_id"


def normalise(text: str) -> str:
    return " ".join(text.split())


def request_text(messages: list[dict[str, Any]]) -> str:
    """The key text of a request: its user messages' text, joined, whitespace normalised."""
    return normalise("\n".join(content_text(m.get("content")) for m in messages if m.get("role") == "user"))


def eval_id(item: Item) -> str:
    return f"{item.file}#{item.row}"


@lru_cache(maxsize=65536)
def _count(text: str) -> int:
    return count_text(text)


class ReplayIndex:
    """Recorded outcomes by (prompt text, model); never holds scores."""

    def __init__(self, outcomes: OutcomeSet) -> None:
        self.models = list(outcomes.models)
        self._by_text: dict[str, list[Item]] = {}
        self._by_id: dict[str, Item] = {}
        for item in outcomes:
            blind = item.blind()
            self._by_text.setdefault(normalise(item.prompt), []).append(blind)
            self._by_id[eval_id(item)] = blind

        self._prompt_counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def _prompt_tokens(self, item: Item) -> int:
        # Counted once per prompt: every model called on it shares the count.
        key = eval_id(item)
        if key not in self._prompt_counts:
            self._prompt_counts[key] = count_messages(item.messages)
        return self._prompt_counts[key]

    def find(self, body: dict[str, Any]) -> Item:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty array.", param="messages")
        metadata = body.get("metadata")
        wanted = metadata.get(EVAL_ID_KEY) if isinstance(metadata, dict) else None
        rows = self._by_text.get(request_text(messages))
        if not rows:
            raise NotFoundError("This replay upstream has no recorded outcome for this prompt.",
                                code="prompt_not_found")
        if wanted and len(rows) > 1:
            for item in rows:
                if eval_id(item) == wanted:
                    return item
        return rows[0]

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The recorded chat completion for ``body`` (raises ``NotFoundError`` if none)."""
        model = body.get("model")
        item = self.find(body)
        outcome = item.outcomes.get(model) if isinstance(model, str) else None
        if outcome is None:
            raise NotFoundError(f"The model '{model}' has no recorded outcome for this prompt.",
                                param="model", code="model_not_found")
        if outcome.usage:
            prompt_tokens = int(outcome.usage.get("prompt_tokens") or 0)
            completion_tokens = int(outcome.usage.get("completion_tokens") or 0)
        else:
            prompt_tokens = self._prompt_tokens(item)
            completion_tokens = _count(outcome.response)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if outcome.cost is not None:
            usage["cost"] = outcome.cost
        return {
            "id": f"chatcmpl-replay-{item.row}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.response},
                         "finish_reason": "stop"}],
            "usage": usage,
        }


class ReplayProvider(InProcessProvider):
    """The replay as an in-process ``Provider`` (no HTTP): the fast path of ``thrifty eval``."""

    def __init__(self, index: ReplayIndex, name: str = "replay") -> None:
        self.name = name
        self.index = index

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.index.complete(body)
        except NotFoundError as exc:
            raise _as_upstream(exc) from None


def _as_upstream(exc: NotFoundError) -> UpstreamStatusError:
    """What an HTTP provider raises for the replay's 404: a non-retryable upstream status error."""
    return UpstreamStatusError(f"replay: upstream returned HTTP 404: {exc.message}", status=404,
                               body=exc.to_openai())
