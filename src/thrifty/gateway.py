"""The Python API: one object that owns the pipeline, usable with or without a server.

    async with Gateway.from_config("thrifty.yaml") as gw:
        reply = await gw.chat(model="auto", messages=[{"role": "user", "content": "hi"}])

    with Gateway.from_config("thrifty.yaml") as gw:     # from synchronous code
        client = gw.openai_client()                     # an openai.OpenAI bound to gw, no port

A Gateway may be used from several event loops (``asyncio.run`` twice, the sync client's loop
thread); see docs/library.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from thrifty import fastjson
from thrifty.cache.build import build_cache_stage
from thrifty.compress.stage import build_compress_stage
from thrifty.config import Config, load_config
from thrifty.errors import ConfigError, GatewayStateError, InvalidRequestError, ThriftyError
from thrifty.ledger.spill import spill_path
from thrifty.ledger.store import open_store
from thrifty.ledger.writer import LedgerWriter
from thrifty.loops import keep
from thrifty.ops.wiring import Ops
from thrifty.pipeline.build import Stage, compose, describe
from thrifty.pipeline.caller import ModelCaller, RetryPolicy
from thrifty.pipeline.cascade import CascadeStage
from thrifty.pipeline.context import Handler, RequestContext, new_request_id
from thrifty.pipeline.deadline import DeadlineStage
from thrifty.pipeline.deferred_stage import build_deferred_stage, is_deferrable
from thrifty.pipeline.ledger_stage import LedgerStage
from thrifty.pipeline.normalize import NormalizeStage
from thrifty.pipeline.route import RouteStage
from thrifty.providers.base import Provider
from thrifty.providers.registry import build_providers
from thrifty.redact import Redactor
from thrifty.streaming import HeldStream
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    import openai

    from thrifty.routing.router import TaskRouter
    from thrifty.server.inprocess import LoopThread

log = logging.getLogger("thrifty.gateway")

# How long close() waits for the in-process loop thread to close what runs on it.
CLOSE_TIMEOUT_S = 60.0
# How long close() waits for requests already running to finish (and be recorded) first.
DRAIN_TIMEOUT_S = 30.0
# How often aclose() looks whether they have (close() is woken when the last one ends).
_DRAIN_POLL_S = 0.02

# The optional extra that provides each importable top-level module (pyproject.toml).
_EXTRA_OF_MODULE = {"redis": "redis", "psycopg": "postgres", "lightgbm": "gbm", "faiss": "ann",
                    "torch": "embeddings", "sentence_transformers": "embeddings"}


class Gateway:
    """thrifty's pipeline as a Python object: routing, caching, compression, retries and
    fallbacks, exact costs in the ledger, for calls made with or without a server.

    Build one with ``Gateway.from_config``; call it with ``await chat(...)``, an OpenAI client
    from ``openai_client()`` / ``async_openai_client()`` (in-process, no port), or serve
    ``app()``. Close it when done, with ``await aclose()`` / ``async with`` in async code or
    ``close()`` / ``with`` in a script, so pooled connections are released and the ledger is
    written and closed. A script that never closes still gets its ledger rows written at exit.
    """

    def __init__(self, config: Config, *, providers: dict[str, Provider] | None = None) -> None:
        self._closed = False
        # Requests inside run(), on any loop or thread: close() lets them finish before it closes
        # their connections and the ledger. The lock makes "refuse or count" one step against close();
        # the condition wakes a close() waiting for them when the last one ends.
        self._running = 0
        self._idle = threading.Condition()
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self.ledger: LedgerWriter | None = None
        try:
            self._build(config, providers)
        except BaseException as exc:
            # The ledger writer is a thread with an exit hook: a half-built gateway must not leak it.
            ledger, self.ledger = self.ledger, None
            if ledger is not None:
                ledger.close()
            # So is the capture writer (and it holds its file locked): the stages built after Ops may fail.
            ops = getattr(self, "ops", None)
            if ops is not None and ops.capture is not None:
                ops.capture.close()
            if isinstance(exc, ImportError) and not isinstance(exc, ThriftyError):
                raise ConfigError(_missing_extra_message(exc)) from exc
            raise

    def _build(self, config: Config, providers: dict[str, Provider] | None) -> None:
        self.config = config
        # Every credential a provider sends (api_key, secret header values, base_url password, its
        # Basic token, secret query values): an upstream error may echo any of them. Each provider
        # build_providers makes (one per configured provider, overridden or not) adds its own.
        self.redactor = Redactor()
        self.catalog = config.build_catalog()
        self.providers = build_providers(config, self.redactor, providers)
        self.caller = ModelCaller(
            self.catalog,
            self.providers,
            {name: RetryPolicy.from_provider(p) for name, p in config.providers.items()},
        )
        if config.ledger.enabled:
            path = config.resolve_path(config.ledger.path)
            # check: a SQLite path that cannot be opened fails here, at startup, not on the first write.
            store = open_store(path=path, dsn=config.ledger.dsn, check=True)
            # Where rows go when the store keeps failing (`thrifty ledger import-spill` reads it back).
            self.ledger = LedgerWriter(store, retries=config.ledger.write_retries, spill_path=spill_path(config),
                                       flush_interval_s=config.ledger.flush_interval_s,
                                       max_queued=config.ledger.max_queued_rows)
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
        # The event loop thread of the sync in-process clients: one per gateway, made on demand.
        self._loop_thread: LoopThread | None = None
        self._loop_lock = threading.Lock()

    @classmethod
    def from_config(
        cls,
        source: str | Path | dict[str, Any] | Config,
        *,
        providers: dict[str, Provider] | None = None,
        env: dict[str, str] | None = None,
    ) -> Gateway:
        """A gateway from a YAML file path, a dict in the same shape, or a ``Config``.

        ``providers`` replaces or adds providers by name (in-process test doubles, replays);
        ``env`` is what ``${VAR}`` in the file reads (default: ``os.environ``). Relative paths
        in a file (the ledger) are resolved beside it. Raises ``ConfigError`` for a bad config.
        """
        _check_arguments(source, providers, env)
        config = source if isinstance(source, Config) else load_config(source, env)
        return cls(config, providers=providers)

    def _build_stages(self) -> list[Stage]:
        """The pipeline in order (see pipeline/build.py for how the list is composed)."""
        sink = self.ledger.submit if self.ledger else None
        # Requests marked deferrable go to the provider Batch API (batching.deferred.enabled).
        deferred = build_deferred_stage(self)
        self._defers = deferred is not None
        # Inside the ledger stage, so a request that runs out of time is still recorded.
        deadline = DeadlineStage(self.config.server.request_timeout_s,
                                 exempt=is_deferrable if deferred else None)
        return [
            LedgerStage(sink, self.observers),
            # Notes the client's messages and a streamed answer's text for `capture:` (when on).
            *([self.ops.capture.stage] if self.ops.capture else []),
            deadline,
            *([self.ops.budget_stage] if self.ops.budget_stage else []),
            NormalizeStage(self.router),
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
        """The pipeline's stages in order, one line (what ``GET /health`` shows)."""
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
        await self.run(ctx)
        return ctx

    async def run(self, ctx: RequestContext) -> None:
        """Run a context the caller made through the pipeline. Unlike ``handle``, the caller still
        holds the context when the request fails: what it spent and why (``outcomes collect``
        records a failed call's cost)."""
        # A deferrable request waits for a provider batch (up to a day) and its spend is written
        # by the batch's collector whenever the batch ends: close() does not wait for it.
        await self.admit(ctx, self._handler, counted=not (self._defers and _deferrable(ctx)))

    async def admit(self, ctx: RequestContext, handler: Handler, *, counted: bool = True) -> None:
        """Run ``handler`` (a pipeline) on ``ctx`` as one of this gateway's requests: refused once
        it is closed (``GatewayStateError``) and, when ``counted``, waited for by ``close()``
        until it has ended, its stream included (``ctx.chunks``: until read to the end, broken,
        closed or dropped). The chat pipeline (``run``) and the passthrough endpoints
        (server/passthrough.py) both come through here: one count for ``close()`` to wait on."""
        with self._idle:
            self.check_open()
            self._running += counted
        self._loops.add(asyncio.get_running_loop())  # where its connection pools are (``__exit__``)
        try:
            await handler(ctx)
        except BaseException:
            self._ended(counted)
            raise
        if counted and ctx.chunks is not None:
            # The handler has returned, but the stream's reader still needs its provider
            # connection and, at its end, the ledger: the request ends with the stream.
            ctx.chunks = HeldStream(ctx.chunks, self._ended)
        else:
            self._ended(counted)

    def _ended(self, counted: bool = True) -> None:
        """One admitted request has ended: wake a close() waiting for the last one."""
        with self._idle:
            self._running -= counted
            if not self._running:
                self._idle.notify_all()

    async def chat(self, **body: Any) -> dict[str, Any]:
        """An OpenAI-shaped chat completion (non-streaming) for the given request fields."""
        if body.get("stream"):
            raise InvalidRequestError("Gateway.chat does not stream; use the OpenAI client from async_openai_client() "
                                      "(or openai_client() in synchronous code).", param="stream")
        ctx = await self.handle(ChatRequest.from_body(_as_json(body)))
        assert ctx.response is not None
        return ctx.response

    def app(self) -> Any:
        """The ASGI application serving this gateway (built once)."""
        if not hasattr(self, "_app"):
            from thrifty.server.app import create_app

            self._app = create_app(self)
        return self._app

    def async_openai_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` that talks to this gateway in-process (no server, no port).

        It runs the gateway on the caller's event loop. Streams arrive chunk by chunk, the
        client's ``timeout`` applies (``openai.APITimeoutError``; the request is cancelled), and
        closing a stream early cancels the upstream call. ``kwargs`` go to ``openai.AsyncOpenAI``.
        """
        import openai

        from thrifty.server.inprocess import LoopASGITransport, httpx

        self.check_open()
        transport = LoopASGITransport(self.app(), closed=lambda: self._closed)
        http = httpx.AsyncClient(transport=transport, base_url="http://thrifty.local")
        return openai.AsyncOpenAI(
            api_key=kwargs.pop("api_key", "in-process"), base_url="http://thrifty.local/v1", http_client=http, **kwargs
        )

    def openai_client(self, **kwargs: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` bound to this gateway in-process (no server, no port).

        The gateway runs on a private event-loop thread, one per gateway, shared by every client
        this returns and stopped by ``close()``. Streams arrive chunk by chunk, the client's
        ``timeout`` applies (``openai.APITimeoutError``; the request is cancelled), and closing a
        stream early cancels the upstream call. ``kwargs`` go to ``openai.OpenAI``.
        """
        import openai

        from thrifty.server.inprocess import ThreadLoopTransport, httpx

        self.check_open()
        transport = ThreadLoopTransport(self.app(), self._in_process_loop())
        http = httpx.Client(transport=transport, base_url="http://thrifty.local")
        return openai.OpenAI(
            api_key=kwargs.pop("api_key", "in-process"), base_url="http://thrifty.local/v1", http_client=http, **kwargs
        )

    @property
    def closed(self) -> bool:
        """True once ``close()`` / ``aclose()`` was called: the gateway then serves nothing."""
        return self._closed

    def check_open(self) -> None:
        # A closed gateway would still reach the provider, but spend unrecorded (no ledger) and
        # open new connection pools that nothing closes.
        if self._closed:
            raise GatewayStateError("this gateway is closed; create a new one with Gateway.from_config(...)")

    def _in_process_loop(self) -> LoopThread:
        from thrifty.server.inprocess import LoopThread

        with self._loop_lock:
            if self._loop_thread is None or not self._loop_thread.running:
                self._loop_thread = LoopThread()
            return self._loop_thread

    def flush(self, *, shutting_down: bool = False) -> None:
        """Block until every ledger row of the requests finished so far is written.

        ``shutting_down``: the process is about to end, so a write that fails is spilled to the
        spill file after one more try rather than retried for half a minute
        (``LedgerWriter.drain``), and the capture file's queued lines are written too.
        """
        if self.ledger:
            if shutting_down:
                self.ledger.drain()
            else:
                self.ledger.flush()
        # Only then: a batch checkpoint's flush (ledger rows before progress) must not wait on the
        # capture writer, whose lines nothing reads back before the process ends.
        if shutting_down and self.ops.capture is not None:
            self.ops.capture.flush()

    @property
    def running(self) -> int:
        """Requests admitted and not yet ended (streams included): what ``close()`` waits for."""
        return self._running

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted request is running, at most ``timeout_s``: True when none is.
        Polled, not waited for on the condition: the requests may run on this very loop."""
        deadline = time.monotonic() + timeout_s
        while self._running and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        return not self._running

    async def aclose(self) -> None:
        """Release everything: operations, cache, compression, provider connections (of every
        event loop the gateway was used from), the sync clients' loop thread, then the ledger
        (flushed and closed). New requests are refused at once; those already running are let
        finish first (up to ``DRAIN_TIMEOUT_S``), so what they paid is recorded. One part failing
        to close never keeps the others, the ledger above all, from closing: each failure is
        logged, and the first is raised at the end.
        """
        if self._mark_closed():  # closing twice (aclose() then ``async with`` exit) is harmless
            await self._release()

    async def _release(self) -> None:
        """``aclose()`` once the gateway is marked closed."""
        await self.wait_idle(DRAIN_TIMEOUT_S)
        self._warn_undrained()
        errors: list[Exception] = []
        try:
            await self._close_parts(errors)
            loop_thread, self._loop_thread = self._loop_thread, None
            if loop_thread is not None:
                await _attempt(errors, "the in-process client loop", lambda: asyncio.to_thread(loop_thread.stop))
        finally:
            ledger, self.ledger = self.ledger, None
            if ledger is not None:
                await _attempt(errors, "the ledger", lambda: asyncio.to_thread(ledger.close))
        if errors:
            raise errors[0]

    async def _close_parts(self, errors: list[Exception]) -> None:
        """Everything but the loop thread and the ledger (closed last: requests still unwinding
        on that loop write their rows)."""
        await _attempt(errors, "operations (keys, limits, dashboard store)", self.ops.aclose)
        if self.cache_stage:
            await _attempt(errors, "the cache", self.cache_stage.aclose)
        compress = self.compress_stage
        if compress:
            await _attempt(errors, "compression", lambda: asyncio.to_thread(compress.close))
        for name, provider in self.providers.items():
            await _attempt(errors, f"provider {name!r}", provider.aclose)

    def close(self) -> None:
        """``aclose()`` for synchronous code (a script, ``with``); not inside a running loop.

        When the sync in-process clients were used, the parts are closed on their loop thread,
        where their connections live; then the thread is stopped and the ledger closed.
        """
        if self._closed:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise GatewayStateError("Gateway.close() was called inside a running event loop; use `await gateway.aclose()`",
                                    code="running_event_loop")
        if not self._mark_closed():
            return
        self._drain()
        errors: list[Exception] = []
        loop_thread, self._loop_thread = self._loop_thread, None
        try:
            if loop_thread is not None and loop_thread.running:
                loop_thread.call(self._close_parts(errors), CLOSE_TIMEOUT_S)
            else:
                asyncio.run(self._close_parts(errors))
        except Exception as exc:  # a timeout: whatever did not close stays open, the rest goes on
            log.warning("closing the gateway: %r", exc)
            errors.append(exc)
        finally:
            if loop_thread is not None:
                loop_thread.stop()
            ledger, self.ledger = self.ledger, None
            if ledger is not None:
                ledger.close()
        if errors:
            raise errors[0]

    def _mark_closed(self) -> bool:
        """Refuse new requests from now on; False when the gateway was closed already.

        Requests already running are left to finish (``aclose``/``close`` wait for them): closed
        under them, their connections made a retry open new ones after the close, and their rows
        reached a closed ledger ("not recorded") although the provider was paid.
        """
        with self._idle:
            if self._closed:
                return False
            self._closed = True
            return True

    def _drain(self) -> None:
        """Block until the requests already running have finished, at most ``DRAIN_TIMEOUT_S``
        (after ``_mark_closed``: none can start meanwhile)."""
        with self._idle:
            self._idle.wait_for(lambda: not self._running, DRAIN_TIMEOUT_S)
            self._warn_undrained()

    def _warn_undrained(self) -> None:
        if self._running:
            log.warning("closing the gateway with %d request(s) still running after %gs; they fail and may go "
                        "unrecorded", self._running, DRAIN_TIMEOUT_S)

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.close()
            return
        # A notebook cell (Jupyter runs cells in its event loop): this thread runs that loop, which
        # runs nothing until the block is left, and close() refuses to run here.
        if loop in self._loops:
            # Requests ran on this loop (``await gw.chat``): their connection pools can be closed
            # only by it, so the close is its next task (done once the cell's code yields). New
            # requests are refused from now on.
            if self._mark_closed():
                # Its failures are logged by _attempt; ``keep`` holds the task until it is done.
                keep(loop.create_task(self._release(), name="thrifty: close the gateway"))
            return
        # Otherwise the close runs on a private thread, with no loop, while this one waits for it
        # (its failure is raised here, in the caller's thread).
        with ThreadPoolExecutor(1, thread_name_prefix="thrifty-close") as closer:
            closer.submit(self.close).result()


