"""Rows of outcome data sharing one prompt are each replayed with their own recorded answer.

`thrifty eval` tells such rows apart by `metadata.eval_id`, which the replay upstream reads from
the body it is sent. `metadata` goes upstream only with `store: true` (OpenAI refuses it
otherwise), so the eval's requests must carry `store`: without it every row sharing a prompt
was answered with the first row's outcome (its answer and its cost). Captured traffic repeats
prompts often, so outcome files built from it have such rows.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from thrifty.evaluation.dataset import load_jsonl
from thrifty.evaluation.runner import run_inprocess
from thrifty.gateway import Gateway
from thrifty.providers.replay import ReplayIndex


def test_rows_sharing_a_prompt_each_get_their_own_recorded_outcome(tmp_path: Path) -> None:
    rows = [{"prompt": "What is the capital of France?", "task": "geo",
             "outcomes": {"cheap": {"score": 1.0, "response": f"answer {i}", "cost": 0.001 * (i + 1)}}}
            for i in range(3)]
    data = tmp_path / "outcomes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outcomes = load_jsonl(data)
    config = {"providers": {"replay": {"base_url": "http://replay.invalid/v1"}},
              "models": {"cheap": {"provider": "replay", "price": {"input": 1, "output": 1}}},
              "default_model": "cheap", "ledger": {"enabled": False}}
    decisions = asyncio.run(run_inprocess(config, ReplayIndex(outcomes), list(outcomes),
                                          lambda cfg, providers: Gateway.from_config(cfg, providers=providers)))
    assert [d.final for d in decisions] == ["cheap"] * 3, [d.error for d in decisions]
    assert [round(d.cost, 6) for d in decisions] == [0.001, 0.002, 0.003]
