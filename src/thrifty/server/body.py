"""Reading a request body: bounded in size (``server.max_body_bytes``) and in time
(``server.body_timeout_s``), and a client that hangs up mid-body is a disconnect, not a crash.

Why a deadline: uvicorn has no request-body timeout, so a client trickling one byte every few
seconds held its connection and a request task for as long as it liked (1,100 at once, without a
key). ``BodyDeadline`` wraps the ASGI ``receive`` of every request, so every route's body read
(chat, embeddings, responses, completions, admin) is bounded the same way; it ends as a 408 in
the OpenAI error format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thrifty import fastjson
from thrifty.errors import InvalidRequestError, PayloadTooLargeError, RequestError


class BodyTimeoutError(RequestError):
    """408: the client did not send its whole body within ``server.body_timeout_s``."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        # The rest of the body may still be on its way: the connection cannot carry another request.
        return {"connection": "close"}


class ClientGoneError(RequestError):
    """The client closed the connection before its body was complete. Nobody reads the answer;
    raised so handlers log one INFO line (``handler_error``) instead of an internal-error traceback."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


# Headers without which an HTTP/1.1 request has no body (RFC 9112, section 6.3).
_BODY_HEADERS = frozenset((b"content-length", b"transfer-encoding"))


class BodyDeadline:
    """ASGI middleware: the request body must arrive within ``timeout_s`` of the request's start.

    Only ``http.request`` messages are bounded: once the last body chunk has arrived, ``receive``
    waits as long as it likes (handlers and streaming responses use it to watch for a disconnect)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(name in _BODY_HEADERS for name, _ in scope["headers"]):
            # No body to wait for (a GET, /health, /metrics: HTTP/1.1 has none without one of
            # these headers): the timer per receive is ~4 us of nothing on every such request.
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        complete = False

        async def bounded_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            # Most bodies are in hand when they are read (they came with the headers): a receive
            # that answers without waiting needs no timer, which cost ~6% of a served request's
            # main-thread CPU (armed, then cancelled). One that waits is bounded from where it
            # parked: only a wait can overrun the deadline.
            steps = receive().__await__()  # any awaitable's steps, a coroutine's included
            try:
                parked = steps.send(None)
            except StopIteration as answered:
                message = answered.value
            else:
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                        message = await _Resumed(steps, parked)
                except TimeoutError:
                    raise BodyTimeoutError(f"The request body did not arrive within {self.timeout_s:g} s "
                                           "(server.body_timeout_s).") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, bounded_receive, send)


class _Resumed:
    """Awaits the rest of an awaitable already stepped by hand and parked on ``parked`` (what its
    first step yielded to the event loop): what the task sends or throws in (a cancellation: the
    deadline) is passed on to it, as ``await`` would have."""

    def __init__(self, steps: Generator[Any, Any, Message], parked: Any) -> None:
        self._steps = steps
        self._parked = parked

    def __await__(self) -> Generator[Any, Any, Message]:
        parked = self._parked
        while True:
            try:
                sent = yield parked
            except BaseException as exc:  # every exception goes on to it, as with await
                try:
                    parked = self._steps.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    parked = self._steps.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


async def read_json_body(request: Request, limit: int) -> Any:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Otherwise the compressed bytes reach the JSON parser and the client reads about UTF-8.
        raise InvalidRequestError(f"Content-Encoding {encoding!r} is not supported; send the JSON body uncompressed.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body is {declared} bytes; the limit is {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():  # counted as it arrives: chunked uploads declare no length
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGoneError(f"The client disconnected after {size} bytes of the request body.") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequestError("Request body is empty; expected a JSON object.")
    try:
        # Any Content-Type is read as JSON (`curl -d` sends form-urlencoded); only when the body
        # is not JSON does the error name a declared type that explains why (a form, a multipart upload).
        return fastjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        hint = f" (Content-Type is {ctype!r}; send application/json)" if ctype and "json" not in ctype else ""
        raise InvalidRequestError(f"Request body is not valid JSON{hint}: {exc}") from None
