"""A provider backed by a Python function: a first-class test double and in-process upstream.

``FunctionProvider(fn)`` calls ``fn(body) -> response dict`` (sync or async) for completions and
streams the result as chunks. Replay evaluation and unit tests use it to run the real pipeline
with no HTTP at all.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from thrifty.errors import UpstreamStatusError
from thrifty.streaming import response_to_chunks

Fn = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]
# ``post_json``'s double: (path, body) -> response dict, e.g. for ``/embeddings``.
PathFn = Callable[[str, dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


class InProcessProvider:
    """Base for providers that produce a whole answer in-process and stream it as chunks."""

    name: str

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        response = await self.complete(body)
        for chunk in response_to_chunks(response):
            yield chunk

    async def aclose(self) -> None:
        return None


class FunctionProvider(InProcessProvider):
    def __init__(self, fn: Fn, name: str = "function", post: PathFn | None = None) -> None:
        self.name = name
        self._fn = fn
        self._post = post
        self.calls: list[dict[str, Any]] = []

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(body)
        result = self._fn(body)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, dict)
        return result

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Like ``OpenAICompatProvider.post_json``: ``post(path, body)``, or a 404 without one."""
        if self._post is None:
            raise UpstreamStatusError(f"{self.name}: no handler for POST {path}", status=404)
        self.calls.append(body)
        result = self._post(path, body)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, dict)
        return result


def chat_response(model: str, content: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A minimal OpenAI chat.completion dict (for test doubles and replay)."""
    return {
        "id": "chatcmpl-fn",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
