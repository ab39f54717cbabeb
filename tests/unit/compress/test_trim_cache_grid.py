"""History trimming on a grid (``history_trim_step_tokens``): once a chat is over
``history_max_tokens``, an exact cut dropped the oldest turns on every new turn, so the message
after the system prompt changed every turn and the provider's prompt cache (an exact-prefix match)
served only the system prompt. Cut on a grid of cumulative history tokens, the kept turns stay
byte-identical until the grid moves, and the provider's cached tokens rise."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_compress_history_clients import conv, first_after_instructions

from fixtures.served import attempt_rows, serving
from thrifty import tokens
from thrifty.compress import history
from thrifty.compress.config import RouteCompression
from thrifty.compress.history import (
    SUMMARY_PREFIX,
    _units,
    message_tokens,
    messages_tokens,
    split_head,
    trim,
)
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.tokens import count_text

Message = dict[str, Any]
VOCAB = ["order", "refund", "invoice", "shipped", "warehouse", "customer", "damaged", "box", "late", "status"]
SYSTEM = "You are the support assistant of a shop. " + " ".join(VOCAB[i % len(VOCAB)] for i in range(500))


def chat(turns: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"Q{t}: " + " ".join(rng.choice(VOCAB) for _ in range(rng.randint(20, 150))),
             " ".join(rng.choice(VOCAB) for _ in range(rng.randint(100, 400)))) for t in range(turns)]


def growing(turns: list[tuple[str, str]]) -> Iterator[list[Message]]:
    """The messages a client sends on each turn: the whole conversation so far."""
    msgs: list[Message] = [{"role": "system", "content": SYSTEM}]
    for question, answer in turns:
        msgs.append({"role": "user", "content": question})
        yield list(msgs)
        msgs.append({"role": "assistant", "content": answer})


def cost(unit: list[Message]) -> int:
    return sum(message_tokens(m) for m in unit)


def exact_start(messages: list[Message], budget: int) -> int:
    """Today's cut (before the grid), as a reference: the newest history units while they fit,
    then forward to a user turn; the index of the first kept unit."""
    head, rest = split_head(messages)
    units = _units(rest)
    current = max(i for i, u in enumerate(units) if u[0]["role"] == "user")
    room = budget - messages_tokens(head) - sum(cost(u) for u in units[current:])
    start = current
    while start > 0 and cost(units[start - 1]) <= room:
        start -= 1
        room -= cost(units[start])
    while start < current and units[start][0]["role"] != "user":
        start += 1
    return start


async def test_the_kept_prefix_stays_identical_until_the_grid_moves() -> None:
    budget, step = 6000, 1024
    previous: list[Message] | None = None
    moves = trimmed_turns = 0
    for msgs in growing(chat(50)):
        out = (await trim(msgs, budget, step=step)).messages
        assert messages_tokens(out) <= budget
        if len(out) < len(msgs):
            trimmed_turns += 1
            kept = out[:-1]  # all but the current turn
            if previous is not None and previous[:len(kept)] != kept and kept[:len(previous)] != previous:
                moves += 1
                # A move drops at least a grid step more: the cut is on the next grid line.
                assert msgs.index(previous[1]) < msgs.index(kept[1])
            previous = out
    assert trimmed_turns > 25
    # Turns here are ~300 tokens: a 1,024-token grid moves about every third turn, never every turn.
    assert moves <= trimmed_turns // 2


async def test_an_exact_cut_moves_the_first_kept_turn_every_turn() -> None:
    """The defect: with step 0 (today's behaviour) the message after the system prompt changes on
    every trimmed turn, so no provider cache can match past the system prompt."""
    firsts = [(await trim(msgs, 6000, step=0)).messages[1]["content"] for msgs in growing(chat(50))]
    trimmed = firsts[-20:]
    assert len(set(trimmed)) >= 16  # all but the turns whose new question was short


async def test_step_zero_is_exactly_todays_cut() -> None:
    for seed in range(3):
        for msgs in list(growing(chat(30, seed)))[::3]:
            for budget in (1500, 3000, 6000):
                out = (await trim(msgs, budget, step=0)).messages
                start = exact_start(msgs, budget)
                head, rest = split_head(msgs)
                expected = msgs if start == 0 else head + [m for u in _units(rest)[start:] for m in u]
                assert out == expected, (seed, budget)
                assert (await trim(msgs, budget)).messages == out  # the function's default is the exact cut


async def test_the_cut_lies_on_the_first_grid_line_past_the_excess() -> None:
    msgs = list(growing(chat(40)))[-1]
    budget, step = 5000, 512
    out = (await trim(msgs, budget, step=step)).messages
    head, rest = split_head(msgs)
    units = _units(rest)
    costs = [cost(u) for u in units[:-1]]
    excess = messages_tokens(msgs) - budget
    kept_from = len(units) - len(_units(out[len(head):]))
    line = -(-excess // step) * step
    on_grid = next(k for k in range(len(costs) + 1) if sum(costs[:k]) >= line)
    assert 0 < excess < line < sum(costs)
    # The first unit past the grid line, or the user turn right after it (kept turns open with the user).
    assert kept_from == on_grid or (kept_from == on_grid + 1 and units[on_grid][0]["role"] == "assistant")
    assert units[kept_from][0]["role"] == "user"


async def test_every_trimming_invariant_holds_on_a_grid() -> None:
    msgs = conv(12)
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]}
    msgs[9:9] = [{"role": "user", "content": "use the tool"}, call,
                 {"role": "tool", "tool_call_id": "c1", "content": "r " * 40}]

    async def summarise(dropped: list[Message]) -> str:
        return "fact " * 200  # over the reserve: must be cut to it

    for step in (64, 128, 300, 4096):
        for budget in range(120, 900, 17):
            for summary in (None, summarise):
                result = await trim(msgs, budget, summary, 30, step=step)
                out = result.messages
                assert first_after_instructions(out)["role"] == "user", (step, budget)
                assert out[0] == msgs[0] and out[-1] == msgs[-1]
                assert (call in out) == (msgs[11] in out)  # a call and its result stay together
                floor = messages_tokens(msgs[:1] + msgs[-1:])
                assert messages_tokens(out) <= max(budget, floor), (step, budget)
                if summary is not None and out[1]["content"].startswith(SUMMARY_PREFIX):
                    assert count_text(out[1]["content"].removeprefix(SUMMARY_PREFIX)) <= 30
                if summary is None:
                    assert result.saved_tokens == messages_tokens(msgs) - messages_tokens(out)
                    assert result.dropped == len(msgs) - len(out)


async def test_a_step_larger_than_the_budget_still_keeps_turns() -> None:
    """The step is capped at a quarter of what the turns may fill: uncapped, 2,048 in a budget of
    1,000 with 620 tokens of tools dropped every turn but the current one."""
    msgs = conv(20)
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": "look up " * 60,
                                               "parameters": {"type": "object", "properties": {}}}} for i in range(4)]
    out = (await trim(msgs, 1000, schemas=tools, step=2048)).messages
    exact = (await trim(msgs, 1000, schemas=tools)).messages
    assert len(exact) >= 8 and len(out) >= 8
    # At most a capped step (plus the turn alignment's question-and-answer) less history than exact.
    assert messages_tokens(exact) - messages_tokens(out) <= 250 + cost(msgs[1:3])


async def test_the_summary_of_the_dropped_turns_is_stable_between_grid_moves() -> None:
    asked: list[list[Message]] = []

    async def summarise(dropped: list[Message]) -> str:
        asked.append(dropped)
        return f"{len(dropped)} earlier messages about orders"  # the same dropped turns, the same text

    summaries = []
    for msgs in growing(chat(50)):
        out = (await trim(msgs, 6000, summarise, 100, step=1024)).messages
        if out[1]["content"].startswith(SUMMARY_PREFIX):
            summaries.append(out[1])
    distinct = {s["content"] for s in summaries}
    assert len(summaries) > 25 and len(distinct) <= len(summaries) // 2
    # Between moves the summariser is asked about the very same dropped messages (the store's key).
    assert len({repr(d) for d in asked}) == len(distinct)


@pytest.mark.parametrize("step", [0, 1024])
async def test_a_trim_tokenises_each_message_once(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """The grid's trim counted every message three times (the conversation, each unit for the cut,
    then the output for the saving): twice the time of one count on a long chat."""
    counted: dict[int, int] = {}
    real = tokens.count_message

    def counting(message: Message, **kw: Any) -> int:
        counted[id(message)] = counted.get(id(message), 0) + 1
        return real(message, **kw)

    monkeypatch.setattr(tokens, "count_message", counting)  # what count_messages calls
    monkeypatch.setattr(history, "count_message", counting)

    async def summarise(dropped: list[Message]) -> str:
        return "orders were discussed"

    msgs = [m for m in growing(chat(40))][-1]
    expected = await trim(msgs, 6000, summarise, 100, step=step)
    counted.clear()
    result = await trim(msgs, 6000, summarise, 100, step=step)
    assert result == expected and result.dropped > 0
    assert max(counted[id(m)] for m in msgs) == 1 and all(id(m) in counted for m in msgs)
    assert result.saved_tokens == messages_tokens(msgs) - messages_tokens(result.messages)


def test_the_route_setting_defaults_to_a_grid_and_zero_is_allowed() -> None:
    assert RouteCompression(history_max_tokens=4000).history_trim_step_tokens > 0
    assert RouteCompression(history_max_tokens=4000, history_trim_step_tokens=0).history_trim_step_tokens == 0
    with pytest.raises(ValueError):
        RouteCompression(history_max_tokens=4000, history_trim_step_tokens=-1)


# --- through the gateway: the mock upstream reports cached tokens with OpenAI's prefix rule ---

MOCK = {"models": {"big": {"prompt_cache": True, "answer": "noted"}}}


@pytest.fixture
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def _cached_over_a_chat(upstream: RunningServer, tmp: Path, step: int) -> tuple[int, int]:
    cfg = {"providers": {"mock": {"base_url": upstream.url + "/v1", "api_key": "sk-test-upstream-1234",
                                  "max_retries": 0}},
           "models": {"big": {"provider": "mock", "price": {"input": 2.5, "output": 10, "cached_input": 0.25}}},
           "ledger": {"path": str(tmp / f"ledger-{step}.db")}, "cache": {"enabled": False},
           "compression": {"store": {"path": str(tmp / f"compress-{step}.db")},
                           "routes": {"big": {"history_max_tokens": 4000, "history_trim_step_tokens": step}}}}
    with serving(cfg) as (gw, client):
        for msgs in growing(chat(36)):
            client.chat.completions.create(model="big", messages=msgs)  # type: ignore[arg-type]
        rows = attempt_rows(gw, "a.cached_tokens, a.prompt_tokens")
    assert len(rows) == 36
    return sum(r["cached_tokens"] for r in rows), sum(r["prompt_tokens"] for r in rows)


def test_the_ledger_shows_more_cached_input_with_a_grid(upstream: RunningServer, tmp_path: Path) -> None:
    import httpx

    exact_cached, exact_prompt = _cached_over_a_chat(upstream, tmp_path, 0)
    httpx.post(upstream.url + "/mock/reset").raise_for_status()  # forget the cached prefixes
    grid_cached, grid_prompt = _cached_over_a_chat(upstream, tmp_path, 1024)
    assert grid_prompt <= exact_prompt  # the grid keeps a little less history...
    assert grid_cached > 1.5 * exact_cached  # ...and the provider serves much more of it from its cache
