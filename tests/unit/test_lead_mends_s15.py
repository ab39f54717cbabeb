"""Small mends of session 15: one reading of a response's finish reason, tool schemas counted
once when trimming history, and a collected Batch API answer priced and dated at one time."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from thrifty.types import cut_at_limit, finish_reason


@pytest.mark.parametrize(("response", "reason"), [
    ({"choices": [{"finish_reason": "length"}]}, "length"),
    ({"choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}]}, "stop"),
    ({"choices": []}, None),
    ({"choices": None}, None),
    ({"choices": ["nonsense"]}, None),
    ({"choices": [{"finish_reason": 7}]}, None),
    ({}, None),
])
def test_finish_reason_reads_the_first_choice_and_never_raises(response: dict[str, Any], reason: str | None) -> None:
    assert finish_reason(response) == reason
    assert cut_at_limit(response) is (reason == "length")


def test_trimming_tokenises_the_tool_schemas_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.compress import history

    calls: list[int] = []
    real = history.count_tools

    def counting(tools: list[Any] | None, **kw: Any) -> int:
        if tools:
            calls.append(1)
        return real(tools, **kw)

    monkeypatch.setattr(history, "count_tools", counting)
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": "word " * 40,
                                               "parameters": {"type": "object", "properties": {}}}} for i in range(5)]
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(30):
        messages += [{"role": "user", "content": f"question {i} " + "filler " * 30},
                     {"role": "assistant", "content": f"answer {i} " + "filler " * 30}]
    messages.append({"role": "user", "content": "the last question"})
    with_tools = history.messages_tokens(messages) + history.count_tools(tools)
    calls.clear()
    out = asyncio.run(history.trim(messages, with_tools // 3, schemas=tools))
    assert calls == [1]
    # The budget still holds the schemas: what is sent, schemas included, fits.
    assert out.dropped > 0
    assert history.messages_tokens(out.messages) + history.count_tools(tools) <= with_tools // 3
    assert out.saved_tokens == history.messages_tokens(messages) - history.messages_tokens(out.messages)


def test_a_collected_answer_without_created_is_priced_and_dated_at_one_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.batching import collector
    from thrifty.batching.jobs import Job, JobItem

    times = iter([datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 11, tzinfo=UTC)])
    monkeypatch.setattr(collector, "answered_at", lambda body: next(times))
    priced: list[datetime] = []
    monkeypatch.setattr(collector, "price_answer", lambda request, body, info, when=None: (priced.append(when),
                                                                                          (None, None))[1])
    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    job = Job(job_id="j", created=0.0, updated=0.0, status="finished", model="m", provider="p", task="t",
              labels=None, round=0, input_file_id=None, batch_id="b", provider_status="completed", n_items=1,
              error=None)
    item = JobItem(seq=0, item_id="0", input=json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                   status="ok", round=0, tries=1, output=json.dumps(body), error=None, prompt_tokens=0,
                   completion_tokens=0, cost_usd=None)
    answer = collector.Collector._outcome(job, item, None)
    assert isinstance(answer, collector.BatchAnswer)
    assert priced == [answer.answered] == [datetime(2026, 1, 1, 10, tzinfo=UTC)]


def test_a_background_responses_amendment_records_its_cache_writes(tmp_path: Any) -> None:
    # The amendment wrote every token count of the finished run but the cache writes, which
    # stayed at the create's 0 (and the report then priced them as plain input).
    from fixtures.rows import att, req
    from thrifty.ledger.store import open_store
    from thrifty.server.stored_responses import Outcome, _amendment
    from thrifty.types import Usage

    store = open_store(path=str(tmp_path / "ledger.db"), check=True)
    try:
        store.write([req(1, "m", 0.001, 0.01)], [att(1)])
        usage = Usage(prompt_tokens=2000, cached_tokens=500, cache_write_tokens=1200, completion_tokens=40)
        steps = _amendment("r1", "resp_1", Outcome(usage, 0.004, "reported"))
        assert store.execute_all(steps[1:]) is None  # past the claim of a stored_responses row
        rows = [store.query(f"SELECT prompt_tokens, cached_tokens, cache_write_tokens FROM {table}"
                            " WHERE request_id = 'r1'") for table in ("requests", "attempts")]
    finally:
        store.close()
    assert rows == [[(2000, 500, 1200)], [(2000, 500, 1200)]]


def test_responses_style_usage_reads_cache_writes_in_its_details() -> None:
    from thrifty.types import Usage

    usage = Usage.from_openai({"input_tokens": 3000, "output_tokens": 9,
                               "input_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 1500}})
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens) == (3000, 1000, 1500)
    assert usage.uncached_prompt_tokens == 500


@pytest.mark.parametrize(("value", "expected"), [(1e3, 1000), (100.0, 100), (7, 7), ("12", 12)])
def test_admin_limits_in_exponent_form_are_whole_numbers(value: Any, expected: int) -> None:
    from thrifty.ops.admin import _whole

    assert _whole({"tpm": value}, "tpm") == expected


@pytest.mark.parametrize(("value", "says"), [(1.5, "must be a whole number"), (1e20, "is too large"),
                                             (True, "must be a whole number")])
def test_admin_limits_that_are_no_whole_number_or_too_large_say_so(value: Any, says: str) -> None:
    from thrifty.errors import InvalidRequestError
    from thrifty.ops.admin import _whole

    with pytest.raises(InvalidRequestError) as err:
        _whole({"tpm": value}, "tpm")
    assert says in err.value.message