def _deferrable(ctx: RequestContext) -> bool:
    try:
        return is_deferrable(ctx)
    except InvalidRequestError:  # a bad option: the pipeline refuses the request at once
        return False


def _check_arguments(source: object, providers: object, env: object) -> None:
    """``from_config``'s arguments have the documented types (a ConfigError, not a TypeError deep inside)."""
    if not isinstance(source, str | Path | dict | Config):
        raise ConfigError(f"Gateway.from_config takes a path, a dict or a Config, not {type(source).__name__}")
    if env is not None and not (isinstance(env, Mapping) and all(isinstance(v, str) for v in env.values())):
        raise ConfigError("Gateway.from_config: env= must be a dict of strings (variable name -> value)")
    if providers is None:
        return
    if not isinstance(providers, Mapping):
        raise ConfigError(f"Gateway.from_config: providers= must be a dict name -> provider, not {type(providers).__name__}")
    for name, provider in providers.items():
        missing = [m for m in ("complete", "stream", "aclose") if not callable(getattr(provider, m, None))]
        if missing:
            raise ConfigError(f"Gateway.from_config: providers[{name!r}] is not a Provider (no {', '.join(missing)}; "
                              "see thrifty.providers.base)")


def _as_json(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the HTTP edge sees it, JSON: a tuple is an array, and a value JSON cannot carry
    (an object, a dict with int keys) is an InvalidRequestError before anything is sent, not a
    TypeError from the provider's serializer after the request was recorded as started."""
    try:
        data: dict[str, Any] = fastjson.loads(fastjson.dumps(body))
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        ChatRequest.from_body(body)  # names the field, when one of its checks covers the value
        raise InvalidRequestError(f"Gateway.chat: the request must be JSON data (str, number, bool, None, "
                                  f"list, dict with str keys): {exc}") from None
    return data


def _missing_extra_message(exc: ImportError) -> str:
    """One line naming the optional extra a configured feature needs."""
    module = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(module)
    hint = f"pip install 'thrifty[{extra}]'" if extra else "install the missing package"
    return f"the configuration needs {module or 'a package'} that is not installed ({hint})"


def default_config_path() -> str | None:
    path = os.environ.get("THRIFTY_CONFIG")
    return path if path else None


async def _attempt(errors: list[Exception], what: str, close: Callable[[], Awaitable[object]]) -> None:
    """Run one part's close; a failure is logged and kept in ``errors`` so the rest still closes."""
    try:
        await close()
    except Exception as exc:
        log.warning("closing the gateway: %s failed to close: %r", what, exc)
        errors.append(exc)
