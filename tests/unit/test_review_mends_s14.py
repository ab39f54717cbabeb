"""Mends from the review of the session's whole change: each case failed before it."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from thrifty.compress.compact import compact
from thrifty.cost import usd_header
from thrifty.evaluation.dataset import load_outcomes
from thrifty.types import ChatRequest

ROUTERBENCH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "routerbench" / "mbpp_train.csv"


def test_a_system_prompt_holding_a_nul_is_left_as_it_is() -> None:
    # Both hiding steps mark code with NULs: one in the text was read as a placeholder (IndexError, a 500).
    text = "Acme Widgets rules.  Acme Widgets again. `x` \x00b\x00 and \x001\x00 end"
    assert compact(text, {"Acme Widgets": "AW"}) == text
    assert compact(text) == text


def test_a_null_cache_option_is_not_set() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for body in ({**base, "cache": False, "thrifty": {"cache": None}},
                 {**base, "cache": None, "thrifty": {"cache": False}}):
        assert ChatRequest.from_body(body).options.get("cache") is False


def test_a_tiny_negative_cost_header_reads_zero() -> None:
    assert usd_header(-1e-13) == "0" and usd_header(0.0) == "0" and usd_header(1.5e-9) == "0.0000000015"


@pytest.mark.skipif(not ROUTERBENCH.exists(), reason="the shared RouterBench data is not beside the checkout")
def test_a_routerbench_csv_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    csv.field_size_limit(sys.maxsize)
    with ROUTERBENCH.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[:6]
    # Excel's "CSV UTF-8": a BOM, and here the prompt column first, whose name it used to mangle.
    order = [rows[0].index("prompt")] + [i for i in range(len(rows[0])) if rows[0][i] != "prompt"]
    path = tmp_path / "mbpp_test.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as fh:
        csv.writer(fh).writerows([[r[i] for i in order] for r in rows])
    assert len(load_outcomes(path)) == 5
