"""History trimming with the conversations real clients send: content parts with images,
developer prompts, tool calls, and providers that want the kept turns to open with the user."""

from __future__ import annotations

from typing import Any

from thrifty.compress.history import (
    IMAGE_TOKENS,
    IMAGE_TOKENS_LOW,
    SUMMARY_PREFIX,
    messages_tokens,
    transcript,
    trim,
)
from thrifty.tokens import count_messages, count_text

Message = dict[str, Any]
WORDS = "word " * 30


def conv(turns: int, system_role: str = "system") -> list[Message]:
    msgs: list[Message] = [{"role": system_role, "content": "You are helpful."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question number {i} {WORDS}"})
        msgs.append({"role": "assistant", "content": f"answer number {i} {WORDS}"})
    msgs.append({"role": "user", "content": "and now?"})
    return msgs


def first_after_instructions(messages: list[Message]) -> Message:
    return next(m for m in messages if m["role"] not in ("system", "developer"))


async def test_kept_turns_always_open_with_a_user_message() -> None:
    msgs = conv(8)
    for budget in range(80, 600, 3):
        out = (await trim(msgs, budget)).messages
        assert first_after_instructions(out)["role"] == "user", budget
        assert out[-1] == msgs[-1] and messages_tokens(out) <= max(budget, messages_tokens(msgs[:1] + msgs[-1:]))


async def test_kept_turns_open_with_the_user_even_after_a_summary_and_tool_turns() -> None:
    msgs = conv(3)
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]}
    msgs[-1:] = [{"role": "user", "content": "use the tool"}, call,
                 {"role": "tool", "tool_call_id": "c1", "content": "r " * 40},
                 {"role": "assistant", "content": "done " * 20}, {"role": "user", "content": "thanks"}]

    async def summarise(dropped: list[Message]) -> str:
        return "earlier talk"

    for budget in range(120, 500, 5):
        out = (await trim(msgs, budget, summarise, 20)).messages
        assert first_after_instructions(out)["role"] == "user", budget
        assert (call in out) == (msgs[-3] in out)  # a call and its result stay together


async def test_list_part_messages_are_counted_and_images_are_not_free() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4000}}
    low = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
    msgs: list[Message] = [{"role": "system", "content": [{"type": "text", "text": "You look at screenshots."}]}]
    for i in range(6):
        msgs.append({"role": "user", "content": [{"type": "text", "text": f"screen {i}: what is wrong?"}, image]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {i} {WORDS}"}]})
    msgs.append({"role": "user", "content": [{"type": "text", "text": "and this one?"}, low]})
    text_only = [{**m, "content": [p for p in m["content"] if p["type"] == "text"]} for m in msgs]
    assert messages_tokens(msgs) == count_messages(msgs)  # one estimate of images, shared with budgets
    assert count_messages(msgs) == count_messages(text_only) + 6 * IMAGE_TOKENS + IMAGE_TOKENS_LOW
    out = await trim(msgs, 2 * IMAGE_TOKENS + 400)
    kept_images = sum(1 for m in out.messages if isinstance(m["content"], list) and image in m["content"])
    assert 1 <= kept_images <= 2  # text-only counting kept all six (about 600 tokens of text)
    assert messages_tokens(out.messages) <= 2 * IMAGE_TOKENS + 400
    assert out.messages[0] == msgs[0] and out.messages[-1] == msgs[-1]
    assert out.saved_tokens == messages_tokens(msgs) - messages_tokens(out.messages)


async def test_the_summary_takes_the_developer_role_of_a_developer_prompt() -> None:
    async def summarise(dropped: list[Message]) -> str:
        return "they asked about numbers"

    out = (await trim(conv(10, "developer"), 400, summarise, 50)).messages
    assert out[1] == {"role": "developer", "content": SUMMARY_PREFIX + "they asked about numbers"}
    out = (await trim(conv(10), 400, summarise, 50)).messages
    assert out[1]["role"] == "system"


async def test_a_full_length_summary_still_fits_the_budget() -> None:
    async def long_summary(dropped: list[Message]) -> str:
        return "fact " * 200  # a model that ignored max_tokens, or counts tokens differently

    msgs = conv(12)
    for budget in range(200, 700, 25):
        out = await trim(msgs, budget, long_summary, 40)
        summary = out.messages[1]["content"]
        assert summary.startswith(SUMMARY_PREFIX) and count_text(summary.removeprefix(SUMMARY_PREFIX)) <= 40
        assert messages_tokens(out.messages) <= budget, budget


def test_the_summariser_reads_images_and_tool_calls_not_empty_lines() -> None:
    text = transcript([
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ocr", "arguments": '{"page": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "INVOICE 2231"},
    ])
    assert text.splitlines() == ["user: [1 image(s)] what is this?",
                                 'assistant: [calls ocr({"page": 2})]',
                                 "tool: INVOICE 2231"]


def test_the_summariser_reads_a_custom_tool_call() -> None:
    """A custom (free-form) tool's call carries `custom.input`, not `function.arguments`: read
    only as a function call, a GPT-5 agent's patch was summarised as an empty turn."""
    text = transcript([
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "custom", "custom": {"name": "apply_patch", "input": "*** Begin Patch"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ])
    assert text.splitlines() == ["assistant: [calls apply_patch(*** Begin Patch)]", "tool: ok"]
