"""``POST /v1/embeddings``: a passthrough to the model's provider, authenticated and recorded.

RAG apps call ``client.embeddings.create`` on the same client (the same base_url) as chat, so
thrifty serves it rather than making them keep a second client. Nothing is routed or
compressed, and nothing is cached unless ``cache.embeddings`` is on (then per input:
``EmbeddingsCacheStage`` below, cache/embeddings.py): the request goes to the catalog model asked
for (aliases resolve; ``auto`` and routes pick chat models, so they are unknown here), with its
upstream name, and the provider's JSON comes back unchanged (its ``model`` field is the upstream
name; ``x-thrifty-model`` names the catalog model). No fallbacks: another model's vectors live
in another space, and mixing them into one index would break retrieval silently. Retries follow the provider's policy.

It is one ``Endpoint`` of the passthrough machinery (server/passthrough.py), like the Responses
and legacy completions APIs: the chat pipeline's ledger, deadline and key-budget stages around
one call stage, so each request that gets past authentication leaves exactly one ``requests``
row (strategy ``embeddings``; its cost is the prompt tokens at the model's input price, and its
baseline the same cost plus, with the cache, the cached inputs at that price) plus one
``attempts`` row per upstream call (none on a full cache hit), failures included, and observers
(metrics, request log) see it like any other request. What is its own: the body check, and
pricing (no output tokens, an offline count of the inputs when the provider reports none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from thrifty.cache.embeddings import (
    EmbeddingsCache,
    Stored,
    answer_items,
    decide,
    input_key,
    items_of,
    key_scope,
)
from thrifty.cache.stage import HEADER
from thrifty.cost import call_cost
from thrifty.errors import InvalidRequestError, ThriftyError, UpstreamProtocolError
from thrifty.pipeline.context import Attempt, Handler, RequestContext
from thrifty.server.passthrough import _BODY, Endpoint, StreamState, passthrough_routes, request_body
from thrifty.tokens import count_text
from thrifty.types import ChatRequest, Usage, body_model, body_options

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
    return sum(count_one(item) for item in items_of(value))


def count_one(item: str | list[int]) -> int:
    """Offline token count of one input: a string's tokens, or a token-id array's length."""
    return count_text(item) if isinstance(item, str) else len(item)


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
                           params={"max_tokens": 1},  # no output tokens; the estimate needs >= 1
                           options=body_options(body))

    def upstream_body(self, body: dict[str, Any], upstream_model: str, compat: Any) -> dict[str, Any]:
        # Provider compat rewrites chat parameters; an embeddings body goes as sent, but for
        # thrifty's own keys (``cache``, ``thrifty``), which no provider knows.
        return super().upstream_body(body, upstream_model, None)

    def stages(self, gateway: Gateway) -> list[Any]:
        from thrifty.cache.build import build_embeddings_cache

        cache = build_embeddings_cache(gateway.config, gateway.cache_stage)
        return [EmbeddingsCacheStage(gateway, cache)] if cache is not None else []

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


class EmbeddingsCacheStage:
    """Per-input exact cache around the upstream call (cache/embeddings.py): every input is
    looked up; all found: answered here with no call; some: one call with only the missing ones
    (in order), merged back so ``data[i].index`` and order are the client's. ``usage`` is what
    the call reported (0 on a full hit); the row's cost is the call's and its baseline adds the
    cached inputs at the model's input price (an offline count), which is also its
    ``cache_saved_usd``. A failed call stores nothing and fails the request as without the cache.
    A missing input that another request of this process is sending is waited for instead
    (``EmbeddingsCache.join``): served from its store, it counts as cached, as it would later."""

    def __init__(self, gateway: Gateway, cache: EmbeddingsCache) -> None:
        self.gateway = gateway
        self.cache = cache

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        info = self.gateway.catalog.get(ctx.request.model)
        decision = decide(ctx)
        if info is None or decision.bypass:
            if info is not None:
                self._status(ctx, "bypass")
            await call_next(ctx)  # an unknown model is refused by the call stage, as without a cache
            return
        body = request_body(ctx)
        items = items_of(body["input"])
        provider = self.gateway.config.providers.get(info.provider)
        scope = key_scope(namespace=self.cache.namespace, tenant=ctx.tenant, info=info,
                          base_url=getattr(provider, "base_url", None), body=body)
        keys = [input_key(scope, item) for item in items]
        found: list[Stored | None] = [None] * len(items)
        if decision.read:
            found = await self.cache.lookup(keys, ctx.tenant, decision.max_age_s)
        # Each missing input goes upstream once, however often the batch repeats it (RAG chunks
        # share boilerplate): its vector answers every place it appears, and is stored once.
        todo = {keys[i]: items[i] for i, hit in enumerate(found) if hit is None}
        # An input another request of this process is sending now is waited for and read from
        # the store, not sent again (an indexing job's workers send the same chunks at once).
        served, flight = await self.cache.join(todo, ctx.tenant, decision.max_age_s, decision.read)
        found = [hit if hit is not None else served.get(key) for key, hit in zip(keys, found, strict=True)]
        todo = {key: item for key, item in todo.items() if key not in served}
        stored = False
        try:
            stored = await self._answer(ctx, call_next, info, body, items, keys, found, todo)
        finally:
            # Whatever happened (a failure, a cancelled call), the requests waiting on these
            # inputs are released at once: they read the store, or send the inputs themselves.
            self.cache.flights.finish_many(todo, flight, stored)

    async def _answer(self, ctx: RequestContext, call_next: Handler, info: ModelInfo, body: dict[str, Any],
                      items: list[Any], keys: list[str], found: list[Stored | None], todo: dict[str, Any]) -> bool:
        """Serve the cached inputs and send ``todo`` (the missing ones) in one call; True once the
        new vectors are stored."""
        cached_usd = self._cached_usd(info, sum(e.tokens for e in found if e is not None))
        if not todo:
            self._serve(ctx, info, found, cached_usd)
            return False
        whole = len(todo) == len(items)  # nothing cached, nothing repeated: the body goes as sent
        if not whole:
            # Only the missing inputs go upstream (their count and price too: the call stage
            # prices this body), in the client's order.
            ctx.scratch[_BODY] = {**body, "input": list(todo.values())}
        self._status(ctx, "miss" if all(hit is None for hit in found) else "partial")
        try:
            await call_next(ctx)
        finally:
            ctx.scratch[_BODY] = body
        if ctx.status != "ok":
            return False
        elements = answer_items(ctx.response, len(todo))
        if elements is None:
            if not whole:
                raise UpstreamProtocolError(f"{info.provider}: the embeddings answer does not hold one vector per "
                                            "input, so it cannot be merged with the cached ones")
            return False  # a whole miss passes through as the provider sent it, and is not stored
        tokens = {key: count_one(item) for key, item in todo.items()}
        if not whole:
            assert isinstance(ctx.response, dict)
            answered = dict(zip(todo, elements, strict=True))
            ctx.response = {**ctx.response, "data": _indexed(
                [hit.item if hit is not None else answered[key] for key, hit in zip(keys, found, strict=True)])}
            # Saved: the cached inputs, and the repeats of the sent ones (each would have been paid).
            repeats = sum(tokens[key] for key, hit in zip(keys, found, strict=True) if hit is None) - sum(tokens.values())
            saved_usd = self._cached_usd(info, sum(e.tokens for e in found if e is not None) + repeats)
            if ctx.baseline_cost_usd is not None:
                ctx.baseline_cost_usd = ctx.baseline_cost_usd + saved_usd if saved_usd is not None else None
            ctx.cache_saved_usd = saved_usd or 0.0
        answer_model = ctx.response.get("model") if isinstance(ctx.response, dict) else None
        return await self.cache.store(ctx.tenant, info.name,
                                      answer_model if isinstance(answer_model, str) else info.upstream_model,
                                      [(key, e, tokens[key]) for key, e in zip(todo, elements, strict=True)]) > 0

    @staticmethod
    def _status(ctx: RequestContext, status: str) -> None:
        ctx.cache_status = status
        ctx.response_headers[HEADER] = status

    @staticmethod
    def _cached_usd(info: ModelInfo, tokens: int) -> float | None:
        """``tokens`` input tokens not sent upstream at the model's input price (None: no price);
        the token counts were made offline when the entries were stored."""
        if not tokens:
            return 0.0
        return call_cost(Usage(prompt_tokens=tokens), info.price).usd

    def _serve(self, ctx: RequestContext, info: ModelInfo, found: list[Stored | None], cached_usd: float | None) -> None:
        """A full hit: the answer from the cache, no upstream call, cost 0."""
        entries = [e for e in found if e is not None]
        ctx.response = {"object": "list", "data": _indexed([e.item for e in entries]), "model": entries[0].model,
                        "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        ctx.usage = Usage()
        ctx.cost_usd = 0.0
        ctx.baseline_cost_usd = cached_usd
        ctx.cache_saved_usd = cached_usd or 0.0
        ctx.served_model, ctx.served_tier = info.name, info.tier
        self._status(ctx, "hit")


def _indexed(items: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """``data`` elements numbered by their place in the client's input (``index`` after ``object``,
    as providers write it)."""
    out = []
    for i, item in enumerate(items):
        assert item is not None
        out.append({"object": item.get("object", "embedding"), "index": i,
                    **{k: v for k, v in item.items() if k != "object"}})
    return out


def embeddings_routes(gateway: Gateway) -> list[Route]:
    """``POST /v1/embeddings`` and ``POST /embeddings``."""
    return passthrough_routes(gateway, EmbeddingsEndpoint())
