"""Stage: send fewer input tokens (between normalize and cache, so the cache keys on the
compressed request and repeated prompts stay byte-identical for provider prompt caching).

For a request whose route opts in (``compression.routes``): the text of each system/developer
message (string content, or each text part of a content list) is compacted (deterministic),
then replaced by its stored compressed version when system-prompt compression is on; then the
history is trimmed to the route's budget. Tokens saved go to ``ctx.compression_saved_tokens``;
when the request is finished, a finalizer prices them at the served model's input price
(``ctx.compression_saved_usd``). A cache hit saves the whole call, so compression claims nothing
for it (neither tokens nor dollars). ``"thrifty": {"compress": false}`` in the body skips the
stage for one request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from thrifty.catalog import Catalog
from thrifty.compress import history, prompts
from thrifty.compress.compact import compact
from thrifty.compress.config import CompressionConfig, RouteCompression
from thrifty.compress.store import DocStore, open_doc_store
from thrifty.compress.system_prompt import SystemPromptCompressor
from thrifty.config import Config
from thrifty.errors import ConfigError, StorageError, UpstreamError
from thrifty.internal_calls import complete_internal
from thrifty.pipeline.caller import ModelCaller
from thrifty.pipeline.context import Handler, RequestContext
from thrifty.tokens import count_text
from thrifty.types import response_text

log = logging.getLogger("thrifty.compress")

HEADER = "x-thrifty-compressed-tokens"
INSTRUCTION_ROLES = ("system", "developer")  # developer: the o-series name for the system prompt
TEXT_PARTS = ("text", "input_text")
SHRINK_CONCURRENCY = 4


def _texts(content: Any) -> list[tuple[int | None, str]]:
    """The texts of a message ``content`` to shrink: ``(None, content)`` for a string, ``(j, text)``
    for each text part of a list. Parts are shrunk one by one, never joined: a part boundary is
    where a client puts its prompt-caching breakpoint (``cache_control``) and where a static
    prompt meets per-request text (a date, a user's name); joined, every change of that small
    part would key a new compression, and the breakpoint would have nowhere to go. One by one,
    the long static part is compressed once (under the key its text alone gives, the same as
    the same text sent as a string) and the short dynamic part stays under ``min_tokens``."""
    if isinstance(content, str):
        return [(None, content)]
    if not isinstance(content, list):
        return []
    return [(j, p["text"]) for j, p in enumerate(content)
            if isinstance(p, dict) and p.get("type") in TEXT_PARTS and isinstance(p.get("text"), str)]


def _schemas(params: dict[str, Any]) -> list[Any]:
    """The tool and legacy function definitions of a request: prompt tokens on every call, so
    history trimming counts them in its budget."""
    return [s for key in ("tools", "functions") if isinstance(params.get(key), list) for s in params[key]]


class CompressStage:
    def __init__(self, config: CompressionConfig, caller: ModelCaller, catalog: Catalog, store: DocStore,
                 request_timeout_s: float | None = None) -> None:
        self.config = config
        self.caller = caller
        self.catalog = catalog
        self.store = store
        # A compression or summary call may take half the request's deadline, the answer the rest.
        self.timeout_s = min(config.timeout_s, request_timeout_s / 2) if request_timeout_s else config.timeout_s
        self.prompts = SystemPromptCompressor(config, store, caller, config.store.memo_ttl_s, self.timeout_s)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        rc = self.config.for_request(ctx.route, ctx.request.model)
        if rc is not None and ctx.request.options.get("compress", True) is not False:
            await self.apply(ctx, rc)
        await call_next(ctx)

    async def apply(self, ctx: RequestContext, rc: RouteCompression) -> None:
        original = ctx.request.messages
        # Every text of every system/developer message, wherever it stands: string content, or each
        # text part of a content list (see _texts). Shrunk concurrently: two long parts seen for the
        # first time cost one compression round trip, not two in a row; at most SHRINK_CONCURRENCY
        # at once, so a request of fifty new long parts does not fire fifty cheap calls together.
        slots = [(i, j, text) for i, m in enumerate(original) if m.get("role") in INSTRUCTION_ROLES
                 for j, text in _texts(m.get("content"))]
        gate = asyncio.Semaphore(SHRINK_CONCURRENCY)

        async def shrink(text: str) -> str:
            async with gate:
                return await self._shrink(ctx, rc, text)

        shrunk = await asyncio.gather(*(shrink(text) for _, _, text in slots))
        # Counted with the named model's tokenizer and image rule (as budgets count): a route name
        # ("auto") has neither and counts as cl100k and gpt-4o's rule.
        info = self.catalog.get(ctx.request.model)
        counted = info.upstream_model if info else None
        messages = list(original)
        saved = 0
        for (i, j, text), new in zip(slots, shrunk, strict=True):
            if new == text:
                continue
            saved += count_text(text, model=counted) - count_text(new, model=counted)
            m = messages[i]
            if j is None:
                messages[i] = {**m, "content": new}
            else:  # the part keeps its other keys (cache_control...) and its place among the parts
                parts = list(m["content"])
                parts[j] = {**parts[j], "text": new}
                messages[i] = {**m, "content": parts}
        if rc.history_max_tokens is not None:
            summarise = self._summariser(ctx, rc) if rc.summarize_history else None
            trimmed = await history.trim(messages, rc.history_max_tokens, summarise, rc.summary_max_tokens,
                                         _schemas(ctx.request.params), rc.history_trim_step_tokens,
                                         counted)
            messages = trimmed.messages
            saved += trimmed.saved_tokens
        if saved > 0:
            ctx.request = ctx.request.copy_with(messages=messages)
            ctx.compression_saved_tokens = saved
            ctx.response_headers[HEADER] = str(saved)
            ctx.finalizers.append(self._price_savings)

    async def _shrink(self, ctx: RequestContext, rc: RouteCompression, text: str) -> str:
        """``text`` compacted, then replaced by its stored compressed version (per the route)."""
        out = compact(text, self.config.dictionary) if rc.compaction else text
        if rc.system_prompt:
            out = await self._compressed(ctx, out)
        # A prompt of only whitespace compacts to "": providers refuse an empty system prompt or
        # text part ("text content blocks must be non-empty"), and it saved one token.
        return out if out.strip() or not text else text

    async def _compressed(self, ctx: RequestContext, text: str) -> str:
        """The stored compressed version of ``text``, or ``text``. The store being down (Redis
        outage, locked SQLite file) costs the saving, not the request."""
        try:
            return await self.prompts.resolve(ctx, text) or text
        except StorageError as exc:
            log.warning("compression store unavailable, sending the prompt as it is: %s", exc.message)
            return text

    async def _price_savings(self, ctx: RequestContext) -> None:
        if ctx.cache_status == "hit":
            # Nothing was sent: the cache saved the whole call, compression saved no tokens.
            ctx.compression_saved_tokens = 0
            ctx.compression_saved_usd = 0.0
            ctx.response_headers.pop(HEADER, None)
            return
        if ctx.served_model is None:
            ctx.compression_saved_usd = 0.0
            return
        info = self.catalog.get(ctx.served_model)
        if info is not None and info.price is not None:
            ctx.compression_saved_usd = ctx.compression_saved_tokens * info.price.input / 1_000_000

    def _summariser(self, ctx: RequestContext, rc: RouteCompression) -> history.Summariser:
        model = self.config.model
        assert model is not None

        async def summarise(dropped: list[dict[str, Any]]) -> str | None:
            key = history.prefix_key(dropped, model, rc.summary_max_tokens)
            try:
                doc = await asyncio.to_thread(self.store.get, "summary", key)
            except StorageError as exc:  # summarise without the cache rather than fail the request
                log.warning("compression store unavailable for history summaries: %s", exc.message)
                doc = None
            if doc is not None:
                return str(doc["text"])
            transcript = history.transcript(dropped)
            messages = [{"role": "system", "content": prompts.SUMMARY_SYSTEM.format(target=rc.summary_max_tokens)},
                        {"role": "user", "content": transcript}]
            limit = asyncio.timeout(self.timeout_s)  # a hanging cheap model must not cost the answer
            try:  # shaped for the model (internal_calls): a reasoning one gets room to reason
                async with limit:
                    resp, _ = await complete_internal(self.caller, ctx, model, messages,
                                                      max_tokens=rc.summary_max_tokens, purpose="summarize")
            except UpstreamError as exc:
                log.warning("history summary failed upstream, dropping the middle unsummarised: %s", exc.message)
                return None
            except TimeoutError:
                if not limit.expired():
                    raise  # not ours (the request's own deadline is a cancellation, not this)
                log.warning("history summary took over %gs, dropping the middle unsummarised", self.timeout_s)
                return None
            text = response_text(resp).strip()
            if text:
                try:
                    await asyncio.to_thread(self.store.put, "summary", key, {"text": text, "model": model})
                except StorageError as exc:
                    log.warning("history summary not cached: %s", exc.message)
            return text or None

        return summarise

    def close(self) -> None:
        self.store.close()


def build_compress_stage(config: Config, caller: ModelCaller, catalog: Catalog) -> CompressStage | None:
    """The stage for ``config.compression``, or None when no route opts in."""
    cfg = compression_config(config)
    if not cfg.active:
        return None
    if cfg.model is not None and catalog.get(cfg.model) is None:
        raise ConfigError(f"compression.model: unknown model {cfg.model!r}")
    store = open_doc_store(cfg.store, config.redis_url, config.resolve_path)
    return CompressStage(cfg, caller, catalog, store, config.server.request_timeout_s)


def compression_config(config: Config) -> CompressionConfig:
    section: Any = config.compression
    if isinstance(section, CompressionConfig):
        return section
    try:
        return CompressionConfig.model_validate(section or {})
    except Exception as exc:
        raise ConfigError(f"compression: {exc}") from None
