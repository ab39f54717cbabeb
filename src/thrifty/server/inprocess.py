"""In-process httpx transports: OpenAI clients talking to the gateway's ASGI app, no socket.

httpx's own ``ASGITransport`` is async only, buffers a whole response body before returning
(a stream arrived all at once, at its end) and ignores the client's timeout. These transports
hand the response over at ``http.response.start`` and yield body chunks as the app sends them,
honour the request's read timeout (cancelling the app's work and raising ``httpx.ReadTimeout``,
which the openai SDK reports as ``APITimeoutError``), and cancel the app's work when the client
closes a response early.

``ThreadLoopTransport`` is the sync one: the app runs on a ``LoopThread`` (a private event
loop on a daemon thread, one per Gateway), so the sync caller never needs a loop.
``LoopASGITransport`` is the async one, on the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")


def openai_httpx() -> ModuleType:
    """The httpx flavour the installed openai SDK is built on (openai 3.x moved to httpx2)."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


httpx: Any = openai_httpx()

# Messages from the app to the reader: ("start", status, headers), ("body", bytes), ("end",),
# ("error", exception). Anything after the first "end" is ignored.
Message = tuple[Any, ...]


class LoopThread:
    """A private event loop running on a daemon thread (what sync in-process clients use)."""

    def __init__(self, name: str = "thrifty-inprocess") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (cancelled after ``timeout``)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs on the loop, stop its thread and close it."""
        if self.in_thread():
            raise RuntimeError("a LoopThread cannot stop itself from its own thread")
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(_wind_down(), timeout)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


async def _wind_down() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


def _scope(request: Any) -> dict[str, Any]:
    url = request.url
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
        "headers": [(k.lower(), v) for k, v in request.headers.raw], "scheme": url.scheme,
        "path": url.path, "raw_path": url.raw_path.split(b"?")[0], "query_string": url.query,
        "server": (url.host, url.port), "client": ("127.0.0.1", 123), "root_path": "",
    }


def _read_timeout(request: Any) -> float | None:
    """httpx's read timeout for this request: the longest wait for the response and between chunks."""
    value = (request.extensions.get("timeout") or {}).get("read")
    return float(value) if value is not None else None


async def _run_app(app: Any, scope: dict[str, Any], body: bytes, emit: Callable[[Message], None],
                   disconnected: asyncio.Event) -> None:
    """Drive the ASGI app for one request, passing its response on as it is produced."""
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()  # set when the client closes the response
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            emit(("start", message["status"], list(message.get("headers", []))))
        elif message["type"] == "http.response.body":
            if message.get("body"):
                emit(("body", bytes(message["body"])))
            if not message.get("more_body", False):
                emit(("end",))

    try:
        await app(scope, receive, send)
    except BaseException as exc:  # the reader must hear of it (CancelledError: it cancelled us)
        emit(("error", exc))
        raise
    finally:
        emit(("end",))


class _Reader:
    """The client side of one exchange: what each message from the app means."""

    def __init__(self, request: Any, cancel: Callable[[], None]) -> None:
        self.request = request
        self.timeout = _read_timeout(request)
        self.cancel = cancel
        self.ended = False

    def timed_out(self) -> Exception:
        self.cancel()
        return httpx.ReadTimeout(f"the in-process gateway did not answer within {self.timeout:g}s",
                                 request=self.request)

    def start(self, message: Message) -> Any:
        """The app's first message, when it starts a response (raises if the app failed first)."""
        if message[0] == "start":
            return message
        self.ended = True
        if message[0] == "error" and not isinstance(message[1], asyncio.CancelledError):
            raise message[1]  # like httpx.ASGITransport: the app's exception reaches the caller
        raise httpx.RemoteProtocolError("the in-process app ended without a response", request=self.request)

    def chunk(self, message: Message) -> bytes | None:
        """The body bytes of ``message``; None at the end; raises if the response broke off."""
        if message[0] == "body":
            return bytes(message[1])
        self.ended = True
        if message[0] != "end":
            raise httpx.RemoteProtocolError("the in-process response broke off", request=self.request)
        return None

    def response(self, start: Message, stream: Any) -> Any:
        return httpx.Response(start[1], headers=start[2], stream=stream, request=self.request)

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.cancel()  # the client left early: stop the app's work (the ledger records it)


class ThreadLoopTransport(httpx.BaseTransport):  # type: ignore[misc,name-defined]
    """A sync httpx transport serving requests from an ASGI app running on a ``LoopThread``."""

    def __init__(self, app: Any, loop: LoopThread) -> None:
        self._app = app
        self._loop = loop

    def handle_request(self, request: Any) -> Any:
        if not self._loop.running:
            raise httpx.ConnectError("the in-process gateway is closed", request=request)
        body = request.read()
        messages: queue.Queue[Message] = queue.Queue()
        disconnected = asyncio.Event()
        future = self._loop.submit(_run_app(self._app, _scope(request), body, messages.put, disconnected))

        def cancel() -> None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.loop.call_soon_threadsafe(disconnected.set)
            future.cancel()

        reader = _Reader(request, cancel)

        def get() -> Message:
            try:
                return messages.get(timeout=reader.timeout)
            except queue.Empty:
                raise reader.timed_out() from None

        return reader.response(reader.start(get()), _SyncStream(reader, get))


class _SyncStream(httpx.SyncByteStream):  # type: ignore[misc,name-defined]
    def __init__(self, reader: _Reader, get: Callable[[], Message]) -> None:
        self._reader, self._get = reader, get

    def __iter__(self) -> Iterator[bytes]:
        while not self._reader.ended:
            data = self._reader.chunk(self._get())
            if data is None:
                return
            yield data

    def close(self) -> None:
        self._reader.close()


class LoopASGITransport(httpx.AsyncBaseTransport):  # type: ignore[misc,name-defined]
    """An async httpx transport serving requests from an ASGI app on the caller's event loop."""

    def __init__(self, app: Any, closed: Callable[[], bool] | None = None) -> None:
        self._app = app
        # Whether the gateway behind ``app`` was closed: then it refuses like a stopped server
        # (openai.APIConnectionError), as the sync transport does once its loop thread stopped.
        self._closed = closed or (lambda: False)

    async def handle_async_request(self, request: Any) -> Any:
        if self._closed():
            raise httpx.ConnectError("the in-process gateway is closed", request=request)
        body = await request.aread()
        messages: asyncio.Queue[Message] = asyncio.Queue()
        disconnected = asyncio.Event()
        task = asyncio.ensure_future(_run_app(self._app, _scope(request), body, messages.put_nowait, disconnected))

        def cancel() -> None:
            disconnected.set()
            task.cancel()

        reader = _Reader(request, cancel)

        async def get() -> Message:
            try:
                return await asyncio.wait_for(messages.get(), reader.timeout)
            except TimeoutError:
                raise reader.timed_out() from None

        return reader.response(reader.start(await get()), _AsyncStream(reader, get, task))


class _AsyncStream(httpx.AsyncByteStream):  # type: ignore[misc,name-defined]
    def __init__(self, reader: _Reader, get: Callable[[], Coroutine[Any, Any, Message]], task: Any) -> None:
        self._reader, self._get = reader, get
        self._task = task  # asyncio keeps only a weak reference to a running task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self._reader.ended:
            data = self._reader.chunk(await self._get())
            if data is None:
                return
            yield data

    async def aclose(self) -> None:
        self._reader.close()
