"""Provider quirks a first pass (test_provider_quirks.py) found but left unfixed, reproduced with
the mock upstream behind a real gateway (on 127.0.0.1 with the real ``openai`` client, or
in-process for ``thrifty batch``'s runner).

- DeepSeek refuses ``response_format: {"type": "json_schema"}`` (400 "This response_format type
  is unavailable now", https://api-docs.deepseek.com/api/create-chat-completion): packs fall back
  to json_object, then to no response_format, and remember it.
- Finish reasons that mean a cut or blocked answer under other names than ``length``
  (DeepSeek's ``insufficient_system_resource``, ``content_filter``, OpenRouter's ``error``, vLLM's
  ``abort``): the cascade's heuristic scorer penalises them as it does ``length``.
- Models that refuse ``logprobs`` with a 400 (DeepSeek's reasoner, OpenAI's reasoning models): a
  cascade tier scored by logprobs is sent again without them (and remembered), never when the
  client asked for them itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.fixtures.one_model import one_model_config
from tests.fixtures.served import attempt_rows, reset, sent, serving

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.scoring.heuristics import HeuristicScorer
from thrifty.types import ChatRequest

PRICE = {"input": 1.0, "output": 2.0}
ASK: Any = [{"role": "user", "content": "Tell me about the weather in Paris today please"}]
ITEMS = [{"id": str(i), "input": f"Review {i}: a great product"} for i in range(20)]


def _total(mock: RunningServer) -> int:
    return int(httpx.get(mock.url + "/mock/requests?limit=200").json()["total"])


def _formats(mock: RunningServer) -> list[str | None]:
    """The response_format type of every request the mock received, oldest first."""
    data = httpx.get(mock.url + "/mock/requests?limit=200").json()["data"]
    return [(r["body"].get("response_format") or {}).get("type") for r in data if isinstance(r["body"], dict)]


@pytest.mark.parametrize(("accepted", "kept"), [(["text", "json_object"], "json_object"), (["text"], None)])
async def test_packs_fall_back_from_json_schema(tmp_path: Path, accepted: list[str], kept: str | None) -> None:
    """A model refusing json_schema (DeepSeek; and one refusing json_object too) still gets its
    items packed: the refused pack is sent again with the next weaker response_format, and the
    run and the process remember it (a second run sends no refused call). Without this every
    pack was refused and each item became its own call (26 calls for 20 items, not 2)."""
    from thrifty.batching import run_batch

    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"ds": {"response_formats": accepted}}}))) as mock:
        gw = Gateway.from_config(one_model_config(mock.url, tmp_path))
        try:
            results = await run_batch(gw, ITEMS, task="Summarise the review.", model="ds", pack=10, concurrency=1)
            assert all(r.status == "ok" and r.produced == "packed" for r in results), results
            refused = 1 if kept == "json_object" else 2  # json_schema (then json_object) refused once
            assert _total(mock) == 2 + refused
            assert _formats(mock)[refused:] == [kept, kept]
            # Every call is in the ledger (the refused ones as errors), and items' costs add up.
            rows = attempt_rows(gw, "a.status")
            assert len(rows) == 2 + refused
            assert sum(r.calls for r in results) == 10 * (2 + refused)
            reset(mock)
            again = await run_batch(gw, ITEMS, task="Summarise the other reviews.", model="ds", pack=10)
            assert all(r.status == "ok" and r.produced == "packed" for r in again)
            assert _formats(mock) == [kept, kept]  # remembered for the process: nothing refused
        finally:
            await gw.aclose()


async def test_packs_still_validated_after_the_fallback(tmp_path: Path) -> None:
    """Answers to a pack sent without json_schema are validated as before: a pack missing items
    sends them again (smaller pack, then alone), every item answered once."""
    from thrifty.batching import run_batch

    mock_cfg = {"models": {"ds": {"response_formats": ["text", "json_object"], "faults": {"pack_drop": 2}}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        gw = Gateway.from_config(one_model_config(mock.url, tmp_path))
        try:
            results = await run_batch(gw, ITEMS[:10], task="Summarise the review.", model="ds", pack=10)
        finally:
            await gw.aclose()
        assert all(r.status == "ok" for r in results)
        assert sum(r.produced == "packed" for r in results) == 8
        assert "json_schema" not in _formats(mock)[1:]


CUT = ["insufficient_system_resource", "content_filter", "error", "max_tokens", "abort", "length"]
WHOLE = ["stop", "tool_calls", "function_call", "end_turn", "stop_sequence", "eos", None]


@pytest.mark.parametrize("reason", CUT + WHOLE)
def test_heuristic_penalises_every_cut_finish_reason(reason: str | None) -> None:
    scorer = HeuristicScorer()
    req = ChatRequest(model="m", messages=ASK, params={})
    text = scorer.score_text(req, "It is sunny in Paris today with a light breeze.", reason)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool_req = ChatRequest(model="m", messages=ASK, params={"tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]})
    tool = HeuristicScorer.score_tool_calls(tool_req, [call], reason)
    if reason in CUT:
        assert text.value == pytest.approx(0.42) and tool.value == pytest.approx(0.51)
        assert f"finish_reason={reason}" in text.reason and f"finish_reason={reason}" in tool.reason
    else:
        assert text.value == pytest.approx(0.7) and tool.value == pytest.approx(0.85)


def _cascade(mock: RunningServer, scorer: str, threshold: float, tmp: Path) -> dict[str, Any]:
    return {
        **one_model_config(mock.url, tmp),
        "models": {m: {"provider": "p", "price": PRICE} for m in ("cheap", "strong")},
        "routing": {"default_route": "r", "routes": {"r": {
            "tiers": [{"model": "cheap", "threshold": threshold}, {"model": "strong"}],
            "scorer": {"kind": scorer}}}},
    }


@pytest.mark.parametrize("reason", ["insufficient_system_resource", "content_filter", "error", "abort"])
def test_a_cut_cheap_answer_escalates(tmp_path: Path, reason: str) -> None:
    """A cheap tier answering with a finish_reason that means the server cut or blocked it is not
    accepted by the heuristic scorer: the cascade asks the next tier."""
    mock_cfg = {"models": {"cheap": {"finish_reason": reason, "output_tokens": [20, 20]},
                           "strong": {"output_tokens": [20, 20]}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock, \
            serving(_cascade(mock, "heuristic", 0.6, tmp_path)) as (_, client):
        got = client.chat.completions.create(model="auto", messages=ASK)
        assert got.choices[0].finish_reason == "stop"  # the strong tier's answer was served
        assert len(sent(mock, "cheap")) == 1 and len(sent(mock, "strong")) == 1


@pytest.fixture
def no_logprobs(tmp_path: Path) -> Iterator[tuple[Gateway, openai.OpenAI, RunningServer]]:
    mock_cfg = {"models": {"cheap": {"reject_params": ["logprobs"]}, "strong": {}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock, \
            serving(_cascade(mock, "logprob", 0.4, tmp_path)) as (gw, client):
        yield gw, client, mock


def test_a_tier_refusing_logprobs_is_asked_without_them(
        no_logprobs: tuple[Gateway, openai.OpenAI, RunningServer]) -> None:
    """The router asks a logprob-scored tier for logprobs; a model that refuses them (400) was
    skipped (the dearer tier answered every request). It is asked again without them, scored as a
    provider that returns none (0.5, over the 0.4 threshold here), and remembered."""
    gw, client, mock = no_logprobs
    got = client.chat.completions.create(model="auto", messages=ASK)
    assert got.choices[0].logprobs is None
    cheap = sent(mock, "cheap")
    assert [b.get("logprobs") for b in cheap] == [True, None] and not sent(mock, "strong")
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "And in Rome?"}])
    assert [b.get("logprobs") for b in sent(mock, "cheap")] == [True, None, None]  # remembered
    assert not sent(mock, "strong")
    rows = attempt_rows(gw, "a.model, a.status")
    assert len(rows) == 3  # the refused call is in the ledger too


def test_the_clients_own_logprobs_are_never_dropped(
        no_logprobs: tuple[Gateway, openai.OpenAI, RunningServer]) -> None:
    """A client that asked for logprobs gets them or the provider's refusal, as before: the cheap
    tier is never asked without them (here the strong tier, which takes them, answers)."""
    _, client, mock = no_logprobs
    client.chat.completions.create(model="auto", messages=ASK)  # teaches: cheap refuses logprobs
    got = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "And Rome?"}],
                                         logprobs=True)
    assert got.choices[0].logprobs is not None and got.choices[0].logprobs.content
    assert sent(mock, "cheap")[-1].get("logprobs") is True
