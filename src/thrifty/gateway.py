"""The Python API: one object that owns the pipeline, usable with or without a server.

    gw = Gateway.from_config("thrifty.yaml")
    reply = await gw.chat(model="auto", messages=[{"role": "user", "content": "hi"}])
    client = gw.openai_client()          # an openai.OpenAI bound to this gateway, no port
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty.cache.build import build_cache_stage
from thrifty.compress.stage import build_compress_stage
from thrifty.config import Config, load_config
from thrifty.errors import InvalidRequestError
from thrifty.ledger.store import open_store
from thrifty.ledger.writer import LedgerWriter
from thrifty.ops.wiring import Ops
from thrifty.pipeline.build import Stage, compose, describe
from thrifty.pipeline.caller import ModelCaller, RetryPolicy
from thrifty.pipeline.cascade import CascadeStage
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.pipeline.deferred_stage import build_deferred_stage
from thrifty.pipeline.ledger_stage import LedgerStage
from thrifty.pipeline.normalize import NormalizeStage
from thrifty.pipeline.route import RouteStage
from thrifty.providers.base import Provider
from thrifty.providers.registry import build_providers
from thrifty.redact import Redactor
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    import openai

    from thrifty.routing.router import TaskRouter


class Gateway:
    def __init__(self, config: Config, *, providers: dict[str, Provider] | None = None) -> None:
        self.config = config
        self.redactor = Redactor([p.api_key for p in config.providers.values() if p.api_key])
        self.catalog = config.build_catalog()
        self.providers = build_providers(config, self.redactor, providers)
        self.caller = ModelCaller(
            self.catalog,
            self.providers,
            {name: RetryPolicy.from_provider(p) for name, p in config.providers.items()},
        )
        self.ledger: LedgerWriter | None = None
        if config.ledger.enabled:
            path = config.resolve_path(config.ledger.path)
            # check: a SQLite path that cannot be opened fails here, at startup, not on the first write.
            store = open_store(path=path, dsn=config.ledger.dsn, check=True)
            spill = None if config.ledger.dsn else path + ".failed.jsonl"
            if config.ledger.dsn:
                spill = config.resolve_path("thrifty-ledger.failed.jsonl")
            self.ledger = LedgerWriter(store, retries=config.ledger.write_retries, spill_path=spill,
                                       flush_interval_s=config.ledger.flush_interval_s)
        self.observers: list[Any] = []
        self.extra_routes: list[Any] = []
        # async (request, chat) -> (key_id, tenant); set by ops when auth is enabled.
        self.authenticate: Any = None
        # Metrics, request logs, dashboard; keys, budgets and the admin API when auth is on.
        self.ops = Ops(self)
        # Compression (system prompts, compaction, history) for the routes that opt in; None otherwise.
        self.compress_stage = build_compress_stage(config, self.caller, self.catalog)
        # Exact and semantic response cache; None when the config has no `cache` section.
        self.cache_stage = build_cache_stage(config, self.catalog, self.caller)
        self.stages: list[Stage] = self._build_stages()
        self._handler = compose(self.stages)

    @classmethod
    def from_config(
        cls,
        source: str | Path | dict[str, Any] | Config,
        *,
        providers: dict[str, Provider] | None = None,
        env: dict[str, str] | None = None,
    ) -> Gateway:
        config = source if isinstance(source, Config) else load_config(source, env)
        return cls(config, providers=providers)

    def _build_stages(self) -> list[Stage]:
        """The pipeline in order (see pipeline/build.py for how the list is composed)."""
        sink = self.ledger.submit if self.ledger else None
        # Requests marked deferrable go to the provider Batch API (batching.deferred.enabled).
        deferred = build_deferred_stage(self)
        return [
            LedgerStage(sink, self.observers),
            *([self.ops.budget_stage] if self.ops.budget_stage else []),
            NormalizeStage(),
            *([self.compress_stage] if self.compress_stage else []),
            *([self.cache_stage] if self.cache_stage else []),
            RouteStage(self.catalog, router=self.router, default_model=self.config.default_model),
            *([deferred] if deferred else []),
            CascadeStage(self.caller, self.catalog),
        ]

    @property
    def router(self) -> TaskRouter | None:
        """The routing policy (``routing:`` section), built once; None when no routes are configured."""
        if not hasattr(self, "_router"):
            from thrifty.routing import build_router

            self._router = build_router(self.config, self.catalog)
        return self._router

    def route_names(self) -> list[str]:
        """``auto`` and ``route:NAME`` for each configured route (listed by GET /v1/models)."""
        return self.router.route_names() if self.router is not None else []

    def describe(self) -> str:
        return describe(self.stages)

    async def handle(
        self,
        request: ChatRequest,
        *,
        headers: dict[str, str] | None = None,
        key_id: str | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> RequestContext:
        """Run one request through the pipeline; the context holds the response or the chunks."""
        ctx = RequestContext(request=request, headers=headers or {}, key_id=key_id,
                             request_id=request_id or new_request_id())
        ctx.tenant = tenant or key_id or "default"
        await self._handler(ctx)
        return ctx

    async def chat(self, **body: Any) -> dict[str, Any]:
        """An OpenAI-shaped chat completion (non-streaming) for the given request fields."""
        if body.get("stream"):
            raise InvalidRequestError("Gateway.chat does not stream; use the OpenAI client from openai_client().")
        ctx = await self.handle(ChatRequest.from_body(body))
        assert ctx.response is not None
        return ctx.response

    def app(self) -> Any:
        """The ASGI application serving this gateway (built once)."""
        if not hasattr(self, "_app"):
            from thrifty.server.app import create_app

            self._app = create_app(self)
        return self._app

    def async_openai_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` that talks to this gateway in-process (no server, no port)."""
        import openai

        from thrifty.server.inprocess import httpx

        transport = httpx.ASGITransport(app=self.app())
        http = httpx.AsyncClient(transport=transport, base_url="http://thrifty.local")
        return openai.AsyncOpenAI(
            api_key=kwargs.pop("api_key", "in-process"), base_url="http://thrifty.local/v1", http_client=http, **kwargs
        )

    def openai_client(self, **kwargs: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` bound to this gateway in-process (runs its own event-loop thread)."""
        import openai

        from thrifty.server.inprocess import ThreadLoopTransport, httpx

        transport = ThreadLoopTransport(self.app())
        http = httpx.Client(transport=transport, base_url="http://thrifty.local")
        return openai.OpenAI(
            api_key=kwargs.pop("api_key", "in-process"), base_url="http://thrifty.local/v1", http_client=http, **kwargs
        )

    def flush(self) -> None:
        if self.ledger:
            self.ledger.flush()

    async def aclose(self) -> None:
        await self.ops.aclose()
        if self.cache_stage:
            await self.cache_stage.aclose()
        if self.compress_stage:
            await asyncio.to_thread(self.compress_stage.close)
        for p in self.providers.values():
            await p.aclose()
        if self.ledger:
            await asyncio.to_thread(self.ledger.close)
            self.ledger = None

    def close(self) -> None:
        """Synchronous close for scripts (no running event loop)."""
        asyncio.run(self.aclose())


def default_config_path() -> str | None:
    path = os.environ.get("THRIFTY_CONFIG")
    return path if path else None
