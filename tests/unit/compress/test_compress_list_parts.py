"""System and developer prompts sent as a list of content parts (what SDKs and frameworks send,
and the form that carries ``cache_control`` for prompt caching through OpenAI-compatible
proxies) are compacted and compressed part by part, like string prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thrifty.compress.store import SQLiteDocStore
from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

RULE = "IMPORTANT: never reveal the discount code 4471."
FILLER = " ".join(f"Our shop sells fine product number {i} in many colours and sizes." for i in range(120))
PROMPT = f"You are ShopBot for Acme Widgets. {FILLER} {RULE}"
GOOD = f"You are ShopBot for Acme Widgets, selling products 0-119 in many colours and sizes. {RULE}"
OTHER = f"You are HelpBot for Acme Widgets. {FILLER} {RULE}"
OTHER_GOOD = f"You are HelpBot for Acme Widgets, selling products 0-119 in many colours and sizes. {RULE}"
CACHE = {"type": "ephemeral"}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/logo.png"}}


def _is_compression(body: dict[str, Any]) -> bool:
    return "compress system prompts" in str(body["messages"][0].get("content"))


def make(tmp: Path, **route: Any) -> tuple[Gateway, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    async def upstream(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        if _is_compression(body):
            text = body["messages"][1]["content"]
            return chat_response(body["model"], OTHER_GOOD if "HelpBot" in text else GOOD)
        return chat_response(body["model"], "ok", {"prompt_tokens": 100, "completion_tokens": 1})

    cfg = {
        "providers": {"p": {"base_url": "http://unused.invalid"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 0.1, "output": 0.2}},
                   "big": {"provider": "p", "price": {"input": 2.0, "output": 8.0}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "compression": {"model": "cheap", "store": {"path": str(tmp / "compress.db"), "memo_ttl_s": 0},
                        "system_prompt": {"min_tokens": 200, "must_keep": ["Acme Widgets"]},
                        "routes": {"big": {"system_prompt": True, **route}}},
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(upstream)}), calls


def chat(system: Any, role: str = "system") -> ChatRequest:
    return ChatRequest.from_body({"model": "big", "messages": [{"role": role, "content": system},
                                                               {"role": "user", "content": "hi"}]})


def answered(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in calls if not _is_compression(c)]


def compressions(calls: list[dict[str, Any]]) -> list[str]:
    return [c["messages"][1]["content"] for c in calls if _is_compression(c)]


async def test_text_parts_are_compressed_in_place_keeping_cache_control_and_other_parts(tmp_path: Path) -> None:
    gw, calls = make(tmp_path)
    system = [{"type": "text", "text": PROMPT, "cache_control": CACHE},
              IMAGE,
              {"type": "text", "text": "Today is   2026-11-27."}]
    ctx = await gw.handle(chat(system))
    sent = answered(calls)[-1]["messages"][0]
    assert sent == {"role": "system", "content": [
        {"type": "text", "text": GOOD, "cache_control": CACHE},
        IMAGE,
        {"type": "text", "text": "Today is 2026-11-27."},  # short: compacted, not compressed
    ]}
    assert compressions(calls) == [PROMPT]  # the long part alone, not the parts joined
    assert ctx.compression_saved_tokens > 1000
    assert ctx.response_headers["x-thrifty-compressed-tokens"] == str(ctx.compression_saved_tokens)
    assert system[0]["text"] == PROMPT  # the client's request object is not modified
    await gw.aclose()


async def test_the_same_list_keys_the_same_record_and_a_new_dynamic_part_reuses_it(tmp_path: Path) -> None:
    gw, calls = make(tmp_path)
    for day in ("2026-11-27", "2026-11-27", "2026-11-28"):
        await gw.handle(chat([{"type": "text", "text": PROMPT, "cache_control": CACHE},
                              {"type": "text", "text": f"Today is {day}."}]))
    assert len(compressions(calls)) == 1  # joined, each new date would have keyed a new compression
    assert [m["messages"][0]["content"][0]["text"] for m in answered(calls)] == [GOOD] * 3
    # The same text sent as a string uses the same record: no new compression.
    await gw.handle(chat(PROMPT))
    assert len(compressions(calls)) == 1 and answered(calls)[-1]["messages"][0]["content"] == GOOD
    await gw.aclose()


async def test_different_lists_do_not_share_a_compression(tmp_path: Path) -> None:
    gw, calls = make(tmp_path)
    await gw.handle(chat([{"type": "text", "text": PROMPT}]))
    await gw.handle(chat([{"type": "text", "text": OTHER}]))
    # Two parts with the same text in one list share one record; different texts never do.
    await gw.handle(chat([{"type": "text", "text": OTHER}, {"type": "text", "text": PROMPT}]))
    assert sorted(compressions(calls)) == sorted([PROMPT, OTHER])
    texts = [[p["text"] for p in c["messages"][0]["content"]] for c in answered(calls)]
    assert texts == [[GOOD], [OTHER_GOOD], [OTHER_GOOD, GOOD]]
    store = SQLiteDocStore(str(tmp_path / "compress.db"))
    assert len(store.keys("prompt")) == 2
    store.close()
    await gw.aclose()


async def test_developer_role_is_compressed_like_system_in_both_forms(tmp_path: Path) -> None:
    gw, calls = make(tmp_path)
    await gw.handle(chat([{"type": "text", "text": PROMPT}], role="developer"))
    await gw.handle(chat(PROMPT, role="developer"))
    sent = [c["messages"][0] for c in answered(calls)]
    assert sent == [{"role": "developer", "content": [{"type": "text", "text": GOOD}]},
                    {"role": "developer", "content": GOOD}]
    assert len(compressions(calls)) == 1
    await gw.aclose()


async def test_every_system_message_is_compressed_wherever_it_stands(tmp_path: Path) -> None:
    gw, calls = make(tmp_path)
    body = {"model": "big", "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hello"},
        {"role": "system", "content": [{"type": "text", "text": PROMPT}]},
        {"role": "user", "content": "hi"}]}
    await gw.handle(ChatRequest.from_body(body))
    sent = answered(calls)[-1]["messages"]
    assert sent[0] == body["messages"][0] and sent[1] == body["messages"][1]
    assert sent[2]["content"] == [{"type": "text", "text": GOOD}]
    await gw.aclose()


async def test_compaction_alone_shrinks_text_parts(tmp_path: Path) -> None:
    gw, calls = make(tmp_path, system_prompt=False)
    loose = "Be kind.\n\n\n\n<!-- internal note -->Answer   **briefly**."
    ctx = await gw.handle(chat([{"type": "text", "text": loose, "cache_control": CACHE}]))
    assert answered(calls)[-1]["messages"][0]["content"] == [
        {"type": "text", "text": "Be kind.\n\nAnswer briefly.", "cache_control": CACHE}]
    assert ctx.compression_saved_tokens > 0 and not compressions(calls)
    await gw.aclose()


async def test_whitespace_only_prompts_are_not_sent_empty(tmp_path: Path) -> None:
    # Providers refuse an empty system prompt / text block; compaction used to send "".
    gw, calls = make(tmp_path, system_prompt=False)
    await gw.handle(chat("   \n\n   "))
    await gw.handle(chat([{"type": "text", "text": "  \n  "}, {"type": "text", "text": "Be   kind."}]))
    first, second = (c["messages"][0]["content"] for c in answered(calls))
    assert first == "   \n\n   "
    assert second == [{"type": "text", "text": "  \n  "}, {"type": "text", "text": "Be kind."}]
    await gw.aclose()
