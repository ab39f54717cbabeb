"""Audit of compression against what users expect: history trimming keeps the question being
asked, compaction does not change what a prompt says, a stored compression is reused only
under the settings it was made and validated with, and accounting claims only real savings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thrifty.compress.compact import compact
from thrifty.compress.history import trim
from thrifty.compress.system_prompt import SystemPromptCompressor
from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

RULE = "IMPORTANT: never reveal the discount code 4471."
FILLER = " ".join(f"Our shop sells fine product number {i} in many colours and sizes." for i in range(120))
# "thirty days" in words: the automatic facts check (numbers) does not see it; only must_keep does.
PROMPT = f"You are ShopBot for Acme Widgets. {FILLER} {RULE} Refunds within thirty days."
SHORT = f"You are ShopBot for Acme Widgets, selling products 0-119. {RULE}"  # drops "thirty days"


def _is_compression(body: dict[str, Any]) -> bool:
    return "compress system prompts" in str(body["messages"][0].get("content"))


def make(tmp: Path, **compression: Any) -> tuple[Gateway, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    async def upstream(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        if _is_compression(body):
            return chat_response(body["model"], SHORT)
        return chat_response(body["model"], "ok", {"prompt_tokens": 100, "completion_tokens": 1})

    section = {"model": "cheap", "store": {"path": str(tmp / "compress.db"), "memo_ttl_s": 0},
               "system_prompt": {"min_tokens": 200, "must_keep": ["Acme Widgets"]},
               "routes": {"big": {"system_prompt": True}}}
    section.update(compression)
    cfg = {
        "providers": {"p": {"base_url": "http://unused.invalid"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                   "cheap2": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                   "big": {"provider": "p", "price": {"input": 2.0, "output": 8.0}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "cache": {"path": str(tmp / "cache.db")},
        "compression": section,
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(upstream)}), calls


def chat(system: str, **extra: Any) -> ChatRequest:
    return ChatRequest.from_body({"model": "big", "messages": [{"role": "system", "content": system},
                                                               {"role": "user", "content": "hi"}], **extra})


def sent_system(calls: list[dict[str, Any]]) -> str:
    return str([c for c in calls if not _is_compression(c)][-1]["messages"][0]["content"])


# ---------------------------------------------------------------- history trimming
async def test_trimming_never_drops_the_question_of_a_tool_turn() -> None:
    question = {"role": "user", "content": "What is the weather in Paris? " * 5}
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}
    result = {"role": "tool", "tool_call_id": "c1", "content": "sunny " * 60}
    msgs = [{"role": "system", "content": "You help."}, {"role": "user", "content": "old " * 200},
            {"role": "assistant", "content": "old answer " * 100}, question, call, result]
    for budget in (64, 100, 150):
        out = (await trim(msgs, budget)).messages
        # the question being answered, with its tool call and result, whatever the budget
        assert out == [msgs[0], question, call, result], budget


async def test_trimming_still_drops_older_turns_before_the_question() -> None:
    msgs = [{"role": "system", "content": "You help."}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"question {i} " + "w " * 40},
                 {"role": "assistant", "content": f"answer {i} " + "w " * 40}]
    msgs.append({"role": "user", "content": "last question"})
    out = await trim(msgs, 120)
    assert out.messages[0] == msgs[0] and out.messages[-1] == msgs[-1] and out.dropped > 0


# ---------------------------------------------------------------- compaction
def test_compaction_keeps_prompt_tags_placeholders_and_comparisons() -> None:
    text = ("Reply inside <answer></answer> tags.\nFill the template: Name: <name>, Email: <email>.\n"
            "Quote the <document id=\"3\"> you used. If a<b and c>d stop.")
    assert compact(text) == text
    # HTML pasted from a web page is still reduced to its text
    assert compact('<p>Refunds   within <b>30</b> days.</p><br/>\n<span class="x">Thanks</span>') == \
        "Refunds within 30 days.\nThanks"


def test_compaction_leaves_inline_code_alone() -> None:
    text = "Call `__init__` first, then `a  **  b`; __Bold__ text is plain."
    assert compact(text) == "Call `__init__` first, then `a  **  b`; Bold text is plain."


def test_compaction_keeps_short_repeats_that_belong_to_examples() -> None:
    shots = "Example 1:\nInput: great\n\nOutput: positive\n\nExample 2:\nInput: awesome\n\nOutput: positive"
    assert compact(shots) == shots
    long_block = ("Always answer in English, in two sentences at most, and never mention competitors by name."
                  " Sign every answer as the Acme team.")
    assert compact(f"{long_block}\n\nHello.\n\n{long_block}") == f"{long_block}\n\nHello."


# ---------------------------------------------------------------- the stored compression
async def test_a_changed_must_keep_list_is_validated_again(tmp_path: Path) -> None:
    gw, calls = make(tmp_path)
    await gw.handle(chat(PROMPT))
    assert sent_system(calls) == SHORT  # valid under the first settings
    await gw.aclose()
    # "thirty days" is now a must-keep item: the stored version lacks it and must not be sent
    gw, calls = make(tmp_path, system_prompt={"min_tokens": 200, "must_keep": ["Acme Widgets", "thirty days"]})
    await gw.handle(chat(PROMPT))
    assert sum(_is_compression(c) for c in calls) == 1
    assert sent_system(calls) == PROMPT
    await gw.aclose()


async def test_a_changed_compressor_model_compresses_again(tmp_path: Path) -> None:
    gw, calls = make(tmp_path)
    await gw.handle(chat(PROMPT))
    await gw.aclose()
    gw, calls = make(tmp_path, model="cheap2")
    await gw.handle(chat(PROMPT))
    assert [c["model"] for c in calls if _is_compression(c)] == ["cheap2"]
    await gw.aclose()
    # the same settings again: the stored version is reused, no new compression
    gw, calls = make(tmp_path, model="cheap2")
    await gw.handle(chat(PROMPT))
    assert not any(_is_compression(c) for c in calls) and sent_system(calls) == SHORT
    await gw.aclose()


async def test_in_memory_memo_is_bounded(tmp_path: Path) -> None:
    gw, _ = make(tmp_path, store={"path": str(tmp_path / "compress.db"), "memo_ttl_s": 60})
    stage = gw.compress_stage
    assert stage is not None
    compressor: SystemPromptCompressor = stage.prompts
    compressor.memo_max = 3
    for i in range(6):
        await gw.handle(chat(f"Variant {i}. {PROMPT}"))
    assert len(compressor._memo) == 3
    await gw.aclose()


# ---------------------------------------------------------------- accounting
async def test_a_cache_hit_claims_no_compressed_tokens(tmp_path: Path) -> None:
    text = "Be kind.\n\n\n\n" + "   ".join(["word"] * 400)
    gw, _ = make(tmp_path, routes={"big": {"compaction": True}})
    first = await gw.handle(chat(text, temperature=0))
    second = await gw.handle(chat(text, temperature=0))
    assert first.cache_status == "miss" and first.compression_saved_tokens > 0
    assert first.compression_saved_usd > 0
    assert second.cache_status == "hit"
    assert second.compression_saved_tokens == 0 and second.compression_saved_usd == 0
    assert "x-thrifty-compressed-tokens" not in second.response_headers
    # Both baselines price the prompt the client sent, before compression: the hit saved the call
    # the first request would have cost on the premium model, not the compressed one.
    assert second.baseline_cost_usd == pytest.approx(first.baseline_cost_usd)
    await gw.aclose()


# ---------------------------------------------------------------- failures of an optional saving
async def test_a_failing_ab_judge_serves_the_original_and_retries_later(tmp_path: Path) -> None:
    from thrifty.errors import UpstreamError

    calls: list[dict[str, Any]] = []
    judge_up = False

    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        if body["model"] == "cheap2":  # the judge
            if not judge_up:
                raise UpstreamError("judge down", status=503)
            return chat_response("cheap2", "YES")
        if _is_compression(body):
            return chat_response("cheap", SHORT)
        return chat_response(body["model"], "ok")

    cfg = {"providers": {"p": {"base_url": "http://unused.invalid", "max_retries": 0}},
           "models": {"cheap": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                      "cheap2": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                      "big": {"provider": "p", "price": {"input": 2.0, "output": 8.0}}},
           "ledger": {"path": str(tmp_path / "ledger.db")},
           "compression": {"model": "cheap", "store": {"path": str(tmp_path / "c.db"), "memo_ttl_s": 0},
                           "system_prompt": {"min_tokens": 200, "must_keep": ["Acme Widgets"],
                                             "ab_check": {"questions": ["Any discount?"], "judge_model": "cheap2"}},
                           "routes": {"big": {"system_prompt": True}}}}
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(upstream)})
    ctx = await gw.handle(chat(PROMPT))
    assert ctx.status == "ok" and sent_system(calls) == PROMPT
    judge_up = True
    await gw.handle(chat(PROMPT))
    assert sent_system(calls) == SHORT
    await gw.aclose()


async def test_a_compression_store_outage_costs_the_saving_not_the_request(tmp_path: Path) -> None:
    from thrifty.errors import StorageError

    gw, calls = make(tmp_path, routes={"big": {"system_prompt": True, "history_max_tokens": 64,
                                                "summarize_history": True}})
    stage = gw.compress_stage
    assert stage is not None

    def down(*args: Any) -> Any:
        raise StorageError("compression store (redis): ConnectionError")

    for name in ("get", "put", "claim", "release"):
        setattr(stage.store, name, down)
    body = {"model": "big", "messages": [{"role": "system", "content": PROMPT},
                                         {"role": "user", "content": "first " * 80},
                                         {"role": "assistant", "content": "reply " * 80},
                                         {"role": "user", "content": "and now?"}]}
    ctx = await gw.handle(ChatRequest.from_body(body))
    assert ctx.status == "ok"
    sent = [c for c in calls if c["model"] == "big"][-1]["messages"]
    assert sent[0]["content"] == PROMPT and sent[-1]["content"] == "and now?"
    assert any(str(m["content"]).startswith("Summary of the earlier") for m in sent)
    await gw.aclose()
