"""The wire rules of the passed-through endpoints (server/responses_api.py,
server/completions_legacy.py, providers/raw_http.py) on events the mock upstream never sends."""

from __future__ import annotations

import json

import pytest

from thrifty.errors import InvalidRequestError, UpstreamProtocolError, UpstreamStatusError
from thrifty.media_tokens import image_tokens
from thrifty.providers.compat import CompatConfig
from thrifty.providers.raw_http import SSEEvent, parse_event
from thrifty.server.completions_legacy import CompletionsEndpoint
from thrifty.server.passthrough import StreamState
from thrifty.server.responses_api import ResponsesEndpoint
from thrifty.tokens import content_text, count_messages


def event(data: object, name: str | None = None) -> SSEEvent:
    lines = ([f"event: {name}\n".encode()] if name else []) + [b"data: " + json.dumps(data).encode() + b"\n"]
    return parse_event(lines, "p", started=True)


def test_parse_event_keeps_bytes_and_reads_names_done_and_comments() -> None:
    ev = parse_event([b"event: response.created\r\n", b'data: {"a": 1}\r\n'], "p", started=False)
    assert (ev.name, ev.data, ev.done) == ("response.created", {"a": 1}, False)
    assert ev.raw == b'event: response.created\r\ndata: {"a": 1}\r\n\n'
    assert parse_event([b"data: [DONE]\n"], "p", started=True).done
    comment = parse_event([b": keep-alive\n"], "p", started=True)
    assert comment.data is None and comment.raw == b": keep-alive\n\n"
    with pytest.raises(UpstreamProtocolError) as err:
        parse_event([b"data: {broken\n"], "p", started=False)
    assert err.value.retryable  # nothing reached the client yet


def test_failed_response_ends_the_stream_as_a_failure_with_its_usage() -> None:
    state = StreamState()
    usage = {"input_tokens": 7, "output_tokens": 3}
    ResponsesEndpoint().watch(event({"type": "response.failed", "response": {
        "usage": usage, "error": {"code": "server_error", "message": "model crashed"}}}, "response.failed"), state)
    assert state.final and state.usage == usage and state.failure == "response failed: model crashed"
    state = StreamState()
    ResponsesEndpoint().watch(event({"type": "error", "message": "overloaded"}, "error"), state)
    assert state.final and state.failure == "stream error: overloaded"


def test_responses_text_deltas_are_collected_for_offline_counts() -> None:
    state = StreamState()
    endpoint = ResponsesEndpoint()
    for kind in ("response.output_text.delta", "response.function_call_arguments.delta", "response.created"):
        endpoint.watch(event({"type": kind, "delta": "ab"}), state)
    assert state.texts == ["ab", "ab"] and not state.final


def test_responses_error_event_makes_the_sdk_raise() -> None:
    raw = ResponsesEndpoint().error_event(UpstreamStatusError("p: upstream returned HTTP 500", status=500))
    name, data = raw.decode().strip().split("\n")
    payload = json.loads(data[len("data: "):])
    assert name == "event: error" and payload["type"] == "error"
    assert payload["error"]["message"] == payload["message"] == "p: upstream returned HTTP 500"


def test_completions_usage_is_stripped_only_when_not_asked() -> None:
    endpoint = CompletionsEndpoint()
    usage_chunk = event({"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    mixed = event({"id": "c", "choices": [{"text": "hi", "index": 0}], "usage": {"completion_tokens": 2}})
    assert endpoint.client_bytes(usage_chunk, wants_usage=False) is None
    assert endpoint.client_bytes(usage_chunk, wants_usage=True) == usage_chunk.raw
    stripped = endpoint.client_bytes(mixed, wants_usage=False)
    assert stripped is not None and "usage" not in json.loads(stripped[len(b"data: "):])
    state = StreamState()
    for ev in (mixed, usage_chunk, parse_event([b"data: [DONE]\n"], "p", started=True)):
        endpoint.watch(ev, state)
    assert state.final and state.texts[0] == "hi" and state.usage == usage_chunk.data["usage"]


def test_completions_upstream_body_asks_for_usage_unless_compat_drops_it() -> None:
    endpoint = CompletionsEndpoint()
    body = {"model": "m", "prompt": "x", "stream": True, "stream_options": {"x": 1}}
    assert endpoint.upstream_body(body, "up", None)["stream_options"] == {"x": 1, "include_usage": True}
    dropped = endpoint.upstream_body(body, "up", CompatConfig(drop_params=["stream_options", "prompt"]))
    assert "stream_options" not in dropped and dropped["prompt"] == "x"  # prompt is never dropped
    assert "stream_options" not in endpoint.upstream_body({**body, "stream": False}, "up", None)


def test_stand_in_chat_request_carries_what_budgets_read() -> None:
    chat = ResponsesEndpoint().parse({"model": "m", "instructions": "Be brief.", "max_output_tokens": 64,
                                      "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                                                {"type": "function_call_output", "call_id": "c1", "output": "42"}]})
    assert chat.output_limit() == 64 and chat.messages[0] == {"role": "system", "content": "Be brief."}
    # Content parts kept as they are: their text reads as chat's, an image counts (media_tokens).
    assert chat.messages[1] == {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    assert content_text(chat.messages[1]["content"]) == "hi" and "42" in chat.messages[2]["content"]
    image = {"type": "input_image", "image_url": "https://example.com/cat.png"}  # size unknown: the maximum
    seen = ResponsesEndpoint().parse({"model": "m", "input": [{"role": "user", "content": [image]}]})
    assert count_messages(seen.messages) - count_messages([{"role": "user", "content": ""}]) == image_tokens(None, None)
    assert ResponsesEndpoint().parse({"model": "m", "previous_response_id": "resp_1"}).model == "m"
    legacy = CompletionsEndpoint().parse({"model": "m", "prompt": [[1, 2, 3]], "max_tokens": 5, "n": 2})
    assert legacy.output_limit() == 5 and legacy.choices() == 2 and len(legacy.messages) == 1
    with pytest.raises(InvalidRequestError):
        CompletionsEndpoint().parse({"model": "m", "prompt": "x", "n": 0})


def test_a_whole_completions_chunks_carry_the_index_they_were_ordered_by() -> None:
    """A provider's choice without an integer index (null, a string) is streamed as choice 0, the
    index it was sorted by; the client never sees a null or a string index."""
    from thrifty.completion_events import completion_chunks

    whole = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
             "choices": [{"index": 1, "text": "b", "finish_reason": "stop"},
                         {"index": None, "text": "a", "finish_reason": "stop"}]}
    indexes = [c["choices"][0]["index"] for c in completion_chunks(whole, 5) if c["choices"]]
    assert indexes and set(indexes) == {0, 1} and indexes == sorted(indexes)
