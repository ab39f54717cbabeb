import json

import pytest

from thrifty.evaluation.dataset import load_outcomes
from thrifty.evaluation.prices import derive_prices


def test_prices_recover_the_per_token_rates_behind_recorded_costs(tmp_path):
    lines = []
    for i in range(40):
        p, c = 100 + 37 * i, 5 + (i * 13) % 50
        outcomes = {
            "cheap": {"response": "x", "usage": {"prompt_tokens": p, "completion_tokens": c},
                      "cost": (p * 0.2 + c * 0.6) / 1e6},
            "dear": {"response": "x", "usage": {"prompt_tokens": p, "completion_tokens": c},
                     "cost": (p * 10 + c * 30) / 1e6},
        }
        lines.append(json.dumps({"prompt": f"q{i}", "outcomes": outcomes}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    prices = derive_prices(load_outcomes(tmp_path / "d.jsonl"))
    assert prices["cheap"]["input"] == pytest.approx(0.2, rel=1e-3)
    assert prices["cheap"]["output"] == pytest.approx(0.6, rel=1e-3)
    assert prices["dear"]["input"] == pytest.approx(10, rel=1e-3)
    assert prices["dear"]["output"] == pytest.approx(30, rel=1e-3)
