"""Compression building blocks: compaction, validation, versions, history trimming."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from thrifty.compress import versions
from thrifty.compress.compact import apply_dictionary, compact, normalise
from thrifty.compress.config import CompressionConfig
from thrifty.compress.history import SUMMARY_PREFIX, trim
from thrifty.compress.validate import check, instruction_sentences
from thrifty.tokens import count_messages


def test_compaction_normalises_whitespace_markup_and_duplicates() -> None:
    polite = "Be polite to every customer, whatever they say, and thank them warmly for taking the time to write to us today."
    text = (f"# Rules\n\n**{polite.replace(' ', '   ', 2)}**   \n\n\n\n<b>Refunds</b> within 30 days.\n\n{polite}"
            "\n\n<!-- note -->")
    assert compact(text) == f"Rules\n\n{polite}\n\nRefunds within 30 days."


def test_compaction_leaves_code_fences_alone_and_is_stable() -> None:
    intro = "Intro text that explains, at some length, what the short code block below does and why it matters to the reader."
    text = f"{intro.replace(' ', '   ', 1)}\n\n```\nx  =  1\n\n\n\ny = 2\n```\n\n{intro}"
    out = normalise(text)
    assert "x  =  1\n\n\n\ny = 2" in out
    assert out.count(intro) == 1
    assert compact(text) == compact(text)


def test_dictionary_replaces_repeated_phrases_with_a_legend() -> None:
    long = "Acme Widgets Customer Support Team"
    out = apply_dictionary(f"The {long} helps. Ask the {long}.", {long: "ACST"})
    assert out == f"[ACST = {long}]\nThe ACST helps. Ask the ACST."
    assert apply_dictionary(f"Only once: {long}.", {long: "ACST"}) == f"Only once: {long}."


def test_dictionary_must_shorten() -> None:
    with pytest.raises(ValueError, match="'abc' must be shorter than the phrase it replaces"):
        CompressionConfig.model_validate({"dictionary": {"ab": "abc"}})


def test_validation_needs_must_keep_items_and_marked_sentences() -> None:
    original = "You help Acme customers. IMPORTANT: never share the code 4471. Refunds take 30 days. Be nice."
    markers = ["IMPORTANT"]
    assert instruction_sentences(original, markers) == ["IMPORTANT: never share the code 4471."]
    good = "Help Acme customers. IMPORTANT: never share the code 4471. Refunds: 30 days."
    assert check(original, good, ["Acme", "30 days"], markers).ok
    lost_rule = "Help Acme customers. Never share codes. Refunds: 30 days."
    verdict = check(original, lost_rule, ["Acme"], markers)
    assert not verdict.ok and "IMPORTANT" in verdict.missing[0]
    lost_item = "Help customers. IMPORTANT: never share the code 4471."
    assert check(original, lost_item, ["Acme"], markers).missing == ["Acme", "30"]  # "30": a stated fact
    assert not check(original, original + " more", [], markers).ok  # not shorter


def test_validation_keeps_stated_facts_and_most_of_the_vocabulary() -> None:
    original = ("You answer for Acme support. Refunds are accepted within 30 days at https://acme.example/refunds; "
                "write to help@acme.example. Run `reset --hard` only when asked, and greet with \"Hi there\". "
                "Shipping costs 4.99 in the EU. We stock items 1, 2, 3 and 4 of the catalogue.")
    assert check(original, "Sure! I can help with that.", [], []).missing == [
        "https://acme.example/refunds", "help@acme.example", "30", "4.99", "1", "2", "3", "4", "reset --hard",
        "Hi there"]
    faithful = ("Acme support. Refunds within 30 days: https://acme.example/refunds, help@acme.example. "
                "`reset --hard` only when asked; greet \"Hi there\". EU shipping 4.99. Catalogue items 1-4.")
    assert check(original, faithful, [], []).ok
    assert not check(original, faithful.replace("30 days", "300 days"), [], []).ok  # 30 is not kept by 300
    assert check(original, faithful.replace("30 days", "a month"), [], [], keep_facts=False).ok
    # No facts to check, but nearly nothing of what the prompt talks about is left.
    plain = "You are a friendly assistant for gardeners. Explain pruning, watering and soil choices clearly."
    assert check(plain, "Be friendly.", [], [], min_vocabulary=0.3).reason.startswith("compression kept")
    assert check(plain, "Friendly gardeners' assistant: explain pruning, watering, soil.", [], [],
                 min_vocabulary=0.3).ok


def test_versions_active_approve_reject() -> None:
    doc = versions.new_record("h", "original", 100)
    versions.add_version(doc, "v1 text", 10, "failed", "lost a rule")
    assert versions.active(doc, False) is None
    versions.add_version(doc, "v2 text", 12, "validated")
    assert versions.active(doc, False)["version"] == 2  # type: ignore[index]
    assert versions.active(doc, True) is None  # approval required
    versions.approve(doc, 2)
    assert versions.active(doc, True)["text"] == "v2 text"  # type: ignore[index]
    versions.reject(doc, 2)
    assert versions.active(doc, False) is None


def _conv(turns: int) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are helpful."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question number {i} " + "word " * 30})
        msgs.append({"role": "assistant", "content": f"answer number {i} " + "word " * 30})
    return msgs


async def test_history_keeps_system_and_latest_turns_within_budget() -> None:
    msgs = _conv(10)
    out = await trim(msgs, 300)
    assert out.messages[0]["role"] == "system"
    assert out.messages[-1] == msgs[-1]
    assert count_messages(out.messages) <= 300
    assert out.dropped > 0 and out.saved_tokens == count_messages(msgs) - count_messages(out.messages)
    same = await trim(msgs, 100_000)
    assert same.messages is msgs and same.saved_tokens == 0


async def test_history_never_splits_a_tool_call_from_its_results() -> None:
    msgs = _conv(4)
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}
    results = [{"role": "tool", "tool_call_id": "c1", "content": "r1 " + "x " * 40},
               {"role": "tool", "tool_call_id": "c2", "content": "r2 " + "x " * 40}]
    msgs += [{"role": "user", "content": "use tools"}, call, *results, {"role": "user", "content": "thanks"}]
    for budget in range(60, 400, 7):
        out = (await trim(msgs, budget)).messages
        has_call = call in out
        assert has_call == all(r in out for r in results)
        # a tool result is never the first message after the system prompt
        assert out[1].get("role") != "tool"


async def test_history_summary_replaces_dropped_middle() -> None:
    seen: list[int] = []

    async def summarise(dropped: list[dict[str, Any]]) -> str:
        seen.append(len(dropped))
        return "they asked about numbers"

    out = await trim(_conv(10), 400, summarise, 50)
    assert out.messages[1] == {"role": "system", "content": SUMMARY_PREFIX + "they asked about numbers"}
    assert seen and count_messages(out.messages) <= 400


def test_route_selection() -> None:
    cfg = CompressionConfig.model_validate({"model": "m", "routes": {"support": {"system_prompt": True},
                                                                      "*": {"compaction": True}}})
    assert cfg.for_request("support", "x") is cfg.routes["support"]
    assert cfg.for_request(None, "x") is cfg.routes["*"]
    with pytest.raises(ValueError, match=r"routes\.r: system_prompt/summarize_history need compression\.model"):
        CompressionConfig.model_validate({"routes": {"r": {"system_prompt": True}}})


@pytest.mark.parametrize("hostile", ["a." * 60_000, "1-" * 60_000, "x@" * 60_000])
def test_validating_a_hostile_prompt_does_not_stall(hostile: str) -> None:
    """The facts check runs over a client's prompt: a pattern tried from every start position
    must not scan to the end each time (was quadratic: minutes for 120 kB). A hang guard with a
    generous limit, not a speed target."""
    code = ("import sys; from thrifty.compress.validate import check; t = sys.stdin.read(); "
            "print(check(t, t[: len(t) // 2], [], []).ok)")
    # A subprocess, so a regression fails at the limit (it is killed) instead of hanging the suite.
    done = subprocess.run([sys.executable, "-c", code], input=hostile, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() in ("True", "False"), done.stderr
