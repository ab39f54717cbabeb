"""What a provider's error body says, in whichever shape its server writes it.

OpenAI-compatible servers do not agree on the error body, and the client of the gateway reads
only what thrifty makes of it (``provider: upstream returned HTTP 400: <message>``, ``param``,
``code``). Read as OpenAI's shape alone, the others reached the client as their raw JSON cut at
200 characters, often mid-sentence before the part that says what to change ("... Please
reduce the length of the mess"), and without the ``param``. The shapes read here:

- OpenAI, OpenRouter, llama.cpp, Ollama's /v1: ``{"error": {"message", "type", "param", "code"}}``
  (OpenRouter's and llama.cpp's ``code`` is the HTTP status, a number);
- vLLM before its OpenAI-shaped errors, FastChat, LMDeploy: the same fields at the top level,
  with ``"object": "error"``;
- TGI, Ollama's native API, LM Studio: ``{"error": "text"}``;
- FastAPI-based servers: ``{"detail": "text"}`` or a validation list ``{"detail": [{"msg"...}]}``;
- Gemini's OpenAI-compatible endpoint: any of these in a one-item list, ``[{"error": {...}}]``;
- anything else (a proxy's HTML page): its first 200 characters.

``embedded_error`` finds an error a provider reports inside an HTTP 200 answer (OpenRouter does
once the model started: "any error occurred while the LLM is producing the output will be
emitted in the response body"), which otherwise read as a malformed chat answer with no reason,
and on the passthrough endpoints as a success the SDK filled with None.
``upstream_error`` turns either into the thrifty error the client gets (``answer_error`` both
steps, for a 200 body); ``not_a_stream`` (``stream_refused`` once decoded) does for a JSON body answering a request for a stream
(where the reason was lost too); ``stream_failure`` reads an error event of a relayed stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thrifty.errors import UpstreamError, UpstreamProtocolError, UpstreamRateLimitError, UpstreamStatusError

# How much of a body that is not a known error shape goes into the message.
_RAW_CHARS = 200


@dataclass(frozen=True)
class ErrorDetail:
    """An error body's message, ``param`` and ``code`` (strings only: OpenAI's codes are names),
    and the HTTP status it claims (``code`` as a number between 400 and 599), if any."""

    message: str
    param: str | None = None
    code: str | None = None
    status: int | None = None
    # OpenRouter's `metadata` (e.g. the moderation `reasons` of a 403 for flagged input), kept
    # for ``UpstreamStatusError`` to tell the client's fault from the gateway's key.
    metadata: dict[str, Any] | None = None

    def openai_body(self) -> dict[str, Any]:
        """The detail as OpenAI's error body (what ``UpstreamStatusError`` reads param and code from)."""
        body: dict[str, Any] = {"message": self.message, "param": self.param, "code": self.code}
        if self.metadata is not None:
            body["metadata"] = self.metadata
        return {"error": body}


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _fields(obj: dict[str, Any]) -> ErrorDetail:
    """An error object with OpenAI's fields (nested under ``error`` or at the top level)."""
    code = obj.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else None
    param = obj.get("param")
    meta = obj.get("metadata")
    return ErrorDetail(_text(obj.get("message")), param if isinstance(param, str) else None,
                       code if isinstance(code, str) else None, status, meta if isinstance(meta, dict) else None)


def _detail(value: Any) -> str:
    """FastAPI's ``detail``: a text, or its validation errors' messages."""
    if isinstance(value, list):
        msgs = [f"{'.'.join(str(p) for p in e.get('loc') or [])}: {e.get('msg')}".lstrip(": ")
                for e in value if isinstance(e, dict) and e.get("msg")]
        return "; ".join(msgs)
    return _text(value)


