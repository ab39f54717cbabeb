"""Calling a model: retries with backoff, fallbacks, pricing, and an Attempt for every try.

Retries happen on connection errors, 429s and 5xx, with exponential backoff and full jitter,
waiting at least what Retry-After asks (when it asks for more than ``backoff_max_s`` we move to
the fallback models instead of stalling the client). When a model's retries are exhausted its
configured fallbacks are tried in order, unless the request says ``"thrifty": {"fallbacks": false}``
(a caller that needs that model's own answer or its own error, e.g. ``thrifty outcomes collect``).
Every try lands in ``ctx.attempts`` and so in the ledger.
A stream is retried only until its first chunk: ``stream`` waits for that chunk inside the retry
loop, so a failure before it (cannot connect, 5xx, 429, a body cut short: providers mark these
retryable) is retried and then falls back like a non-streaming call; a failure after it reaches
the client as the stream's error, since the client already has part of the answer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from thrifty.catalog import Catalog, ModelInfo
from thrifty.config import ProviderConfig
from thrifty.errors import InvalidRequestError, NotFoundError, UpstreamError
from thrifty.internal_calls import MAX_LESSONS
from thrifty.pipeline.accounting import call_texts, price_attempt
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.pipeline.routed_params import adapted, chosen, learn_refusal
from thrifty.providers.base import Provider
from thrifty.streaming import close_below
from thrifty.types import ChatRequest

T = TypeVar("T")


def fallbacks_allowed(request: ChatRequest) -> bool:
    """Whether a model's configured ``fallbacks`` may answer for it in this request: not with
    ``"thrifty": {"fallbacks": false}`` (docs/configuration.md, ``models.NAME.fallbacks``)."""
    allowed = request.options.get("fallbacks", True)
    if not isinstance(allowed, bool):
        raise InvalidRequestError(f"'thrifty.fallbacks' must be true or false, got {allowed!r}.",
                                  param="thrifty.fallbacks")
    return allowed


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0

    @classmethod
    def from_provider(cls, cfg: ProviderConfig | None) -> RetryPolicy:
        if cfg is None:
            return cls()
        return cls(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s)

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0-based); None means give up now."""
        if retry_after is not None and retry_after > self.backoff_max_s:
            return None
        backoff = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * (2**attempt)))
        return max(backoff, retry_after or 0.0)

    def wait_after(self, attempt: int, exc: UpstreamError) -> float | None:
        """Seconds to wait after try number ``attempt`` (0-based) failed with ``exc`` before the
        next one; None when there is no next one (not retryable, retries used up, or a
        ``Retry-After`` longer than the backoff cap)."""
        if not exc.retryable or attempt >= self.max_retries:
            return None
        return self.delay(attempt, exc.retry_after)


# For a provider the caller was given no policy of (a caller built in code): made once, not
# as the default argument of every call's lookup.
_DEFAULT_RETRY = RetryPolicy()


