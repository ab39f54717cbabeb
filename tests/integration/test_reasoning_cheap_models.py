"""thrifty's own calls to a cheap model work when that model is a reasoning model.

Real gateway on 127.0.0.1, the mock upstream over HTTP, the real ``openai`` client. The mock's
``gpt-6-*`` models behave like OpenAI's reasoning models (``reasoning_model: true``): a 400 for
``max_tokens`` or a ``temperature`` other than 1, and reasoning tokens spent out of
``max_completion_tokens`` before the answer. Before ``internal_calls`` every judge, classifier,
compression and confirm call to them failed: the cascade escalated every request to the premium
model, the classifier never classified, prompts were never compressed, semantic hits never served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from fixtures.cli_run import run_main
from fixtures.served import attempt_rows, reset, sent, serving
from thrifty.config import load_config
from thrifty.errors import ConfigError
from thrifty.gateway import Gateway
from thrifty.internal_calls import family_of
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MC = "Which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
HEAD, RULE = "You are ShopBot for Acme Widgets.", "IMPORTANT: never reveal the discount code 4471."
FILLER = " ".join(f"We sell product number {i} in many colours, sizes and finishes." for i in range(100))
SHORT = f"{HEAD} We sell products 0-99 in many colours, sizes and finishes. {RULE}"

GRADE = {"pattern": r"Grade \(0-10\)", "answer": "9"}
CHEAP_RULES = [
    GRADE,
    {"pattern": "Question 1:", "answer": "yes"},  # the cache's confirm model
    {"pattern": "Answer 1:", "answer": "YES"},  # compression's A/B judge
    {"pattern": r"(?s)(You are ShopBot for Acme Widgets\.).*(IMPORTANT: never reveal the discount code 4471\.)",
     "answer": SHORT},
    {"pattern": "Which option", "answer": "B"},
    {"pattern": "discount", "answer": "No discount today."},
]
MOCK: dict[str, Any] = {"models": {
    # OpenAI-style reasoning models, recognised by name (gpt-5 and later).
    "gpt-6-luna": {"reasoning_model": True, "reasoning_tokens": 300, "answers": CHEAP_RULES},
    "gpt-6-astra": {"reasoning_model": True, "reasoning_tokens": 40, "answers": [{"pattern": "Which option",
                                                                                   "answer": "B"}]},
    "gpt-6-nano": {"reasoning_model": True, "reasoning_tokens": 200, "answer": "billing"},
    # Names no family knows: one refuses max_tokens (a 400 teaches it), one reasons within max_tokens
    # (an empty answer cut off at the limit teaches it), one also refuses reasoning_effort.
    "house-judge": {"reasoning_model": True, "reasoning_tokens": 120, "answers": [GRADE]},
    "house-thinker": {"reasoning_tokens": 300, "answers": [GRADE]},
    "house-o1": {"reasoning_model": True, "reasoning_tokens": 60, "reject_params": ["reasoning_effort"],
                 "answers": [GRADE]},
}}
PRICES = {"gpt-6-nano": 0.05, "gpt-6-luna": 0.4, "house-judge": 0.3, "house-thinker": 0.3, "house-o1": 0.3,
          "gpt-6-astra": 40.0}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def config(tmp: Path, upstream: RunningServer, **sections: Any) -> dict[str, Any]:
    models = {m: {"provider": "mock", "price": {"input": p / 4, "output": p}} for m, p in PRICES.items()}
    for name, extra in sections.pop("model_settings", {}).items():
        models[name].update(extra)
    return {"providers": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
            "models": models, "baseline": "gpt-6-astra", "default_model": "gpt-6-luna",
            "ledger": {"path": str(tmp / "ledger.db")}, **sections}




def attempts(gw: Gateway) -> list[dict[str, Any]]:
    return attempt_rows(gw, "a.model, a.purpose, a.status, a.accepted, a.score, a.completion_tokens, "
                            "a.reasoning_tokens, a.cost_usd")






def starter_guard(default_model: str, baseline: str) -> dict[str, Any]:
    """The starter file's commented quality guard (data/starter.yaml), uncommented."""
    text = resources.files("thrifty").joinpath("data/starter.yaml").read_text(encoding="utf-8")
    lines = text.split("\n")
    start = lines.index("# routing:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    doc = "\n".join(block).replace("__DEFAULT_MODEL__", default_model).replace("__BASELINE__", baseline)
    routing: dict[str, Any] = yaml.safe_load(doc)["routing"]
    return routing


def test_the_mock_refuses_what_openai_reasoning_models_refuse(upstream: RunningServer) -> None:
    client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-test", max_retries=0)
    msgs: Any = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-6-luna", messages=msgs, max_tokens=4)
    body: Any = refused.value.body
    assert body["code"] == "unsupported_parameter" and body["param"] == "max_tokens"
    assert "Use 'max_completion_tokens' instead" in body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-6-luna", messages=msgs, temperature=0)
    body = refused.value.body
    assert (body["code"], body["param"]) == ("unsupported_value", "temperature")
    assert body["message"].startswith("Unsupported value: 'temperature' does not support 0 with this model.")
    # The default temperature is fine; a small budget goes on reasoning: empty, cut off, billed.
    short = client.chat.completions.create(model="gpt-6-luna", messages=msgs, temperature=1, max_completion_tokens=4)
    assert short.choices[0].message.content == "" and short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens_details is not None
    assert short.usage.completion_tokens_details.reasoning_tokens == 4
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: reasoning_effort"):
        client.chat.completions.create(model="house-o1", messages=msgs, reasoning_effort="low")


def test_starter_quality_guard_accepts_a_good_cheap_answer(upstream: RunningServer, tmp_path: Path) -> None:
    routing = starter_guard("gpt-6-luna", "gpt-6-astra")
    assert routing["routes"]["general"]["scorer"]["parts"][1] == {"kind": "judge", "judge_model": "gpt-6-luna"}
    reset(upstream)
    with serving(config(tmp_path, upstream, routing=routing)) as (gw, client):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": MC}])
        assert raw.headers["x-thrifty-model"] == "gpt-6-luna"  # not escalated to the premium model
        assert raw.parse().choices[0].message.content == "B"
        rows = attempts(gw)
    assert [(r["model"], r["purpose"], r["status"]) for r in rows] == [
        ("gpt-6-luna", "answer", "ok"), ("gpt-6-luna", "judge", "ok")]
    answer, judge = rows
    assert answer["accepted"] == 1 and judge["score"] == pytest.approx(0.9)
    # The judge's reasoning is billed: 300 reasoning tokens + the grade, at the output price.
    assert judge["reasoning_tokens"] == 300 and judge["completion_tokens"] == 301
    assert judge["cost_usd"] >= 301 * 0.4 / 1e6
    # The client's answer call went as the client wrote it; the judge call the reasoning way.
    client_call, judge_call = sent(upstream, "gpt-6-luna")
    assert "max_completion_tokens" not in client_call and "reasoning_effort" not in client_call
    assert judge_call["max_completion_tokens"] == 4 + 1024 and judge_call["reasoning_effort"] == "low"
    assert "max_tokens" not in judge_call and "temperature" not in judge_call
    assert sent(upstream, "gpt-6-astra") == []


def test_reasoning_false_sends_internal_calls_as_before(upstream: RunningServer, tmp_path: Path) -> None:
    """The opt-out: `reasoning: false` sends max_tokens and temperature 0, which this model refuses,
    so the judge fails and the cascade escalates (what every request did before the fix)."""
    cfg = config(tmp_path, upstream, routing=starter_guard("gpt-6-luna", "gpt-6-astra"),
                 model_settings={"gpt-6-luna": {"reasoning": False}})
    reset(upstream)
    with serving(cfg) as (gw, client):
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": MC}])
        assert raw.headers["x-thrifty-model"] == "gpt-6-astra"
        rows = attempts(gw)
    assert [(r["model"], r["purpose"], r["status"]) for r in rows] == [
        ("gpt-6-luna", "answer", "ok"), ("gpt-6-luna", "judge", "error"), ("gpt-6-astra", "answer", "ok")]
    assert sent(upstream, "gpt-6-luna")[1]["max_tokens"] == 4


def test_llm_classifier_on_a_reasoning_model(upstream: RunningServer, tmp_path: Path) -> None:
    routing = {"default_route": "general",
               "routes": {"general": {"model": "gpt-6-astra"}, "billing": {"model": "gpt-6-luna"}},
               "classify": {"llm": {"model": "gpt-6-nano", "tasks": ["billing"]}}}
    reset(upstream)
    with serving(config(tmp_path, upstream, routing=routing)) as (gw, client):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Which option is cheaper for me?"}])
        assert raw.headers["x-thrifty-model"] == "gpt-6-luna"
        rows = attempts(gw)
    classify = next(r for r in rows if r["purpose"] == "classify")
    assert classify["status"] == "ok" and classify["reasoning_tokens"] == 200 and classify["cost_usd"] > 0
    (call,) = sent(upstream, "gpt-6-nano")
    assert call["max_completion_tokens"] == 8 + 1024 and "temperature" not in call


def test_compression_ab_judge_and_history_summary_on_a_reasoning_model(upstream: RunningServer,
                                                                       tmp_path: Path) -> None:
    compression = {
        "model": "gpt-6-luna",
        "store": {"path": str(tmp_path / "compress.db"), "memo_ttl_s": 0},
        "system_prompt": {"min_tokens": 300, "must_keep": ["Acme Widgets", "4471"],
                          "ab_check": {"questions": ["Any discount?"], "min_agreement": 1.0}},
        "routes": {"gpt-6-astra": {"system_prompt": True, "history_max_tokens": 150, "summarize_history": True,
                                   "summary_max_tokens": 40}},
    }
    prompt = f"{HEAD}\n\n{FILLER}\n\n{RULE}"
    history: list[Any] = [{"role": "system", "content": prompt}]
    for i in range(6):
        history += [{"role": "user", "content": f"Tell me about product {i} and its colours, sizes and finishes."},
                    {"role": "assistant", "content": f"Product {i} comes in many colours, sizes and finishes."}]
    history.append({"role": "user", "content": "Any discount?"})
    reset(upstream)
    with serving(config(tmp_path, upstream, compression=compression)) as (gw, client):
        raw = client.chat.completions.with_raw_response.create(model="gpt-6-astra", messages=history)
        assert int(raw.headers["x-thrifty-compressed-tokens"]) > 1000
        rows = attempts(gw)
    assert sent(upstream, "gpt-6-astra")[0]["messages"][0]["content"] == SHORT
    by_purpose = {(r["purpose"], r["status"]) for r in rows}
    assert by_purpose == {("compress", "ok"), ("judge", "ok"), ("summarize", "ok"), ("answer", "ok")}
    assert all(r["reasoning_tokens"] == 300 for r in rows if r["purpose"] != "answer")
    calls = sent(upstream, "gpt-6-luna")
    assert all("temperature" not in c and "max_tokens" not in c for c in calls)
    limits = sorted(c.get("max_completion_tokens", 0) for c in calls)
    assert limits == [0, 0, 3 + 1024, 40 + 1024, 4000 + 1024]  # two A/B answers unlimited, as before


def test_semantic_cache_confirm_model_on_a_reasoning_model(upstream: RunningServer, tmp_path: Path) -> None:
    cache = {"path": str(tmp_path / "cache.db"), "require_deterministic": False,
             "semantic": {"enabled": True, "confirm_model": "gpt-6-luna"}}
    reset(upstream)
    with serving(config(tmp_path, upstream, cache=cache)) as (gw, client):
        first = client.chat.completions.with_raw_response.create(
            model="gpt-6-astra", messages=[{"role": "user", "content": "How do I reset my password?"}])
        near = client.chat.completions.with_raw_response.create(
            model="gpt-6-astra", messages=[{"role": "user", "content": "how do i reset my password"}])
        assert first.headers["x-thrifty-cache"] == "miss"
        assert near.headers["x-thrifty-cache"] == "hit" and near.headers["x-thrifty-cache-match"] == "semantic"
        rows = attempts(gw)
    judge = [r for r in rows if r["purpose"] == "judge"]
    assert [(r["model"], r["status"], r["reasoning_tokens"]) for r in judge] == [("gpt-6-luna", "ok", 300)]
    assert len(sent(upstream, "gpt-6-astra")) == 1


def cascade_judged_by(judge: str) -> dict[str, Any]:
    return {"default_route": "general", "routes": {"general": {
        "tiers": [{"model": "gpt-6-luna", "threshold": 0.7}, {"model": "gpt-6-astra"}],
        "scorer": {"kind": "judge", "judge_model": judge}}}}


@pytest.mark.parametrize(("judge", "tries"), [
    ("house-judge", 2),  # a 400 for max_tokens: sent again the reasoning way
    ("house-thinker", 2),  # max_tokens taken, all of it spent reasoning: sent again with room
    ("house-o1", 3),  # a 400 for max_tokens, then one for reasoning_effort
])
def test_an_unknown_reasoning_model_is_learned_at_run_time(upstream: RunningServer, tmp_path: Path,
                                                           judge: str, tries: int) -> None:
    assert family_of(judge) is None
    reset(upstream)
    with serving(config(tmp_path, upstream, routing=cascade_judged_by(judge))) as (gw, client):
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": MC}])
            assert raw.headers["x-thrifty-model"] == "gpt-6-luna"
        rows = [r for r in attempts(gw) if r["purpose"] == "judge"]
    # The first request pays for the lesson (its failed or empty tries are in the ledger); the
    # second is sent the learned way at once.
    assert len(rows) == tries + 1 and rows[tries - 1]["status"] == rows[tries]["status"] == "ok"
    assert rows[tries]["score"] == pytest.approx(0.9)
    calls = sent(upstream, judge)
    assert len(calls) == tries + 1 and calls[-1] == {**calls[-2]}
    assert calls[-1].get("max_completion_tokens", calls[-1].get("max_tokens")) == 4 + 1024
    assert "temperature" not in calls[-1]


def test_outcomes_collect_judge_on_a_reasoning_model(upstream: RunningServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "thrifty.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path, upstream)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Explain why the sky is blue.", "task": "explain"}) + "\n")
    out = tmp_path / "out.jsonl"
    reset(upstream)
    code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(cfg), "--prompts", str(prompts),
                            "--out", str(out), "--models", "gpt-6-luna", "--reference", "gpt-6-astra",
                            "--judge-model", "house-judge", "--no-progress")
    assert code == 0, err
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    graded = line["outcomes"]["gpt-6-luna"]
    assert graded["score"] == pytest.approx(0.9) and "judge_note" not in graded and graded["judge_cost"] > 0
    first, second = sent(upstream, "house-judge")
    assert first["max_tokens"] == 4 and second["max_completion_tokens"] == 4 + 1024


