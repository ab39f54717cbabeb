"""Any OpenAI-compatible endpoint (OpenAI, DeepSeek, Qwen, Together, OpenRouter, vLLM, Ollama...).

Uses aiohttp with pooled sessions: on this machine aiohttp sustained about ten times the
requests/s of httpx.AsyncClient at 64 concurrent requests (see docs/architecture.md and
bench/overhead.py), and the choice stays behind the Provider interface. Every aiohttp, socket
and JSON failure is mapped to the thrifty error tree here and nowhere else; the messages say
what happened in plain words, the aiohttp details go to the log only.

An aiohttp session belongs to the event loop that created it, and a library user may drive one
Gateway from several loops (``asyncio.run`` twice, the in-process sync client's loop thread),
so the provider keeps one session per loop (``thrifty.loops.LoopSessions``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from thrifty import fastjson
from thrifty.config import ProviderConfig
from thrifty.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from thrifty.loops import LoopSessions
from thrifty.providers.compat import adapt
from thrifty.providers.error_body import (
    ErrorDetail,
    answer_error,
    embedded_error,
    read_error,
    stream_refused,
    upstream_error,
    whole_choices,
)
from thrifty.providers.refusals import MAX_NAMES, refuses_param
from thrifty.providers.retry_after import retry_after
from thrifty.redact import Redactor, provider_secrets
from thrifty.streaming import response_to_chunks

log = logging.getLogger("thrifty.providers")
T = TypeVar("T")  # what a streamed call yields: chat chunks, or raw SSE events (raw_http.py)


class OpenAICompatProvider:
    """A provider speaking the OpenAI chat-completions wire protocol over HTTP."""

    def __init__(self, name: str, config: ProviderConfig, redactor: Redactor | None = None) -> None:
        self.name = name
        self.config = config
        self._redact = redactor or Redactor()
        for secret in provider_secrets(config.base_url, config.api_key, config.headers):
            self._redact.add(secret)
        self._sessions = LoopSessions(self._new_session)
        self._url = self.url("chat/completions")
        headers = {"content-type": "application/json", **config.headers}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s, sock_connect=config.connect_timeout_s)
        # A stream has no total deadline; it fails when the gap between chunks exceeds timeout_s.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.timeout_s
        )
        # Learned from a 400 (``stream``): the models this server refuses ``stream_options`` for
        # (per model: a proxy may route each model to a different server).
        self._refuses_stream_options: set[str] = set()

    def url(self, path: str) -> str:
        """``path`` under the provider's base_url (``join_url``)."""
        return join_url(self.config.base_url, path)

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300)
        return aiohttp.ClientSession(connector=connector, headers=self._headers)

    def _get_session(self) -> aiohttp.ClientSession:
        """The running loop's session (sessions are bound to the loop that created them)."""
        return self._sessions.get()

    async def aclose(self) -> None:
        """Close the pooled connections of every event loop this provider was used from."""
        await self._sessions.aclose()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._post(self._url, adapt(body, self.config.compat))
        # An error in a 200 body, in place of the choices or beside them (OpenRouter, once the
        # model started): checked first, as a cut answer beside an error is no answer.
        reported = answer_error(self.name, data, self._redact)
        if reported is not None:
            raise reported
        if not isinstance(data.get("choices"), list):
            raise UpstreamProtocolError(f"{self.name}: response has no 'choices' array", retryable=True)
        return data

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``base_url + path`` (e.g. ``/embeddings``): the JSON object answered,
        with the same error mapping as ``complete`` (no retries here: the caller owns them)."""
        return await self._post(self.url(path), body)

    async def request_json(self, method: str, url: str) -> dict[str, Any]:
        """A body-less call (``GET``/``DELETE``/``POST`` of a stored response's endpoints) to ``url``:
        the JSON object answered (``{}`` for an empty body), same error mapping, no retries."""
        return await self._request(method, url, None)

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", url, body)

    async def _request(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        timeout = self._timeout
        data = None if body is None else fastjson.dumps(body)
        answered = False  # the provider accepted the call: what fails after this, it billed
        try:
            async with self._get_session().request(method, url, data=data, timeout=timeout,
                                                   allow_redirects=False) as resp:
                await self.check_status(resp)
                answered = True
                raw = await resp.read()
                if body is None and not raw.strip():
                    return {}  # DELETE / cancel answers may be empty
                try:
                    data = fastjson.loads(raw)
                except ValueError:
                    raise UpstreamProtocolError(f"{self.name}: response is not valid JSON", retryable=True) from None
                if not isinstance(data, dict):
                    raise UpstreamProtocolError(f"{self.name}: response is not a JSON object", retryable=True)
                return data
        except UpstreamError as exc:
            billed_if(exc, answered)
            raise
        except TimeoutError:
            raise billed_if(UpstreamTimeoutError(f"{self.name}: no response within {self.config.timeout_s:g}s",
                                               retryable=False), answered) from None
        except aiohttp.ClientError as exc:
            raise billed_if(self._connection_error(exc), answered) from None

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chunks of a streaming completion. Failures before the first chunk are retryable like
        complete()'s (the client has nothing yet); after it they are not (it has part of the answer).
        A server refusing ``stream_options`` is asked again without it (``without_refused_options``)."""
        return self.without_refused_options(body, self._stream_once)

    async def without_refused_options(self, body: dict[str, Any],
                                      once: Callable[[dict[str, Any]], AsyncGenerator[T, None]]
                                      ) -> AsyncGenerator[T, None]:
        """The items of ``once(body)``, a streamed call, for a server that may refuse ``stream_options``.

        The gateway asks every stream (chat, legacy completions) for ``stream_options.include_usage``
        (to price it); a server that refuses the field with a 400 (many OpenAI-compatible ones:
        "Unknown parameter: 'stream_options'") is asked again once without it, and once that retry
        streams, not sent it again for that model (per model: a proxy may route each model to a
        different server): otherwise every stream failed over a field the client may never have
        sent. Its tokens are then counted offline unless it reports usage anyway. Learned only
        when the retry streams: a retry that fails too proves nothing about the field."""
        model = str(body.get("model"))
        if "stream_options" in body and model in self._refuses_stream_options:
            body = _without_stream_options(body)
        yielded = False
        try:
            async with contextlib.aclosing(once(body)) as items:
                async for item in items:
                    yielded = True  # from here a failure is the stream's, never asked again
                    yield item
            return
        except UpstreamStatusError as exc:
            if yielded or "stream_options" not in body or not refuses_stream_options(exc):
                raise
            refusal = exc.message
        learned = False
        async with contextlib.aclosing(once(_without_stream_options(body))) as items:
            async for item in items:
                if not learned:
                    learned = True
                    self._learn_refusal(model, refusal)
                yield item

    def _learn_refusal(self, model: str, refusal: str) -> None:
        """Stop sending ``stream_options`` for ``model`` (its retry without it streamed)."""
        if len(self._refuses_stream_options) < MAX_NAMES:  # model names come from requests: bounded
            self._refuses_stream_options.add(model)
        log.warning("%s refused stream_options for %s (%s); streaming without it from now on",
                    self.name, self._redact(model), refusal)

    async def _stream_once(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """One streamed call (``stream``)."""
        timeout = self._stream_timeout
        done = False
        started = False
        finished: dict[int, bool] = {}  # choice index -> its finish_reason came
        accepted = False  # a 200: what fails before the first chunk, the provider ran and bills
        try:
            data = fastjson.dumps(adapt(body, self.config.compat))
            async with open_stream(self._get_session(), "POST", self._url, data=data, timeout=timeout) as resp:
                await self.check_status(resp)
                accepted = True
                lines: AsyncIterator[bytes] = resp.content.__aiter__()
                if resp.content_type == "application/json":
                    # One JSON object: an error (read as SSE lines, its reason was lost and it
                    # passed for a truncated stream), or a whole answer from a server that ignores
                    # `stream`, streamed from here as the chunks it would have sent.
                    raw = await resp.read()
                    try:
                        # The standard library's reader: NaN or a huge integer still parse.
                        parsed = json.loads(raw)
                    except ValueError:  # events under the wrong content type
                        lines = _replay(raw.splitlines())
                    else:
                        if not whole_choices(parsed, "message", dict):
                            raise stream_refused(self.name, parsed, self._redact)
                        for chunk in response_to_chunks(parsed):
                            yield chunk
                        return
                async for line in lines:
                    text = line.decode("utf-8", "replace").strip()
                    if not text.startswith("data:"):
                        continue  # SSE comments, event names and blank keep-alives
                    payload = text[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = fastjson.loads(payload)
                    except ValueError:
                        raise billed_if(UpstreamProtocolError(
                            f"{self.name}: stream chunk is not valid JSON", retryable=not started
                        ), not started) from None
                    reported = embedded_error(chunk) if isinstance(chunk, dict) else None
                    if reported is not None:
                        raise self._stream_error(reported, started)
                    if isinstance(chunk, dict) and "error" in chunk:
                        # An error that says nothing (null-filled, beside the answer): relayed, the
                        # openai SDK raises on any event whose `error` is not empty.
                        chunk.pop("error", None)
                    started = True
                    note_finishes(chunk, finished)
                    yield chunk
        except UpstreamError:
            raise
        except TimeoutError:
            if not started:
                raise billed_if(UpstreamTimeoutError(f"{self.name}: no response within {self.config.timeout_s:g}s"),
                              accepted) from None
            raise UpstreamTimeoutError(
                f"{self.name}: stream stalled for more than {self.config.timeout_s:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise billed_if(self._connection_error(exc, mid_stream=started), accepted and not started) from None
        if not done and not (len(finished) >= asked_choices(body) and all(finished.values())):
            # A stream that ended cleanly once every choice had its finish_reason is whole: some
            # servers never send [DONE] (TGI before 2.1.1, llama-box, ik_llama.cpp). Without a
            # finish_reason, or with fewer choices than asked for (``n``: a choice never seen),
            # the end is a cut. (After the first chunk the caller prices what was streamed;
            # before it, the prompt.)
            raise billed_if(UpstreamProtocolError(f"{self.name}: stream ended before [DONE] (truncated)",
                                                retryable=not started), not started)

    def _status_error(self, status: int, raw: bytes, wait_s: float | None) -> UpstreamError:
        return upstream_error(self.name, status, read_error(raw, self._redact), self._redact, retry_after=wait_s)

    async def check_status(self, resp: aiohttp.ClientResponse) -> None:
        """Raises for an answer that is not a success: a 3xx, or a status of 400 and above (its
        body read for the provider's reason). Provider calls never follow redirects (every call
        passes ``allow_redirects=False``): aiohttp would send the session's headers (``api-key``,
        custom ones: it drops only Authorization across origins) and, on a 307/308, the prompt
        again to whatever host the Location names."""
        if 300 <= resp.status < 400:
            raise self._redirect_error(resp)
        if resp.status >= 400:
            raise self._status_error(resp.status, await resp.read(), retry_after(resp.headers, resp.status))

    def _redirect_error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        """A 3xx answer: not followed (``check_status``), so a plain error naming it."""
        where = resp.headers.get("location", "").strip()
        return UpstreamError(self._redact(
            f"{self.name}: upstream returned HTTP {resp.status} (a redirect{' to ' + where if where else ''}); "
            "thrifty does not follow provider redirects: set the provider's base_url to the final address"))

    def _stream_error(self, detail: ErrorDetail, started: bool) -> UpstreamError:
        """An error event in place of a chunk. Before the first chunk it fails like the status it
        claims (a 429 is a rate limit, a 5xx retryable); after it, never retried (the client has
        part of the answer)."""
        if not started and detail.status is not None:
            return upstream_error(self.name, detail.status, detail, self._redact, embedded=True)
        return UpstreamError(self._redact(f"{self.name}: stream error: {detail.message}"))

    def _connection_error(self, exc: Exception, mid_stream: bool = False) -> UpstreamError:
        """A plain message for the client (what happened, which provider); aiohttp's details,
        which name internals (``ContentLengthError``, byte counts, socket addresses), go to the log."""
        log.warning("%s: upstream connection error%s: %s", self.name, " mid-stream" if mid_stream else "",
                    self._redact(f"{type(exc).__name__}: {exc}"))
        if mid_stream:
            what = "during the stream: the stream broke before [DONE] (truncated)"
        elif isinstance(exc, aiohttp.ClientPayloadError):
            # The headers came; the body was cut short (a dropped connection, a bad length).
            what = "reading the response body (cut short)"
        elif isinstance(exc, aiohttp.ClientConnectorDNSError):
            what = "connecting: the provider's host name could not be resolved"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            refused = isinstance(getattr(exc, "os_error", None), ConnectionRefusedError)
            what = "connecting: connection refused" if refused else "connecting: the provider could not be reached"
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            what = "waiting for the response: the provider closed the connection"
        else:
            what = "talking to the provider: the connection was lost"
        # Mid-stream failures are not retried: part of the answer may already be with the client.
        return UpstreamError(f"{self.name}: connection failed {what}", retryable=not mid_stream)


def billed_if(exc: UpstreamError, billed: bool) -> UpstreamError:
    """``exc``, marked billed when the provider had accepted the call (``UpstreamError.billed``)."""
    exc.billed = exc.billed or billed
    return exc


@contextlib.asynccontextmanager
async def open_stream(session: aiohttp.ClientSession, method: str, url: str,
                      **kw: Any) -> AsyncIterator[aiohttp.ClientResponse]:
    """``session.request`` for a response read as a stream (redirects never followed, see
    ``check_status``), its connection's idle read timer disarmed once it is read
    (``disarm_idle_read_timer``): every streamed provider call goes through here."""
    protocol = None
    try:
        async with session.request(method, url, allow_redirects=False, **kw) as resp:
            protocol = resp.connection.protocol if resp.connection is not None else None
            yield resp
    finally:
        disarm_idle_read_timer(session, protocol)


def disarm_idle_read_timer(session: aiohttp.ClientSession, protocol: object | None) -> None:
    """Cancel the read timer of a stream's connection once the stream is read, if the connection
    is idle in the pool by then.

    Why: aiohttp 3.14 (3.14.5 included; aio-libs/aiohttp#12953 fixed only part of it) re-arms
    ``sock_read`` as a stream's buffer drains after the body ended while reading was paused for
    backpressure (a client slower than the provider, a long answer): the connection is back in the
    pool then, the timer fires there and marks it timed out, and the next call that takes it fails
    at once with "no response within Ns". A connection another call has taken since keeps its
    timer (the timer is that call's). Private attributes, read defensively: without them, nothing."""
    acquired = getattr(session.connector, "_acquired", None)
    if protocol is None or acquired is None or protocol in acquired:
        return
    drop = getattr(protocol, "_drop_timeout", None)
    if callable(drop):
        drop()


def join_url(base_url: str, path: str) -> str:
    """``path`` appended to ``base_url``'s path, its query kept after it (Azure's
    ``?api-version=``): appended to the whole string, the path landed inside the query."""
    parts = urlsplit(base_url)
    path, _, extra = path.partition("?")  # a path with its own query (``?stream=true``): both kept
    query = "&".join(q for q in (parts.query, extra) if q)
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{path.lstrip('/')}", query, ""))


def _without_stream_options(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "stream_options"}


def refuses_stream_options(exc: UpstreamStatusError) -> bool:
    """Whether a provider's error (a 400, or FastAPI's 422) refuses the ``stream_options`` field
    (``refuses_param``: a bare mention is not one, vLLM's 400s quote the whole request body)."""
    return refuses_param(exc.upstream_status, exc.param, exc.message, ("stream_options",))


def asked_choices(body: dict[str, Any]) -> int:
    """How many choices ``body`` asks for (its ``n``, default 1)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def note_finishes(chunk: Any, finished: dict[int, bool]) -> None:
    """Record in ``finished`` each choice of ``chunk`` (by index) and whether it has finished."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            index = choice.get("index", 0)
            key = index if isinstance(index, int) else 0
            finished[key] = finished.get(key, False) or bool(choice.get("finish_reason"))


async def _replay(lines: list[bytes]) -> AsyncIterator[bytes]:
    """``lines`` already read, as the stream's line iterator."""
    for line in lines:
        yield line