class ModelCaller:
    """Turns "call model M with this request" into provider calls, with every attempt priced."""

    def __init__(
        self,
        catalog: Catalog,
        providers: dict[str, Provider],
        retry_policies: dict[str, RetryPolicy] | None = None,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.retry_policies = retry_policies or {}
        self._chains: dict[str, list[ModelInfo]] = {}

    def retry_policy(self, provider: str) -> RetryPolicy:
        """``provider``'s retry policy (the default for one the caller was given none of)."""
        return self.retry_policies.get(provider, _DEFAULT_RETRY)

    def model(self, name: str) -> ModelInfo:
        info = self.catalog.get(name)
        if info is None:
            raise NotFoundError(f"The model '{name}' does not exist in this gateway's catalog.", param="model")
        return info

    def _chain(self, name: str) -> list[ModelInfo]:
        """The model and its fallbacks, in order (memoised: the catalog does not change)."""
        cached = self._chains.get(name)
        if cached is not None:
            return cached
        first = self.model(name)
        chain = [first]
        for fb in first.fallbacks:
            info = self.catalog.get(fb)
            if info is not None and all(info.name != c.name for c in chain):
                chain.append(info)
        self._chains[name] = chain
        return chain

    async def complete(
        self,
        ctx: RequestContext,
        model_name: str,
        request: ChatRequest | Callable[[ModelInfo], ChatRequest] | None = None,
        *,
        purpose: str = "answer",
        batch: bool = False,
    ) -> tuple[dict[str, Any], Attempt]:
        """A non-streaming completion from ``model_name`` (or its fallbacks). ``request`` may be
        built per model tried: thrifty's own calls are shaped for the model that gets them
        (internal_calls), and a fallback may refuse what the model asked takes. A client's request
        is fitted to a model thrifty chose (``routed_params``)."""
        tried: list[tuple[ModelInfo, ChatRequest]] = []

        def request_for(info: ModelInfo) -> ChatRequest:
            req = request(info) if callable(request) else (request or ctx.request)
            return self._fitted(info, req, tried)

        async def once(provider: Provider, info: ModelInfo, req: ChatRequest, attempt: Attempt,
                       t0: float) -> dict[str, Any]:
            response = await provider.complete(req.to_body(info.upstream_model, stream=False))
            attempt.latency_ms = (time.perf_counter() - t0) * 1000
            self._price(attempt, info, req, response, batch)
            return response

        async def run(name: str) -> tuple[dict[str, Any], Attempt]:
            return await self._with_retries(ctx, name, once, request_for, purpose=purpose, batch=batch)

        return await self._learning(model_name, run, tried)

    async def stream(
        self, ctx: RequestContext, model_name: str, request: ChatRequest | None = None
    ) -> tuple[AsyncIterator[dict[str, Any]], Attempt]:
        """Open a stream from ``model_name`` (or its fallbacks): retried until its first chunk."""
        asked = request or ctx.request
        tried: list[tuple[ModelInfo, ChatRequest]] = []

        async def once(
            provider: Provider, info: ModelInfo, req: ChatRequest, attempt: Attempt, t0: float
        ) -> AsyncIterator[dict[str, Any]]:
            it = provider.stream(req.to_body(info.upstream_model, stream=True)).__aiter__()
            try:
                first: dict[str, Any] | None = await it.__anext__()
            except StopAsyncIteration:
                first = None
            return self._priced_stream(attempt, info, req, first, it, t0)

        async def run(name: str) -> tuple[AsyncIterator[dict[str, Any]], Attempt]:
            return await self._with_retries(ctx, name, once, lambda info: self._fitted(info, asked, tried))

        return await self._learning(model_name, run, tried)

    def _fitted(self, info: ModelInfo, req: ChatRequest, tried: list[tuple[ModelInfo, ChatRequest]]) -> ChatRequest:
        """``req`` as ``info`` takes it when thrifty chose ``info`` (``routed_params``; thrifty's own
        calls name the model they are sent to, so they pass unchanged), noted in ``tried``."""
        fitted = adapted(self.catalog, req, info)
        tried.append((info, fitted))
        return fitted

    async def _learning(self, model_name: str, run: Callable[[str], Awaitable[tuple[T, Attempt]]],
                        tried: list[tuple[ModelInfo, ChatRequest]]) -> tuple[T, Attempt]:
        """``run`` on ``model_name``; when a model thrifty chose refused a parameter the call can do
        without (a 400 naming it), learned for that model, ``run`` once more on it without: up to
        ``MAX_LESSONS`` times, as OpenAI names one refused parameter per 400."""
        name = model_name
        for lesson in range(MAX_LESSONS + 1):
            try:
                return await run(name)
            except UpstreamError as exc:
                if lesson == MAX_LESSONS or not tried:
                    raise
                info, sent = tried[-1]  # a 4xx ends the chain: the last model tried refused
                if not chosen(self.catalog, sent, info) or learn_refusal(self.catalog, info.name, sent, exc) is None:
                    raise
            # Sent to the model that refused, not the chain again: when a fallback refused, the
            # models before it failed already, each retry another attempt in the ledger.
            name = info.name
        raise AssertionError("unreachable: the last lesson returns or raises")

    async def _with_retries(
        self,
        ctx: RequestContext,
        model_name: str,
        once: Callable[[Provider, ModelInfo, ChatRequest, Attempt, float], Awaitable[T]],
        request_for: Callable[[ModelInfo], ChatRequest],
        *,
        purpose: str = "answer",
        batch: bool = False,
    ) -> tuple[T, Attempt]:
        """Run ``once`` on ``model_name``, retrying and then falling back; every try is an Attempt,
        sent the request ``request_for`` builds for its model (once per try: a failure's price is
        read off the very request that was sent)."""
        failures: list[str] = []
        last: UpstreamError | None = None
        # Read off the client's request (ctx.request), not ``req``: the judge, classifier and
        # compression calls made for it build requests of their own, without its options.
        chain = self._chain(model_name) if fallbacks_allowed(ctx.request) else self._chain(model_name)[:1]
        for info in chain:
            provider = self.providers[info.provider]
            policy = self.retry_policy(info.provider)
            for i in range(policy.max_retries + 1):
                attempt = Attempt(model=info.name, provider=info.provider, started=time.time(), tier=info.tier,
                                  purpose=purpose, batch=batch)
                req = request_for(info)
                t0 = time.perf_counter()
                try:
                    result = await once(provider, info, req, attempt, t0)
                except UpstreamError as exc:
                    attempt.latency_ms = (time.perf_counter() - t0) * 1000
                    if exc.billed:  # accepted, then its answer lost on the way back: billed all the same
                        self._price(attempt, info, req, {}, batch)
                    attempt.status, attempt.error = "error", exc.message
                    ctx.attempts.append(attempt)
                    failures.append(exc.message)
                    last = exc
                    wait = policy.wait_after(i, exc)
                    if wait is None:
                        break
                    await asyncio.sleep(wait)
                    continue
                except (asyncio.CancelledError, Exception) as exc:
                    # The request's deadline or its departed client ended the call in flight, or the
                    # provider failed in a way it did not translate (a bug): either way it had the
                    # prompt and may bill it. Recorded as failed at its prompt, estimated, a lower
                    # bound rather than $0 (the exception's text is not kept: it may hold a key).
                    attempt.latency_ms = (time.perf_counter() - t0) * 1000
                    self._price(attempt, info, req, {}, batch)
                    attempt.status = "error"
                    attempt.error = ("cancelled in flight (deadline or client gone)"
                                     if isinstance(exc, asyncio.CancelledError)
                                     else f"provider failed unexpectedly ({type(exc).__name__})")
                    ctx.attempts.append(attempt)
                    raise
                ctx.attempts.append(attempt)
                return result, attempt
            if last is not None and not last.retryable and last.status < 500 and last.status != 429:
                break  # a 4xx (bad parameter) fails the same way on every fallback
        assert last is not None
        last.attempts = failures
        raise last

    async def _priced_stream(
        self,
        attempt: Attempt,
        info: ModelInfo,
        req: ChatRequest,
        first: dict[str, Any] | None,
        it: AsyncIterator[dict[str, Any]],
        t0: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """Pass chunks through; price the attempt from the final usage chunk when the stream ends."""
        usage_raw: Any = None
        text_parts: list[str] = []
        service_tier: Any = None  # on every chunk (OpenAI): the tier the stream is billed at
        try:
            chunk = first
            while chunk is not None:
                if chunk.get("usage"):
                    usage_raw = chunk["usage"]
                if chunk.get("service_tier"):
                    service_tier = chunk["service_tier"]
                for choice in chunk.get("choices") or []:
                    if choice.get("usage"):  # Moonshot puts the stream's usage in its last choice
                        usage_raw = choice["usage"]
                    delta = choice.get("delta") or {}
                    for key in ("reasoning_content", "reasoning", "content"):  # all bill as output
                        if isinstance(delta.get(key), str):
                            text_parts.append(delta[key])
                    # A tool call's name and arguments bill as output too: without them a streamed
                    # call from a provider that sends no usage was recorded at 0 output tokens.
                    # (Checked first: most chunks of a stream are text, and this runs per chunk.)
                    if "tool_calls" in delta or "function_call" in delta:
                        text_parts += call_texts(delta)
                yield chunk
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    chunk = None
        except UpstreamError as exc:
            attempt.status, attempt.error = "error", exc.message
            raise
        finally:
            await close_below(it)  # the provider's connection goes back now, not when collected
            attempt.latency_ms = (time.perf_counter() - t0) * 1000
            fake = {"usage": usage_raw, "service_tier": service_tier,
                    "choices": [{"message": {"content": "".join(text_parts)}}]}
            self._price(attempt, info, req, fake, False)

    @staticmethod
    def _price(attempt: Attempt, info: ModelInfo, req: ChatRequest, response: dict[str, Any], batch: bool) -> None:
        # What the provider left out of its usage (or all of it) is counted offline: never a silent $0.
        price_attempt(attempt, response.get("usage"), req, response, info.price, batch=batch,
                      model=info.upstream_model)
