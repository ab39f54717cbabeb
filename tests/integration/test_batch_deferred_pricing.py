"""`--deferred` answers are priced through the one pricing path (accounting.priced_usage): a
Batch API answer without usage is counted offline and marked estimated, never a $0 "computed"."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from thrifty.batching.deferred import run_deferred
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread

RULES = [{"pattern": "love", "answer": "positive"}, {"pattern": ".", "answer": "negative"}]
ITEMS = [{"id": f"r{i}", "input": ("I love it" if i % 2 else "it broke") + f" #{i}"} for i in range(4)]


@pytest.mark.parametrize("convention,source", [("none", "estimated"), ("openai", "computed")])
async def test_batch_answers_without_usage_are_estimated_not_free(convention: str, source: str,
                                                                  tmp_path: Path) -> None:
    mock_cfg = {"models": {"good": {"answers": RULES, "usage_convention": convention}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
            "models": {"good": {"provider": "mock", "price": {"input": 1.0, "output": 4.0}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "batching": {"deferred": {"poll_interval_s": 0.05}},
        })
        try:
            job, results = await run_deferred(gw, ITEMS, task="Classify the sentiment.", model="good",
                                              labels=["positive", "negative"], interval=0.05)
        finally:
            await gw.aclose()
    assert job.status == "finished" and all(r.status == "ok" for r in results)
    assert all(r.cost_usd and r.cost_usd > 0 and r.prompt_tokens > 0 and r.completion_tokens > 0 for r in results)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT cost_usd, cost_source, prompt_tokens, completion_tokens FROM attempts"
                          " WHERE batch").fetchall()
    assert len(rows) == 4
    for cost, cost_source, prompt, completion in rows:
        assert cost_source == source and prompt > 0 and completion > 0
        assert cost == pytest.approx((prompt * 0.5 + completion * 2.0) / 1e6)  # the batch price: half
    # The estimate counts the same tokens the provider would have reported.
    assert sum(r.cost_usd or 0 for r in results) == pytest.approx(sum(r[0] for r in rows))
