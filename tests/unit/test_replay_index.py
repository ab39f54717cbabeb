import json
from pathlib import Path

import pytest

from thrifty.errors import NotFoundError, UpstreamStatusError
from thrifty.evaluation.dataset import load_outcomes
from thrifty.providers.replay import ReplayIndex, ReplayProvider, request_text
from thrifty.tokens import count_messages, count_text


@pytest.fixture
def index(tmp_path: Path) -> ReplayIndex:
    path = tmp_path / "log.jsonl"
    lines = [
        {"prompt": "What is  2+2?\n", "task": "math",
         "outcomes": {"small": {"score": 1, "response": "4", "cost": 0.001},
                      "big": {"score": 1, "response": "Four.", "cost": 0.03}}},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Capital of France?"}],
         "outcomes": {"small": {"score": 0, "response": "Lyon", "usage": {"prompt_tokens": 12, "completion_tokens": 2}},
                      "big": {"score": 1, "response": "Paris", "cost": 0.02}}},
        {"prompt": "dup", "outcomes": {"small": {"response": "first", "cost": 1.0}}},
        {"prompt": "dup", "outcomes": {"small": {"response": "second", "cost": 2.0}}},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    return ReplayIndex(load_outcomes(path))


def body(text: str, model: str, **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def test_known_prompt_gets_the_recorded_answer_cost_and_counted_usage(index):
    r = index.complete(body("What is 2+2?", "big"))  # whitespace differences do not matter
    assert r["choices"][0]["message"]["content"] == "Four."
    assert r["usage"]["cost"] == 0.03
    assert r["usage"]["completion_tokens"] == count_text("Four.")
    assert r["usage"]["prompt_tokens"] == count_messages([{"role": "user", "content": "What is  2+2?\n"}])


def test_recorded_usage_is_reported_as_is(index):
    messages = [{"role": "system", "content": "other system"}, {"role": "user", "content": "Capital of France?"}]
    r = index.complete({"model": "small", "messages": messages})
    assert r["usage"]["prompt_tokens"] == 12 and r["usage"]["completion_tokens"] == 2
    assert "cost" not in r["usage"]


def test_unknown_prompt_or_model_is_not_found(index):
    with pytest.raises(NotFoundError) as exc:
        index.complete(body("never seen", "big"))
    assert exc.value.status == 404
    with pytest.raises(NotFoundError, match="model 'huge'"):
        index.complete(body("What is 2+2?", "huge"))


def test_rows_sharing_a_prompt_are_told_apart_by_eval_id(index):
    assert index.complete(body("dup", "small"))["choices"][0]["message"]["content"] == "first"
    r = index.complete(body("dup", "small", metadata={"eval_id": "log.jsonl#3"}))
    assert r["choices"][0]["message"]["content"] == "second"
    assert r["usage"]["cost"] == 2.0


def test_the_index_holds_no_scores(index):
    for rows in index._by_text.values():
        assert all(item.scores == {} for item in rows)


def test_request_text_joins_user_parts():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a  b"}]}, {"role": "assistant", "content": "x"},
            {"role": "user", "content": "c"}]
    assert request_text(msgs) == "a b c"


async def test_provider_maps_not_found_to_a_non_retryable_404(index):
    provider = ReplayProvider(index)
    with pytest.raises(UpstreamStatusError) as exc:
        await provider.complete(body("never seen", "big"))
    # An upstream 404 reaches clients as a 502 (errors.UpstreamStatusError): the gateway's model
    # setup, not the client's request, is what the provider does not know.
    assert exc.value.upstream_status == 404 and exc.value.status == 502 and not exc.value.retryable
    chunks = [c async for c in provider.stream(body("What is 2+2?", "small"))]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "4"
