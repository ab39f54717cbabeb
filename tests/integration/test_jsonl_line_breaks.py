"""JSON Lines that hold Unicode line breaks inside strings, unescaped (U+2028, U+2029, NEL
U+0085, form feed...: valid JSON, written raw by writers that do not escape non-ASCII text, and
common in scraped text). `str.splitlines` cut such a record in two, so a valid items, outcomes or
pairs file was refused, a spill file could not be imported, and a Batch API output line was lost
(its item failed). Every reader now splits at newlines only (thrifty.jsonl.text_lines)."""

from __future__ import annotations

import json
from pathlib import Path

from thrifty.batching.deferred import run_deferred
from thrifty.batching.items import load_items
from thrifty.cache.pairs import read_pairs
from thrifty.evaluation.dataset import load_outcomes
from thrifty.gateway import Gateway
from thrifty.jsonl import text_lines
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread

BREAKS = "one\u2028two\u2029three\x85four\x0cfive\x1cend"


def _raw(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)  # the breaks stay raw characters


def test_text_lines_splits_at_newlines_only() -> None:
    assert text_lines(f"a{BREAKS}\r\nb\n\nc\n") == [f"a{BREAKS}", "b", "", "c"]
    assert BREAKS.splitlines() != [BREAKS]  # what the readers used to do


def test_input_files_keep_records_whole(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(_raw({"id": 1, "input": BREAKS}) + "\n" + _raw({"id": 2, "input": "plain"}) + "\n",
                     encoding="utf-8")
    assert [it.input for it in load_items(items)] == [BREAKS, "plain"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(_raw({"text_a": BREAKS, "text_b": "x", "label": 1}) + "\n", encoding="utf-8")
    assert read_pairs(pairs)[0].text_a == BREAKS
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text(_raw({"prompt": BREAKS, "outcomes": {"m": {"score": 1, "response": BREAKS, "cost": 0.1}}})
                        + "\n", encoding="utf-8")
    loaded = load_outcomes(outcomes)
    assert len(loaded) == 1 and loaded.items[0].outcomes["m"].response == BREAKS


def test_spilled_rows_with_line_breaks_are_imported() -> None:
    """thrifty writes spill files escaped; one re-saved by a tool that does not escape must still import."""
    from dataclasses import asdict

    from thrifty.ledger.records import RequestRow
    from thrifty.ledger.spill import parse_spill

    row = RequestRow(request_id="req_1", ts=1.0, key_id=None, tenant="t", task=BREAKS, route=None,
                     requested_model="m", served_model="m", tier=None, strategy="passthrough", prompt_tokens=1,
                     cached_tokens=0, completion_tokens=1, reasoning_tokens=0, cost_usd=0.1, baseline_cost_usd=0.1,
                     cache_status=None, cache_saved_usd=0.0, compression_saved_tokens=0, compression_saved_usd=0.0,
                     n_attempts=0, escalations=0, latency_ms=1.0, status="ok", error_type=None, error=None,
                     stream=False, batch=False)
    rows = parse_spill(_raw({"request": asdict(row), "attempts": []}) + "\n", "spill.jsonl")
    assert len(rows) == 1 and rows[0][0] == row


async def test_batch_api_answers_with_line_breaks_are_not_lost(tmp_path: Path) -> None:
    mock_cfg = {"models": {"good": {"answers": [{"pattern": ".", "answer": "positive"}]}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mock_cfg))) as mock:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": mock.url + "/v1"}},
            "models": {"good": {"provider": "mock", "price": {"input": 1.0, "output": 4.0}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "batching": {"deferred": {"poll_interval_s": 0.05}},
        })
        try:
            job, results = await run_deferred(gw, [{"id": "a", "input": BREAKS}, {"id": "b", "input": "plain"}],
                                              task="Classify.", model="good", labels=["positive", "negative"],
                                              interval=0.05)
        finally:
            await gw.aclose()
    assert job.status == "finished", job
    assert [(r.status, r.output) for r in results] == [("ok", "positive"), ("ok", "positive")]