def error_in(body: Any) -> ErrorDetail | None:
    """The error a parsed JSON body states, or None when it states none in a known shape."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]  # Gemini wraps its error object in a list
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):
        return _fields(err)
    if _text(err):
        return ErrorDetail(_text(err))
    if body.get("object") == "error" or (_text(body.get("message")) and "choices" not in body):
        return _fields(body)
    detail = _detail(body.get("detail"))
    return ErrorDetail(detail) if detail else None


def read_error(raw: bytes, redact: Callable[[str], str] | None = None) -> ErrorDetail:
    """What an error response's body says (an empty message when it is empty). ``redact`` masks
    a body in no known shape before it is cut: cut first, a key echoed across the cut no longer
    matched the configured secret and its first characters reached the client."""
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except ValueError:
        parsed = None
    found = error_in(parsed)
    if found is not None and found.message:
        return found
    # Masked before the cut, over a bounded prefix (a proxy's page may be megabytes): a secret
    # straddling this prefix's end lies far past what is shown anyway.
    text = raw[:_RAW_CHARS * 20].decode("utf-8", "replace")
    text = (redact(text) if redact is not None else text)[:_RAW_CHARS].strip()
    return ErrorDetail(text, found.param if found else None, found.code if found else None,
                       found.status if found else None)


def embedded_error(body: dict[str, Any], answer: str = "choices") -> ErrorDetail | None:
    """An error reported in place of an answer (an HTTP 200 body, or a stream chunk, without the
    ``answer`` array, e.g. a chat completion's ``choices`` or an embeddings list's ``data``, but
    with an error), or None. An ``error`` beside the answer array counts too: OpenRouter reports a
    failure after the model started as a chunk with a top-level ``error`` and a choice whose
    finish_reason is "error" (openrouter.ai/docs/api/reference/errors-and-debugging), and the
    openai SDK raises on any event with an ``error``; read as an answer, the cut answer passed
    for a success (ledger ``ok``, a cascade tier's answer). Beside an answer only an error that
    says something counts: some proxies always write the field, null-filled when nothing failed."""
    found: ErrorDetail | None
    if isinstance(body.get(answer), list):
        err = body.get("error")
        if not err:  # an ordinary chunk (the hot path: every chunk of every stream comes here)
            return None
        found = _fields(err) if isinstance(err, dict) else ErrorDetail(_text(err))
        if not (found.message or found.code or found.status):
            return None
    else:
        found = error_in(body)
        if found is None:
            return None
    return found if found.message else ErrorDetail("no message", found.param, found.code, found.status)


def upstream_error(provider: str, status: int, detail: ErrorDetail, redact: Callable[[str], str], *,
                   retry_after: float | None = None, embedded: bool = False) -> UpstreamError:
    """The error for provider ``status`` and what its body said; ``embedded``: the provider
    answered 200 and reported the error (with this status) in place of the answer. A 429 is a
    rate limit; otherwise ``UpstreamStatusError`` decides what the client is told."""
    said = f"reported error {status} in its answer" if embedded else f"returned HTTP {status}"
    message = redact(f"{provider}: upstream {said}" + (f": {detail.message}" if detail.message else ""))
    if status == 429:
        return UpstreamRateLimitError(message, retry_after=retry_after)
    body = json.loads(redact(json.dumps(detail.openai_body())))
    err = UpstreamStatusError(message, status=status, body=body)
    if retry_after is not None and status >= 500:
        err.retry_after = retry_after
    return err


def answer_error(provider: str, body: dict[str, Any], redact: Callable[[str], str],
                 answer: str = "choices") -> UpstreamError | None:
    """The error for an error reported in a 200 ``body`` in place of the answer (the status it
    claims, else 502), or None when it reports none."""
    reported = embedded_error(body, answer)
    if reported is None:
        return None
    return upstream_error(provider, reported.status or 502, reported, redact, embedded=True)


def stream_failure(event: dict[str, Any], answer: str = "choices") -> str | None:
    """What an event of a relayed stream reports in place of a chunk (``stream error: ...``), or
    None. Read like a 200 body: an error as a text (TGI) or in vLLM's top-level shape said
    "unknown error", or passed for an empty chunk."""
    reported = embedded_error(event, answer)
    return None if reported is None else f"stream error: {reported.message}"


def not_a_stream(provider: str, raw: bytes, redact: Callable[[str], str]) -> UpstreamError | None:
    """The error for a JSON body where a stream was asked for: the error it reports (a server
    that answers errors with a 200 and JSON, whatever was asked), else a server ignoring
    ``stream`` (not retried: it would answer the same). None when ``raw`` is no JSON at all
    (events sent under a JSON content type)."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return stream_refused(provider, parsed, redact)


def stream_refused(provider: str, parsed: Any, redact: Callable[[str], str]) -> UpstreamError:
    """``not_a_stream`` for a body already decoded (the passthroughs decode it once to see
    whether it is an answer they can stream, providers/raw_http.py)."""
    reported = answer_error(provider, parsed, redact) if isinstance(parsed, dict) else None
    if reported is not None:
        return reported
    return UpstreamProtocolError(f"{provider}: asked for a stream, got a JSON body", retryable=False)


def whole_choices(body: Any, field: str, kind: type) -> bool:
    """``body`` is an answer of ``choices``, each with ``field`` of type ``kind``: a chat
    completion's ``message`` (dict), a text completion's ``text`` (str). Whole answers sent where
    a stream was asked for are recognised by it, each endpoint by its own field."""
    choices = body.get("choices") if isinstance(body, dict) else None
    return (isinstance(choices, list) and bool(choices)
            and all(isinstance(c, dict) and isinstance(c.get(field), kind) for c in choices))
