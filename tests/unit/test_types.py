from __future__ import annotations

import pytest

from thrifty.errors import InvalidRequestError
from thrifty.types import ChatRequest


def body(**kw: object) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m"}, "messages"),
        (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (body(messages=[{"role": "user"}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages[0].content"),
        (body(temperature="hot"), "temperature"),
        (body(max_tokens=1.5), "max_tokens"),
        (body(n=0), "n"),
        (body(stream="yes"), "stream"),
        (body(tools={"not": "a list"}), "tools"),
    ],
)
def test_bad_requests_name_the_field(bad: object, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as err:
        ChatRequest.from_body(bad)
    assert err.value.param == param
    assert err.value.status == 400


def test_every_parameter_passes_through_and_thrifty_keys_do_not() -> None:
    b = body(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="auto", seed=7, logprobs=True,
             response_format={"type": "json_object"}, user="u1", metadata={"task": "faq"}, store=True,
             thrifty={"task": "faq"}, cache=False, stream=True, stream_options={"include_usage": False})
    req = ChatRequest.from_body(b)
    sent = req.to_body("upstream-name")
    assert sent["model"] == "upstream-name"
    for k in ("tools", "tool_choice", "seed", "logprobs", "response_format", "user", "metadata"):
        assert sent[k] == b[k]
    assert "thrifty" not in sent and "cache" not in sent
    # the gateway always asks for usage on streams so it can price them
    assert sent["stream_options"] == {"include_usage": True}
    assert req.options == {"task": "faq", "cache": False}
    assert not req.include_usage


def test_assistant_tool_call_message_without_content_is_valid() -> None:
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                    "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "42"}]
    assert len(ChatRequest.from_body({"model": "m", "messages": msgs}).messages) == 3


def test_cache_shorthand_and_thrifty_cache_that_disagree_are_refused() -> None:
    """Found by review: `"cache": true` beside `"thrifty": {"cache": false}` served a cached
    answer (the shorthand overwrote the option); agreeing ones are fine."""
    import pytest

    from thrifty.errors import InvalidRequestError

    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidRequestError, match="disagree") as err:
        ChatRequest.from_body({"model": "m", "messages": msgs, "cache": True, "thrifty": {"cache": False}})
    assert err.value.param == "cache"
    agreed = ChatRequest.from_body({"model": "m", "messages": msgs, "cache": False, "thrifty": {"cache": False}})
    assert agreed.options == {"cache": False}
