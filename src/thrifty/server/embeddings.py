"""``POST /v1/embeddings``: a passthrough to the model's provider, authenticated and recorded.

RAG apps call ``client.embeddings.create`` on the same client (the same base_url) as chat, so
thrifty serves it rather than making them keep a second client. Nothing is routed, cached or
compressed: the request goes to the catalog model asked for (aliases resolve; ``auto`` and
routes pick chat models, so they are unknown here), with its upstream name, and the provider's
JSON comes back unchanged (its ``model`` field is the upstream name; ``x-thrifty-model`` names
the catalog model). No fallbacks: another model's vectors live in another space, and mixing
them into one index would break retrieval silently. Retries follow the provider's policy.

It is one ``Endpoint`` of the passthrough machinery (server/passthrough.py), like the Responses
and legacy completions APIs: the chat pipeline's ledger, deadline and key-budget stages around
one call stage, so each request that gets past authentication leaves exactly one ``requests``
row (strategy ``embeddings``; its cost is the prompt tokens at the model's input price, and its
baseline the same cost: no saving is claimed) plus one ``attempts`` row per upstream call,
failures included, and observers (metrics, request log) see it like any other request. What is
its own: the body check, and pricing (no output tokens, an offline count of the inputs when the
provider reports none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from thrifty.cost import call_cost
from thrifty.errors import InvalidRequestError, ThriftyError
from thrifty.pipeline.context import Attempt
from thrifty.server.passthrough import Endpoint, StreamState, passthrough_routes
from thrifty.tokens import count_text
from thrifty.types import ChatRequest, Usage, body_model

if TYPE_CHECKING:
    from thrifty.catalog import ModelInfo
    from thrifty.gateway import Gateway
    from thrifty.providers.raw_http import SSEEvent

STRATEGY = "embeddings"


def validate(body: Any) -> tuple[str, Any]:
    """(model, input) of an embeddings body; ``InvalidRequestError`` naming the bad field.
    Every other field (dimensions, encoding_format, user...) is the provider's to judge."""
    model = body_model(body)
    value = body.get("input")
    if not valid_input(value):
        raise InvalidRequestError(
            "'input' is required: a non-empty string, an array of non-empty strings, an array of token ids "
            "or an array of token-id arrays.", param="input")
    return model, value


def valid_input(value: Any) -> bool:
    def tokens(v: Any) -> bool:  # bool is an int subclass, and never a token id
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    return (all(isinstance(v, str) and v for v in value) or tokens(value)
            or all(tokens(v) for v in value))


def count_input(value: Any) -> int:
    """Offline token count of a validated ``input`` (for a provider that sends no usage)."""
    if isinstance(value, str):
        return count_text(value)
    if all(isinstance(v, int) for v in value):
        return len(value)
    return sum(count_text(v) if isinstance(v, str) else len(v) for v in value)


class EmbeddingsEndpoint(Endpoint):
    name = STRATEGY
    path = "/embeddings"
    answer = "data"
    essential = frozenset({"model", "input"})

    def parse(self, body: Any) -> ChatRequest:
        model, value = validate(body)
        # The chat request a key check, the budget and the request log read: the model, and the
        # text inputs as one user message each (so a budget's estimate counts them). Never a
        # stream, whatever the body says: the endpoint has none.
        texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
        return ChatRequest(model=model, messages=[{"role": "user", "content": t} for t in texts],
                           params={"max_tokens": 1})  # no output tokens; the estimate needs >= 1

    def upstream_body(self, body: dict[str, Any], upstream_model: str, compat: Any) -> dict[str, Any]:
        # Provider compat rewrites chat parameters; an embeddings body goes as sent.
        return {**body, "model": upstream_model}

    def price(self, attempt: Attempt, info: ModelInfo, request: ChatRequest, body: dict[str, Any],
              raw_usage: Any, text: str, service_tier: Any = None) -> None:
        usage = Usage.from_openai(raw_usage)
        reported = (isinstance(raw_usage, dict) and isinstance(raw_usage.get("prompt_tokens"), int)
                    and raw_usage["prompt_tokens"] > 0)
        # Embeddings have no output tokens, whatever total_tokens - prompt_tokens suggests.
        usage = Usage(prompt_tokens=usage.prompt_tokens if reported else count_input(body["input"]),
                      cost=usage.cost)
        cost = call_cost(usage, info.price)
        attempt.usage, attempt.cost_usd = usage, cost.usd
        attempt.cost_source = "estimated" if not reported and cost.source == "computed" else cost.source

    def answer_text(self, response: dict[str, Any]) -> str:
        return ""  # vectors bill nothing as output

    def watch(self, event: SSEEvent, state: StreamState) -> None:  # pragma: no cover - never streamed
        raise AssertionError("embeddings are never streamed")

    def error_event(self, exc: ThriftyError) -> bytes:  # pragma: no cover - never streamed
        raise AssertionError("embeddings are never streamed")


def embeddings_routes(gateway: Gateway) -> list[Route]:
    """``POST /v1/embeddings`` and ``POST /embeddings``."""
    return passthrough_routes(gateway, EmbeddingsEndpoint())
