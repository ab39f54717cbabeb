"""Calls to a provider's endpoints other than chat completions: the passthroughs' HTTP side.

``open_events`` reads server-sent events event by event. The chat path's ``provider.stream``
yields parsed chat chunks and insists on ``data: [DONE]``; the Responses API names its events
(``event: response.output_text.delta``) and ends without ``[DONE]``. The passthrough endpoints
(server/passthrough.py) must hand the client the provider's events exactly as sent, so this
reader keeps each event's bytes and parses its data only to watch it (usage, the last event).
``relay_bytes`` relays a stored response's stream byte for byte (server/response_resources.py;
its one-shot calls use the provider's ``request_json``).

Both use the provider's own pooled session, timeouts and error mapping (they live beside
the provider for that reason), so a passthrough call fails with the same messages, redaction and
retryability as a chat call: before the first event a stream's failure is retryable when the
provider's would be; after it, never (the client has part of the answer).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from thrifty import fastjson
from thrifty.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeoutError
from thrifty.providers.error_body import not_a_stream, stream_refused
from thrifty.providers.openai_compat import OpenAICompatProvider, billed_if, open_stream
from thrifty.responses_events import BuiltEvent


@dataclass
class SSEEvent:
    """One event: its bytes as received (ending in a blank line), its ``event:`` name and its
    ``data:`` parsed as JSON (None for ``[DONE]``, a comment-only event or no data)."""

    raw: bytes
    name: str | None = None
    data: Any = None
    done: bool = False  # ``data: [DONE]``


def streams(provider: object) -> bool:
    """Whether ``provider`` can stream an arbitrary endpoint (an HTTP OpenAI-compatible one)."""
    return isinstance(provider, OpenAICompatProvider)


def parse_event(lines: list[bytes], provider_name: str, started: bool) -> SSEEvent:
    """The event made of ``lines`` (each with its line ending; the blank line excluded)."""
    name: str | None = None
    data_lines: list[str] = []
    for line in lines:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text.startswith(":"):
            continue  # a comment (keep-alive); passed on with the event's bytes
        field, _, value = text.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data_lines.append(value)
    raw = b"".join(lines) + b"\n"
    if not data_lines:
        return SSEEvent(raw, name)
    payload = "\n".join(data_lines).strip()
    if payload == "[DONE]":
        return SSEEvent(raw, name, done=True)
    try:
        data = fastjson.loads(payload)
    except ValueError:
        # Read after the 200 (check_status): a first event that is not JSON was still billed.
        raise billed_if(UpstreamProtocolError(f"{provider_name}: stream event is not valid JSON",
                                              retryable=not started), not started) from None
    return SSEEvent(raw, name, data)


# The events a stream would have carried for a whole JSON answer of its endpoint, or None when
# the body is not one (Endpoint.whole_stream).
WholeStream = Callable[[Any], Iterable[BuiltEvent] | None]


def open_events(provider: OpenAICompatProvider, path: str, body: dict[str, Any],
                whole: WholeStream | None = None) -> AsyncGenerator[SSEEvent, None]:
    """``_events_once``, asked again without ``stream_options`` when the server refuses the field
    (the legacy completions endpoint adds it to price the stream), as chat streams are: the same
    retry and the same models learned (``OpenAICompatProvider.without_refused_options``)."""
    return provider.without_refused_options(body, lambda sent: _events_once(provider, path, sent, whole))


async def _events_once(provider: OpenAICompatProvider, path: str, body: dict[str, Any],
                       whole: WholeStream | None) -> AsyncGenerator[SSEEvent, None]:
    """POST ``body`` to ``base_url + path`` and yield its events until the provider closes the stream.

    A provider that ignores ``stream`` answers one JSON body: when ``whole`` makes the events of
    its endpoint from it, they are yielded as though the provider had sent them (the answer was
    given and billed; only its form is wrong), so the client gets the stream it asked for and the
    call is priced once from the answer's usage. Any other JSON body is its error, else a 502."""
    started = False
    accepted = False  # a 200: what fails before the first event, the provider ran and bills
    url = provider.url(path)
    try:
        async with open_stream(provider._get_session(), "POST", url, data=fastjson.dumps(body),
                               timeout=provider._stream_timeout) as resp:
            await provider.check_status(resp)
            accepted = True
            if resp.content_type == "application/json":
                # A server that ignores `stream`, or reports an error, answers one JSON object.
                raw = await resp.read()
                try:
                    parsed = fastjson.loads(raw)
                except ValueError:
                    # Not JSON to orjson: the standard library may still read it (NaN, a huge
                    # integer) and find the error it reports.
                    raise (not_a_stream(provider.name, raw, provider._redact)
                           or UpstreamProtocolError(f"{provider.name}: asked for a stream, got a JSON body",
                                                    retryable=False)) from None
                built = whole(parsed) if whole is not None else None
                if built is None:
                    raise stream_refused(provider.name, parsed, provider._redact)
                for part in built:
                    event = _built_event(part)
                    started = True
                    yield event
                return
            lines: list[bytes] = []
            async for line in resp.content:
                if line.strip():
                    lines.append(line)
                    continue
                if lines:
                    event = parse_event(lines, provider.name, started)
                    lines = []
                    started = True
                    yield event
            if lines:  # a last event without its blank line
                yield parse_event(lines, provider.name, started)
    except UpstreamError:
        raise
    except TimeoutError:
        seconds = provider.config.timeout_s
        what = "stream stalled for more than" if started else "no response within"
        raise billed_if(UpstreamTimeoutError(f"{provider.name}: {what} {seconds:g}s"),  # as chat streams: not retried
                        accepted and not started) from None
    except aiohttp.ClientError as exc:
        raise billed_if(provider._connection_error(exc, mid_stream=started), accepted and not started) from None


def _built_event(part: BuiltEvent) -> SSEEvent:
    """A built event as though the provider had sent it, from the name and data it was built
    with (not decoded again: the last Responses event holds the whole response)."""
    return SSEEvent(part, part.name, part.data, part.done)


async def relay_bytes(provider: OpenAICompatProvider, url: str) -> AsyncGenerator[bytes, None]:
    """A streamed retrieve: yields ``b""`` once the provider accepted it, then its bytes as sent."""
    started = False
    try:
        async with open_stream(provider._get_session(), "GET", url, timeout=provider._stream_timeout) as resp:
            await provider.check_status(resp)
            yield b""
            started = True
            async for chunk in resp.content.iter_any():
                yield chunk
    except UpstreamError:
        raise
    except TimeoutError:
        raise UpstreamTimeoutError(f"{provider.name}: stream stalled for more than "
                                   f"{provider.config.timeout_s:g}s") from None
    except aiohttp.ClientError as exc:
        raise provider._connection_error(exc, mid_stream=started) from None