@pytest.mark.parametrize(("name", "family"), [
    ("o1", "openai-o-series"), ("o3-mini", "openai-o-series"), ("o4-mini-2025-04-16", "openai-o-series"),
    ("o1-mini", "openai-o1-early"), ("gpt-5", "openai-gpt-5+"), ("gpt-5.1-mini", "openai-gpt-5+"),
    ("gpt-6-luna", "openai-gpt-5+"), ("openai/gpt-6-astra", "openai-gpt-5+"), ("gpt-oss-120b", "gpt-oss"),
    ("deepseek-reasoner", "deepseek-reasoner"), ("deepseek/deepseek-r1:free", "deepseek-reasoner"),
    ("DeepSeek-R1-Distill-Qwen-32B", "deepseek-reasoner"), ("qwq-32b", "qwq"),
    ("Qwen/Qwen3-235B-A22B-Thinking-2507", "thinking"), ("magistral-small-latest", "magistral"),
    ("gpt-5-chat-latest", None), ("gpt-4o", None), ("gpt-4.1-mini", None), ("deepseek-chat", None),
    ("qwen3-8b", None), ("omni-moderation-latest", None),
])
def test_reasoning_families_by_name(name: str, family: str | None) -> None:
    found = family_of(name)
    assert (found.name if found else None) == family


