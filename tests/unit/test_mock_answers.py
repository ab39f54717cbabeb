"""Deterministic answer planning: strategies, quality, limits, formats, tools, logprobs, usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from thrifty.errors import InvalidRequestError
from thrifty.mock.behaviour import ModelBehaviour
from thrifty.mock.completion import build_plan, validate
from thrifty.mock.usage import PromptCache, build_usage
from thrifty.tokens import count_messages, count_text


def body(text: str = "What is the capital of France?", **params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **params}


def behaviour(**fields: Any) -> ModelBehaviour:
    return ModelBehaviour.model_validate(fields)


def test_same_request_same_answer_and_seed_or_model_changes_it() -> None:
    b = behaviour()
    first = build_plan(0, body(), "m", b).choices[0].content
    assert first == build_plan(0, body(), "m", b).choices[0].content
    assert first is not None and first.startswith("[m] answer to: What is the capital of France?")
    assert build_plan(0, body(seed=5), "m", b).choices[0].content != first
    assert build_plan(1, body(), "m", b).choices[0].content != first
    assert build_plan(0, body(), "other", b).choices[0].content != first


def test_default_lengths_vary_within_range() -> None:
    b = behaviour(output_tokens=[5, 30])
    lengths = {build_plan(0, body(f"question {i}"), "m", b).choices[0].completion_tokens for i in range(30)}
    assert len(lengths) > 5


def test_fixed_and_mapped_answers() -> None:
    assert build_plan(0, body(), "m", behaviour(answer="fixed")).choices[0].content == "fixed"
    rules = [{"pattern": r"capital of (\w+)", "answer": r"The capital of \1 is Paris."}]
    mapped = build_plan(0, body(), "m", behaviour(answers=rules)).choices[0].content
    assert mapped == "The capital of France is Paris."


def test_wrong_rate_swaps_option_letters_deterministically() -> None:
    b = behaviour(answers=[{"pattern": "Q", "answer": "Answer: B"}], wrong_rate=0.3)
    answers = [build_plan(0, body(f"Q{i}"), "m", b).choices[0].content for i in range(300)]
    wrong = [a for a in answers if a != "Answer: B"]
    assert 50 <= len(wrong) <= 130
    assert all(a in ("Answer: A", "Answer: C", "Answer: D") for a in wrong)
    assert answers == [build_plan(0, body(f"Q{i}"), "m", b).choices[0].content for i in range(300)]


def test_n_choices_and_prompt_tokens() -> None:
    plan = build_plan(0, body(n=3), "m", behaviour())
    assert len(plan.choices) == 3
    assert plan.prompt_tokens == count_messages(body()["messages"])
    assert plan.completion_tokens == sum(count_text(c.content or "") for c in plan.choices)


def test_max_tokens_truncates_with_length() -> None:
    plan = build_plan(0, body(max_tokens=4), "m", behaviour(output_tokens=[40, 40]))
    choice = plan.choices[0]
    assert choice.finish_reason == "length" and choice.completion_tokens == 4
    assert count_text(choice.content or "") == 4


def test_reasoning_tokens_count_as_output_and_use_the_budget() -> None:
    b = behaviour(reasoning_tokens=[100, 100], output_tokens=[20, 20])
    plan = build_plan(0, body(), "m", b)
    choice = plan.choices[0]
    assert choice.reasoning_tokens == 100
    assert choice.completion_tokens == 100 + count_text(choice.content or "")
    limited = build_plan(0, body(max_completion_tokens=105), "m", b).choices[0]
    assert limited.reasoning_tokens == 100 and limited.completion_tokens == 105
    assert limited.finish_reason == "length"


def test_stop_sequences() -> None:
    plan = build_plan(0, body(stop=["capital"]), "m", behaviour())
    assert plan.choices[0].content == "[m] answer to: What is the "


def test_json_modes_give_valid_json() -> None:
    fmt: dict[str, Any] = {"type": "json_object"}
    assert "answer" in json.loads(
        build_plan(0, body(response_format=fmt), "m", behaviour()).choices[0].content or ""
    )
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer"}, "ok": {"type": "boolean"}},
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    value = json.loads(build_plan(0, body(response_format=fmt), "m", behaviour()).choices[0].content or "")
    assert isinstance(value["city"], str) and isinstance(value["n"], int) and isinstance(value["ok"], bool)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]


def test_tool_calls_by_mode() -> None:
    weather = body("please get_weather for Paris", tools=TOOLS)
    plain = body("hello", tools=TOOLS)
    call = build_plan(0, weather, "m", behaviour()).choices[0]
    assert call.finish_reason == "tool_calls" and call.content is None and call.tool_calls is not None
    args = json.loads(call.tool_calls[0]["function"]["arguments"])
    assert args["unit"] in ("c", "f") and isinstance(args["city"], str)
    assert build_plan(0, plain, "m", behaviour()).choices[0].tool_calls is None
    assert build_plan(0, plain, "m", behaviour(tool_calls="always")).choices[0].tool_calls
    assert build_plan(0, {**plain, "tool_choice": "required"}, "m", behaviour()).choices[0].tool_calls
    assert build_plan(0, {**weather, "tool_choice": "none"}, "m", behaviour()).choices[0].tool_calls is None
    assert build_plan(0, weather, "m", behaviour(tool_calls="never")).choices[0].tool_calls is None
    after = {
        **weather,
        "messages": [*weather["messages"], {"role": "tool", "content": "20C", "tool_call_id": "x"}],
    }
    assert build_plan(0, after, "m", behaviour(tool_calls="always")).choices[0].tool_calls is None


def test_logprobs_are_deterministic_and_plausible() -> None:
    plan = build_plan(0, body(logprobs=True, top_logprobs=3), "m", behaviour())
    entries = plan.choices[0].logprobs
    assert entries is not None and "".join(e["token"] for e in entries) == plan.choices[0].content
    for entry in entries:
        assert -2 < entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["top_logprobs"][1]["logprob"] < entry["logprob"]
    again = build_plan(0, body(logprobs=True, top_logprobs=3), "m", behaviour()).choices[0].logprobs
    assert again == entries


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"content": "x"}]},
        body(n=0),
        body(max_tokens=0),
        body(top_logprobs=2),
        body(stop=[1]),
        body(response_format={"type": "yaml"}),
    ],
)
def test_validation_rejects_bad_requests(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        validate(bad)


def test_usage_conventions_and_cost() -> None:
    openai = build_usage(behaviour(), 100, 30, 10, 0)
    assert openai["total_tokens"] == 130
    assert openai["completion_tokens_details"]["reasoning_tokens"] == 10
    assert "prompt_cache_hit_tokens" not in openai and "cost" not in openai
    deepseek = build_usage(behaviour(usage_convention="deepseek"), 100, 30, 0, 64)
    assert deepseek["prompt_cache_hit_tokens"] == 64 and deepseek["prompt_cache_miss_tokens"] == 36
    assert deepseek["prompt_tokens_details"]["cached_tokens"] == 64
    priced = build_usage(behaviour(price={"input": 2, "output": 8, "cached_input": 1}), 1000, 500, 0, 200)
    assert priced["cost"] == pytest.approx((800 * 2 + 200 * 1 + 500 * 8) / 1e6)


def test_prompt_cache_reports_128_token_blocks_of_repeated_prefixes() -> None:
    cache = PromptCache()
    long_system = {"role": "system", "content": "word " * 1500}
    first = [long_system, {"role": "user", "content": "first question"}]
    second = [long_system, {"role": "user", "content": "second question"}]
    assert cache.lookup_and_store("m", first, None) == 0
    cached = cache.lookup_and_store("m", second, None)
    assert cached >= 1024 and cached % 128 == 0 and cached <= count_messages(second)
    assert cache.lookup_and_store("other-model", second, None) == 0
    short = [{"role": "user", "content": "hi"}]
    assert cache.lookup_and_store("m", short, None) == 0 and cache.lookup_and_store("m", short, None) == 0
    cache.reset()
    assert cache.lookup_and_store("m", second, None) == 0
