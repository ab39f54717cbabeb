"""Second review of the day's later changes: defects found in thrifty's own calls to reasoning models.

Real gateway on 127.0.0.1, the mock upstream over HTTP, the real ``openai`` client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from fixtures.cli_run import run_main
from fixtures.judge_config import judge_cascade_config
from fixtures.served import attempt_rows, reset, sent, serving
from thrifty.gateway import Gateway
from thrifty.internal_calls import shape_for
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MC = "Which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
GRADE = {"pattern": r"Grade \(0-10\)", "answer": "9"}
MOCK: dict[str, Any] = {"models": {
    "cheap": {"answers": [{"pattern": "Which option", "answer": "B"}]},
    "premium": {"answers": [{"pattern": "Which option", "answer": "B) whale: a mammal, unlike the fish."}]},
    # A plain judge that is down (every call a 503), with a reasoning fallback no family knows.
    "down-judge": {"faults": {"status": 503}},
    "house-judge": {"reasoning_model": True, "reasoning_tokens": 120, "answers": [GRADE]},
    # A reasoning model no family knows that takes max_tokens and spends it thinking, slowly:
    # concurrent first calls are all in flight before the first one's lesson is learned.
    "slow-thinker": {"reasoning_tokens": 300, "answers": [GRADE], "faults": {"latency_ms": 600}},
}}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def config(tmp: Path, upstream: RunningServer, judge: str, **judge_settings: Any) -> dict[str, Any]:
    return judge_cascade_config(tmp, upstream, judge, ("down-judge", "house-judge", "slow-thinker"),
                                **judge_settings)




def judge_rows(gw: Gateway) -> list[dict[str, Any]]:
    return attempt_rows(gw, "a.model, a.status, a.score", "a.purpose = 'judge'")






def served_by(client: openai.OpenAI) -> str:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": MC}])
    return raw.headers["x-thrifty-model"]


def test_a_fallback_judges_400_is_learned_for_the_fallback_not_the_model_asked(upstream: RunningServer,
                                                                               tmp_path: Path) -> None:
    """The judge model is down and its fallback, a reasoning model, refuses ``max_tokens``. The
    lesson was learned for the judge model (whose call never reached a model that refused
    anything): once back up, a plain model, it would get ``max_completion_tokens``, no
    temperature and ``reasoning_effort``. And each fallback was sent the shape of the model asked."""
    reset(upstream)
    cfg = config(tmp_path, upstream, "down-judge", fallbacks=["house-judge"])
    with serving(cfg) as (gw, client):
        for _ in range(2):
            assert served_by(client) == "cheap"
        assert shape_for(gw.catalog, "down-judge").reasoning is False
        assert shape_for(gw.catalog, "house-judge").reasoning is True
    # The model asked always got the plain shape: nothing taught anything about it.
    for body in sent(upstream, "down-judge"):
        assert body["max_tokens"] == 4 and body["temperature"] == 0 and "reasoning_effort" not in body
    # The fallback's own lesson: one refusal, then the reasoning way, on the second request at once.
    bodies = sent(upstream, "house-judge")
    assert [("max_tokens" in b) for b in bodies] == [True, False, False]
    assert bodies[-1]["max_completion_tokens"] == 4 + 1024


def test_concurrent_first_calls_all_use_a_lesson_learned_meanwhile(upstream: RunningServer, tmp_path: Path) -> None:
    """Several requests judged at once by a reasoning model not yet learned: each judge call comes
    back empty, cut off. The first reply learned the lesson; the others, compared with the shape
    learned meanwhile instead of the one they were sent, saw nothing to learn and were returned
    empty: "no grade", score 0, every one of them escalated to the premium model."""
    reset(upstream)
    with serving(config(tmp_path, upstream, "slow-thinker")) as (gw, client), ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: served_by(client), range(4)))
        rows = judge_rows(gw)
    assert models == ["cheap"] * 4, rows
    graded = [r for r in rows if r["score"] is not None and r["score"] > 0]
    assert len(graded) == 4


def _parts_upstream() -> Any:
    """An upstream answering the way Mistral's Magistral can (by a name no family knows): ``content`` as a list of parts,
    cut off at the limit (``finish_reason: "length"``), every other call a plain answer."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        usage = {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
        if body["model"] == "house-parts":
            message: dict[str, Any] = {"role": "assistant", "content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "The answer is B, a whale"}]}]}
            finish = "length"
        else:
            message, finish = {"role": "assistant", "content": "B"}, "stop"
        return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                             "usage": usage})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_a_judge_answering_content_parts_cut_off_is_no_grade_not_a_500(tmp_path: Path) -> None:
    """``reasoned_out`` called ``.strip()`` on the message's content: a list of parts (Magistral's
    thinking chunks) cut off at the limit raised AttributeError out of the judge, and the client
    got a 500 for a request its cheap model had answered."""
    with run_in_thread(_parts_upstream()) as parts:
        cfg = {"providers": {"p": {"base_url": parts.url + "/v1", "max_retries": 0}},
               "models": {m: {"provider": "p", "price": {"input": 0.1, "output": 0.4}}
                          for m in ("cheap", "premium", "house-parts")},
               "baseline": "premium", "default_model": "cheap", "ledger": {"path": str(tmp_path / "ledger.db")},
               "routing": {"default_route": "general", "routes": {"general": {
                   "tiers": [{"model": "cheap", "threshold": 0.7}, {"model": "premium"}],
                   "scorer": {"kind": "judge", "judge_model": "house-parts"}}}}}
        with serving(cfg) as (gw, client):
            assert served_by(client) == "premium"  # no grade: escalated, as documented
            (row,) = judge_rows(gw)
    assert row["model"] == "house-parts" and row["status"] == "ok"


def test_outcomes_collect_concurrent_judge_calls_use_a_lesson_learned_meanwhile(
        upstream: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``thrifty outcomes collect`` judges several prompts at once: the same race as the gateway's
    judge, each judge call but the first came back empty and the prompt was written ungraded."""
    cfg = tmp_path / "thrifty.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path, upstream, "slow-thinker")))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Explain why the sky is blue ({i}).", "task": "explain"}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    reset(upstream)
    code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(cfg), "--prompts", str(prompts),
                            "--out", str(out), "--models", "cheap", "--reference", "premium",
                            "--judge-model", "slow-thinker", "--concurrency", "3", "--no-progress")
    assert code == 0, err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        graded = line["outcomes"]["cheap"]
        assert graded["score"] == pytest.approx(0.9) and "judge_note" not in graded, graded
