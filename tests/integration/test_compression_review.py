"""Compression as a chat-app team uses it (a long system prompt compressed once by a cheap model,
the history trimmed to a budget, tools on every call), over real HTTP: the gateway under uvicorn,
the real `openai` client, the mock upstream as the provider."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.served import attempt_rows, reset, sent, serving
from thrifty.compress import versions
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.tokens import count_messages

BODY = " ".join("Help customers with their account questions in a friendly and patient tone." for _ in range(40))
PLACEHOLDERS = f"You are HelpBot. {BODY} Greet the user as {{{{user_name}}}} and sign as {{agent}}."
FENCED = f"You are CodeBot. {BODY} Use this helper:\n```python\ndef score(x):\n    return x * x\n```"
NAMED = f"You are HelpBot for Zentrix. {BODY} Escalate chargebacks to Maria Lopez."
CUT = f"You are CutBot. {BODY} Escalate chargebacks to the billing desk only."
SHORT = "Help customers with their account questions in a friendly and patient tone, always."
MOCK = {"models": {
    "cheap": {"output_tokens": [150, 200], "answers": [
        {"pattern": r"(?s)^You are (HelpBot|CodeBot)", "answer": rf"You are \1. {SHORT} Greet the user and sign."},
        {"pattern": r"(?s)^You are CutBot\.", "answer": f"You are CutBot. {SHORT} " + "Be kind. " * 30
         + "Escalate chargebacks to the billing desk only."},
    ]},
    "stuck": {"faults": {"hang": True}},
    "big": {},
}}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def _config(tmp: Path, mock: RunningServer, compression: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234", "max_retries": 0,
                               **extra.pop("provider", {})}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
                   "stuck": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
                   "big": {"provider": "mock", "price": {"input": 2.5, "output": 10}},
                   "chat-long": {"provider": "mock", "upstream_model": "big", "price": {"input": 2.5, "output": 10}},
                   "chat-short": {"provider": "mock", "upstream_model": "big", "price": {"input": 2.5, "output": 10}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "compression": {"store": {"path": str(tmp / "compress.db"), "memo_ttl_s": 0}, **compression},
        "default_model": "big",
        **extra,
    }


def _tools(n: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": f"lookup_{k}", "description": "Look up an order in the catalogue by its number. " * 10,
        "parameters": {"type": "object", "properties": {"order": {"type": "string", "description": "order id " * 20}}},
    }} for k in range(n)]


def test_history_budget_counts_the_tool_schemas_sent_with_it(upstream: RunningServer, tmp_path: Path) -> None:
    """A chat app sends its tools on every call: they are prompt tokens, so a budget of N sent
    N plus the schemas (here 600 over a budget of 1,000) when only the messages were counted."""
    reset(upstream)
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(30):
        msgs += [{"role": "user", "content": f"Question {i} about widgets and their many uses please?"},
                 {"role": "assistant", "content": None, "tool_calls": [{"id": f"c{i}", "type": "function", "function": {
                     "name": "lookup_1", "arguments": '{"order": "A1"}'}}]},
                 {"role": "tool", "tool_call_id": f"c{i}", "content": "result " * 20},
                 {"role": "assistant", "content": f"Answer {i}."}]
    msgs.append({"role": "user", "content": "And the last one?"})
    tools = _tools(3)  # about 600 tokens
    cfg = _config(tmp_path, upstream, {"routes": {"big": {"history_max_tokens": 1000}}})
    with serving(cfg) as (_, client):
        for stream in (False, True):
            raw = client.chat.completions.with_raw_response.create(model="big", messages=msgs, tools=tools,
                                                                   stream=stream)
            int(raw.headers["x-thrifty-compressed-tokens"])
            if stream:
                list(raw.parse())
            body = sent(upstream, "big")[-1]
            assert count_messages(body["messages"], body["tools"]) <= 1000
            assert len(body["messages"]) > 6  # turns within the budget are still kept
            assert body["messages"][0] == msgs[0] and body["messages"][-1] == msgs[-1]
            assert body["messages"][1]["role"] == "user"  # the kept turns still open with a question


@pytest.mark.parametrize("prompt, lost", [(PLACEHOLDERS, "{{user_name}}"), (FENCED, "return x * x"),
                                          (NAMED, "Zentrix")])
def test_a_compression_that_drops_a_placeholder_code_or_a_name_is_refused(
        upstream: RunningServer, tmp_path: Path, prompt: str, lost: str) -> None:
    """The cheap model's rewrite kept the vocabulary, the numbers and every marked rule, so it
    passed: the app's {{user_name}} had nowhere to go, the code to reproduce was gone, the company
    the bot speaks for forgotten. Refused now: the original is sent."""
    reset(upstream)
    cfg = _config(tmp_path, upstream, {"model": "cheap", "system_prompt": {"min_tokens": 100},
                                       "routes": {"big": {"system_prompt": True}}})
    with serving(cfg) as (_, client):
        raw = client.chat.completions.with_raw_response.create(
            model="big", messages=[{"role": "system", "content": prompt}, {"role": "user", "content": "hi"}])
        assert "x-thrifty-compressed-tokens" not in raw.headers
    assert len(sent(upstream, "cheap")) == 1
    got = sent(upstream, "big")[-1]["messages"][0]["content"]
    assert got == prompt and lost in got


def test_a_compression_cut_at_its_output_limit_is_refused(upstream: RunningServer, tmp_path: Path) -> None:
    """The compression stopped at max_output_tokens (finish_reason "length"): the prompt's last
    rule, plain prose with no marker, number or name, was silently gone from every request."""
    reset(upstream)
    cfg = _config(tmp_path, upstream, {"model": "cheap",
                                       "system_prompt": {"min_tokens": 100, "max_output_tokens": 40},
                                       "routes": {"big": {"system_prompt": True}}})
    with serving(cfg) as (_, client):
        client.chat.completions.create(model="big", messages=[{"role": "system", "content": CUT},
                                                              {"role": "user", "content": "hi"}])
    assert sent(upstream, "big")[-1]["messages"][0]["content"] == CUT


def test_a_hanging_compressor_still_serves_the_request_uncompressed(upstream: RunningServer, tmp_path: Path) -> None:
    """The cheap model never answers: the request waited for it until server.request_timeout_s
    and failed with a 504. The compression now gets half the deadline at most; the request is
    answered with the original prompt and the abandoned call is in its ledger row."""
    reset(upstream)
    cfg = _config(tmp_path, upstream, {"model": "stuck", "system_prompt": {"min_tokens": 100},
                                       "routes": {"big": {"system_prompt": True}}},
                  provider={"timeout_s": 30}, server={"request_timeout_s": 4})
    with serving(cfg) as (gw, client):
        t0 = time.monotonic()
        reply = client.chat.completions.create(model="big", messages=[{"role": "system", "content": NAMED},
                                                                     {"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content and time.monotonic() - t0 < 4
        assert sent(upstream, "big")[-1]["messages"][0]["content"] == NAMED
        rows = attempt_rows(gw, "a.purpose, a.status, r.status AS request_status")
    assert [(r["purpose"], r["status"]) for r in rows] == [("compress", "error"), ("answer", "ok")]
    assert rows[0]["request_status"] == "ok"


def test_each_summary_limit_gets_its_own_summary(upstream: RunningServer, tmp_path: Path) -> None:
    """Two routes summarising the same dropped turns, one within 20 tokens, one within 300: the
    summary cache was keyed by the turns alone, so the 300-token route got the 20-token summary."""
    reset(upstream)
    routes = {"chat-long": {"history_max_tokens": 900, "summarize_history": True, "summary_max_tokens": 300},
              "chat-short": {"history_max_tokens": 620, "summarize_history": True, "summary_max_tokens": 20}}
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(20):
        msgs += [{"role": "user", "content": f"Tell me fact {i} about widgets, please, in detail."},
                 {"role": "assistant", "content": f"Fact {i}: widgets are useful in many situations. " * 3}]
    msgs.append({"role": "user", "content": "And the last one?"})
    summaries = []
    with serving(_config(tmp_path, upstream, {"model": "cheap", "routes": routes})) as (_, client):
        for model in ("chat-short", "chat-long"):
            client.chat.completions.create(model=model, messages=msgs)
            got = sent(upstream, "big")[-1]["messages"]
            summaries += [m["content"] for m in got if m["content"].startswith("Summary of the earlier")]
    assert len(sent(upstream, "cheap")) == 2 and len(summaries) == 2
    assert len(summaries[1]) > 2 * len(summaries[0])


def test_a_stored_compression_an_older_release_validated_is_checked_again(
        upstream: RunningServer, tmp_path: Path) -> None:
    """A store filled before the placeholder check holds a validated version without the app's
    {{user_name}}: its key (prompt and settings) still matched, so it kept being sent. It is now
    checked again when read, marked failed with the reason, and the original is sent."""
    reset(upstream)
    cfg = _config(tmp_path, upstream, {"model": "cheap", "system_prompt": {"min_tokens": 100},
                                       "routes": {"big": {"system_prompt": True}}})
    with serving(cfg) as (gw, client):
        stage = gw.compress_stage
        assert stage is not None
        h = versions.prompt_hash(PLACEHOLDERS, stage.prompts.settings)
        doc = versions.new_record(h, PLACEHOLDERS, 600)
        lossy = f"You are HelpBot. {SHORT} Greet the user and sign."
        versions.add_version(doc, lossy, 20, "validated", "", "cheap", 0.0)
        stage.store.put("prompt", h, doc)
        client.chat.completions.create(model="big", messages=[{"role": "system", "content": PLACEHOLDERS},
                                                              {"role": "user", "content": "hi"}])
        stored = stage.store.get("prompt", h)
    assert sent(upstream, "big")[-1]["messages"][0]["content"] == PLACEHOLDERS
    assert sent(upstream, "cheap") == []
    assert stored is not None and stored["versions"][0]["status"] == "failed"
    assert "{{user_name}}" in stored["versions"][0]["reason"]


def test_marking_a_stale_version_failed_keeps_an_approval_made_meanwhile(
        upstream: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the final review: the re-check wrote back the whole record it had read before
    checking, so a version approved meanwhile (`thrifty compress approve`) was undone."""
    from thrifty.compress import system_prompt

    reset(upstream)
    cfg = _config(tmp_path, upstream, {"model": "cheap", "system_prompt": {"min_tokens": 100},
                                       "routes": {"big": {"system_prompt": True}}})
    real_check = system_prompt.check
    with serving(cfg) as (gw, client):
        stage = gw.compress_stage
        assert stage is not None
        h = versions.prompt_hash(PLACEHOLDERS, stage.prompts.settings)
        doc = versions.new_record(h, PLACEHOLDERS, 600)
        versions.add_version(doc, f"You are HelpBot. {SHORT} Greet the user and sign.", 20, "validated", "", "cheap")
        stage.store.put("prompt", h, doc)

        def approved_meanwhile(*args: Any, **kwargs: Any) -> Any:
            fresh = stage.store.get("prompt", h)
            versions.add_version(fresh, PLACEHOLDERS, 600, "approved", "by a person")
            stage.store.put("prompt", h, fresh)
            return real_check(*args, **kwargs)

        monkeypatch.setattr(system_prompt, "check", approved_meanwhile)
        client.chat.completions.create(model="big", messages=[{"role": "system", "content": PLACEHOLDERS},
                                                              {"role": "user", "content": "hi"}])
        stored = stage.store.get("prompt", h)
    assert stored is not None
    assert [v["status"] for v in stored["versions"]] == ["failed", "approved"]


def test_a_hanging_summariser_still_serves_the_trimmed_request(upstream: RunningServer, tmp_path: Path) -> None:
    """The history summary has the same bound: its cheap model not answering cost the request a
    504; now the middle is dropped unsummarised and the conversation answered."""
    reset(upstream)
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(20):
        msgs += [{"role": "user", "content": f"Tell me fact {i} about widgets, please, in detail."},
                 {"role": "assistant", "content": f"Fact {i}: widgets are useful in many situations. " * 3}]
    msgs.append({"role": "user", "content": "And the last one?"})
    routes = {"big": {"history_max_tokens": 300, "summarize_history": True}}
    cfg = _config(tmp_path, upstream, {"model": "stuck", "routes": routes},
                  provider={"timeout_s": 30}, server={"request_timeout_s": 4})
    with serving(cfg) as (_, client):
        reply = client.chat.completions.create(model="big", messages=msgs)
    assert reply.choices[0].message.content
    got = sent(upstream, "big")[-1]["messages"]
    assert got[0] == msgs[0] and got[-1] == msgs[-1] and len(got) < len(msgs)
    assert not any(m["content"].startswith("Summary of the earlier") for m in got)
