"""Pairs files as a judge may hand them over: JSON Lines with a byte-order mark, and GPTCache's
paraphrase files (one JSON array of {"origin", "similar"}: positives)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thrifty.cache.pairs import read_pairs
from thrifty.errors import DataError


def test_a_jsonl_pairs_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [{"text_a": "How old is Paris?", "text_b": "What is the age of Paris?", "label": 1},
            {"text_a": "Is tea hot?", "text_b": "Is coffee cold?", "label": 0}]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in rows).encode())
    pairs = read_pairs(path)
    assert [(p.text_a, p.label) for p in pairs] == [("How old is Paris?", 1), ("Is tea hot?", 0)]


def test_gptcache_paraphrase_arrays_are_positive_pairs(tmp_path: Path) -> None:
    path = tmp_path / "paraphrase_pairs.json"
    path.write_text(json.dumps([{"origin": "Where is the station?", "similar": "Where can I find the station?"},
                                {"text_a": "a", "text_b": "b", "label": 0}], indent=4), encoding="utf-8")
    pairs = read_pairs(path)
    assert [(p.text_a, p.text_b, p.label) for p in pairs] == [
        ("Where is the station?", "Where can I find the station?", 1), ("a", "b", 0)]


@pytest.mark.parametrize(("text", "message"), [
    ("[{\"origin\": 1, \"similar\": \"x\"}]", ":1: expected an object with string text_a and text_b"),
    ("[{\"origin\": \"x\",", "not valid JSON"),
    ("[]", "no pairs"),
])
def test_bad_arrays_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        read_pairs(path)
