"""What a review of the provider-quirk fixes (test_provider_quirks_2.py) found, reproduced with the
mock upstream behind a real gateway (on 127.0.0.1 with the real ``openai`` client, or in-process
for ``thrifty batch``'s runner and ``--deferred``).

- Packs sent to a route: the cheap tier's refusal of json_schema was swallowed by the cascade
  (the next tier answered), so every pack was refused by it again.
- A single-item answer (and a ``--deferred`` one) cut or blocked under another name than
  ``length`` (``insufficient_system_resource``, ``content_filter``, ``error``, ``abort``) was
  accepted as the item's output.
- Lessons of refused parameters live on the catalog (``Catalog.lessons``), checked by one
  ``refuses_param``.
- A cascade tier's fallback refusing logprobs was asked again through the whole chain: the
  failing primary was retried (with its back-off) before the fallback got the call again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.one_model import one_model_config
from tests.fixtures.served import attempt_rows, sent, serving

from thrifty.batching import run_batch
from thrifty.batching.deferred import run_deferred
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.refusals import refuses_param

PRICE = {"input": 1.0, "output": 2.0}
ASK: Any = [{"role": "user", "content": "Tell me about the weather in Paris today please"}]
ITEMS = [{"id": str(i), "input": f"Review {i}: a great product"} for i in range(20)]
CUT = ["insufficient_system_resource", "content_filter", "error", "abort"]


def _formats(bodies: list[dict[str, Any]]) -> list[str | None]:
    return [(b.get("response_format") or {}).get("type") for b in bodies]


def _route(mock: RunningServer, tmp: Path, scorer: str = "heuristic", threshold: float = 0.3,
           **cheap: Any) -> dict[str, Any]:
    """A route ``r``: tier ``cheap`` (its model config extended by ``cheap``), then ``strong``."""
    models: dict[str, Any] = {m: {"provider": "p", "price": PRICE} for m in ("cheap", "cheap2", "strong")}
    models["cheap"].update(cheap)
    return {
        **one_model_config(mock.url, tmp),
        "models": models,
        "routing": {"default_route": "r", "routes": {"r": {
            "tiers": [{"model": "cheap", "threshold": threshold}, {"model": "strong"}],
            "scorer": {"kind": scorer}}}},
    }


# ---------------------------------------------------------------- 1. packs sent to a route
async def test_packs_to_a_route_learn_the_cheap_tiers_refused_format(tmp_path: Path) -> None:
    """The cheap tier refuses json_schema (DeepSeek); the cascade hands the pack to the strong tier,
    which answers. The refusal is learned all the same: the next pack is sent with json_object
    (the cheap tier takes it), and the answered pack is not sent again."""
    mock_cfg = {"models": {"cheap": {"response_formats": ["text", "json_object"]}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        gw = Gateway.from_config(_route(mock, tmp_path))
        try:
            results = await run_batch(gw, ITEMS, task="Summarise the review.", route="r", pack=10, concurrency=1)
            assert all(r.status == "ok" and r.produced == "packed" for r in results), results
            assert _formats(sent(mock, "cheap")) == ["json_schema", "json_object"]
            assert _formats(sent(mock, "strong")) == ["json_schema"]  # the first pack: answered, not resent
            assert gw.catalog.lessons == {"refuses:response_format=json_schema": {"route:r"}}
        finally:
            await gw.aclose()


# ---------------------------------------------------------------- 2. cut or blocked answers
@pytest.mark.parametrize("reason", CUT)
async def test_a_single_answer_cut_or_blocked_is_failed(tmp_path: Path, reason: str) -> None:
    """``thrifty batch`` with pack 1: an answer the provider cut or blocked is no answer, whatever
    it calls the cut (it was accepted as ok, unless it said ``length``)."""
    mock_cfg = {"models": {"ds": {"finish_reason": reason}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        gw = Gateway.from_config(one_model_config(mock.url, tmp_path))
        try:
            (result,) = await run_batch(gw, ITEMS[:1], task="Summarise the review.", model="ds", pack=1)
        finally:
            await gw.aclose()
    assert result.status == "failed" and result.output is None
    assert f"finish_reason={reason}" in (result.error or "") and result.calls == 1


async def test_a_deferred_answer_cut_or_blocked_is_failed(tmp_path: Path) -> None:
    """``thrifty batch run --deferred``: the same for an answer from the provider's Batch API."""
    mock_cfg = {"models": {"ds": {"finish_reason": "insufficient_system_resource"}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        gw = Gateway.from_config({
            "providers": {"p": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
            "models": {"ds": {"provider": "p", "price": PRICE}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "batching": {"deferred": {"poll_interval_s": 0.05, "max_resubmits": 0}}})
        try:
            job, results = await run_deferred(gw, ITEMS[:2], task="Summarise the review.", model="ds",
                                              interval=0.05, timeout=30)
        finally:
            await gw.aclose()
    assert job.status == "finished"
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("finish_reason=insufficient_system_resource" in (r.error or "") for r in results)


# ---------------------------------------------------------------- 3. one refusal check, lessons on the catalog
@pytest.mark.parametrize(("status", "param", "message", "refused"), [
    (400, None, "This response_format type is unavailable now", True),
    (422, "logprobs", "Extra inputs are not permitted", True),
    (400, None, "top_logprobs is not supported for this model", True),
    (400, None, "my_logprobs_field is wrong", False),  # not the parameter, a longer word
    (500, "logprobs", "logprobs: internal error", False),  # a server failure is no refusal
    (None, None, "p: upstream returned HTTP 400: logprobs is not supported", True),  # status unknown
])
def test_refuses_param(status: int | None, param: str | None, message: str, refused: bool) -> None:
    names = ("response_format", "json_schema") if "response_format" in message else ("logprobs", "top_logprobs")
    assert refuses_param(status, param, message, names) is refused


def test_a_logprobs_refusal_is_a_lesson_of_the_catalog(tmp_path: Path) -> None:
    """The logprobs refusal is kept on the gateway's catalog (one plain, bounded attribute), so a
    second gateway in the process (here: a fresh one) starts without it."""
    mock_cfg = {"models": {"cheap": {"reject_params": ["logprobs"]}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        with serving(_route(mock, tmp_path, "logprob", 0.4)) as (gw, client):
            client.chat.completions.create(model="auto", messages=ASK)
            assert gw.catalog.lessons == {"refuses:logprobs": {"cheap"}}
        with serving(_route(mock, tmp_path, "logprob", 0.4)) as (gw2, client2):
            assert gw2.catalog.lessons == {}
            client2.chat.completions.create(model="auto", messages=ASK)
        assert [b.get("logprobs") for b in sent(mock, "cheap")] == [True, None, True, None]


# ---------------------------------------------------------------- 4. a fallback refusing logprobs
def test_a_fallback_refusing_logprobs_is_asked_again_alone(tmp_path: Path) -> None:
    """The cheap tier's model fails (a 500, retried once), its fallback ``cheap2`` refuses logprobs.
    The call without them goes to ``cheap2`` only: the failing ``cheap`` was retried again, with its
    back-off, each try another ledger attempt."""
    mock_cfg = {"models": {"cheap": {"faults": {"status": 500}}, "cheap2": {"reject_params": ["logprobs"]}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        cfg = _route(mock, tmp_path, "logprob", 0.4, fallbacks=["cheap2"])
        cfg["providers"]["p"].update({"max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02})
        with serving(cfg) as (gw, client):
            got = client.chat.completions.create(model="auto", messages=ASK)
            assert got.model and not sent(mock, "strong")
            assert len(sent(mock, "cheap")) == 2  # its own two tries, once
            assert [b.get("logprobs") for b in sent(mock, "cheap2")] == [True, None]
            rows = attempt_rows(gw, "a.model, a.status")
    assert [(r["model"], r["status"]) for r in rows] == [
        ("cheap", "error"), ("cheap", "error"), ("cheap2", "error"), ("cheap2", "ok")]
