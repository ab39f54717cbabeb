"""The provider interface: the one extension point for reaching an LLM.

A provider turns an OpenAI chat-completions body into an OpenAI response (``complete``) or a
stream of OpenAI chunk dicts (``stream``). It raises only ``thrifty.errors.UpstreamError``
subclasses: foreign exceptions (aiohttp, sockets, JSON) are mapped at the provider's boundary.
Retries, fallbacks and pricing are not the provider's job (see pipeline/caller.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Provider(Protocol):
    name: str

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming chat completion; returns the provider's JSON response."""
        ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streaming chat completion; yields each SSE chunk as a dict, ends at [DONE]."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...