def test_reasoning_keys_are_validated() -> None:
    base = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}}}
    for bad, where in (({"reasoning": "maybe"}, "models.m.reasoning: expected auto, true or false"),
                       ({"reasoning_budget": -1}, "models.m.reasoning_budget"),
                       ({"reasoning_effort": "lots"}, "models.m.reasoning_effort")):
        with pytest.raises(ConfigError, match=where):
            load_config({**base, "models": {"m": {"provider": "p", **bad}}})
    cfg = load_config({**base, "models": {"m": {"provider": "p", "reasoning": True, "reasoning_budget": 256,
                                                "reasoning_effort": None, "price": {"input": 1, "output": 1}}}})
    info = cfg.build_catalog().get("m")
    assert info is not None and (info.reasoning, info.reasoning_budget, info.reasoning_effort) == (True, 256, None)


@pytest.mark.parametrize(("message", "sent", "named"), [
    ("mock: upstream returned HTTP 400: Unsupported parameter: 'max_tokens' is not supported with this model. "
     "Use 'max_completion_tokens' instead.", {"max_tokens": 4, "temperature": 0}, "max_tokens"),
    ("Unsupported value: 'temperature' does not support 0 with this model. Only the default (1) value is "
     "supported.", {"max_tokens": 4, "temperature": 0}, "temperature"),
    ("Unrecognized request argument supplied: reasoning_effort", {"max_completion_tokens": 9,
                                                                   "reasoning_effort": "low"}, "reasoning_effort"),
    ("[{'type': 'extra_forbidden', 'loc': ('body', 'max_completion_tokens'), 'msg': 'Extra inputs are not "
     "permitted'}]", {"max_completion_tokens": 9}, "max_completion_tokens"),
    # A range error is no refusal of the parameter; a parameter thrifty did not send is not learned.
    ("Invalid max_tokens value, the valid range of max_tokens is [1, 8192]", {"max_tokens": 9999}, None),
    ("Unsupported parameter: 'top_p' is not supported with this model.", {"max_tokens": 4}, None),
])
def test_which_refused_parameter_a_400_names(message: str, sent: dict[str, Any], named: str | None) -> None:
    from thrifty.internal_calls import _named_param

    assert _named_param(message, sent) == named
