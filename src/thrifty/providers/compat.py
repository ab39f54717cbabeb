"""Per-provider adjustments to the chat body, for servers that speak most of OpenAI's protocol.

Clients send what the OpenAI API accepts today: a ``developer`` role (o-series and newer
models), ``max_completion_tokens``, ``store``, ``metadata``... Many OpenAI-compatible servers
(older vLLM and Ollama builds, some hosted APIs) reject what they do not know with a 400, so
one client could not reach every provider through the gateway. A provider's ``compat`` block
(``providers.NAME.compat`` in the config) says what to change before its calls:

- ``developer_role: system``: ``developer`` messages are sent as ``system`` messages;
- ``max_tokens_field: max_tokens`` (or ``max_completion_tokens``): the output limit is sent under
  that name whichever the client used;
- ``drop_params: [store, metadata, ...]``: these top-level fields are removed.

``responses: chat`` is about another endpoint: the provider has no ``/responses`` (DeepSeek,
Mistral, llama.cpp...), so a Responses API request naming one of its models is translated to a
chat completion and served by the chat pipeline, as ``auto`` is (server/responses_routed.py),
rather than passed through to a 404; ``native`` (the default) passes it through.

The default changes nothing. The body the client sent is never modified (a copy is made).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What a chat call cannot do without: dropping one would send a different request.
_ESSENTIAL = frozenset({"model", "messages", "stream"})
_LIMITS = ("max_tokens", "max_completion_tokens")


class CompatConfig(BaseModel):
    """``providers.NAME.compat``: what this provider's server does not accept."""

    model_config = ConfigDict(extra="forbid")

    developer_role: Literal["developer", "system"] = "developer"
    max_tokens_field: Literal["as_sent", "max_tokens", "max_completion_tokens"] = "as_sent"
    drop_params: list[str] = Field(default_factory=list)
    # How POST /v1/responses reaches this provider's models (not a change to the chat body, so
    # `changes_nothing` does not read it).
    responses: Literal["native", "chat"] = "native"

    @field_validator("drop_params")
    @classmethod
    def _droppable(cls, v: list[str]) -> list[str]:
        essential = sorted(set(v) & _ESSENTIAL)
        if essential:
            raise ValueError(f"cannot drop {', '.join(essential)}: a chat call needs it")
        return v

    @property
    def changes_nothing(self) -> bool:
        return self.developer_role == "developer" and self.max_tokens_field == "as_sent" and not self.drop_params


def adapt(body: dict[str, Any], compat: CompatConfig) -> dict[str, Any]:
    """``body`` as this provider accepts it (``body`` itself when nothing is to change)."""
    if compat.changes_nothing:
        return body
    out = {k: v for k, v in body.items() if k not in compat.drop_params}
    if compat.developer_role == "system" and isinstance(out.get("messages"), list):
        out["messages"] = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m
                           for m in out["messages"]]
    if compat.max_tokens_field != "as_sent":
        other = _LIMITS[1] if compat.max_tokens_field == _LIMITS[0] else _LIMITS[0]
        if other in out:
            value = out.pop(other)
            out.setdefault(compat.max_tokens_field, value)
    return out
