"""Packing: item files, the packed prompt, per-item validation, and the mock's packed answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thrifty.batching.items import Item, coerce_items, load_items
from thrifty.batching.packing import packed_messages, packed_params, parse_packed, valid_output
from thrifty.errors import DataError
from thrifty.mock.behaviour import ModelBehaviour
from thrifty.mock.completion import build_plan

ITEMS = [Item("a", "I love it"), Item("b", "terrible"), Item("c", "great stuff")]
LABELS = ["positive", "negative"]


def test_load_items_accepts_ids_texts_and_strings(tmp_path: Path) -> None:
    f = tmp_path / "items.jsonl"
    f.write_text('{"id": "x", "input": "one"}\n\n{"text": "two"}\n"three"\n{"id": 7, "prompt": "four"}\n')
    assert load_items(f) == [Item("x", "one"), Item("3", "two"), Item("4", "three"), Item("7", "four")]


@pytest.mark.parametrize("content,needle", [
    ('{"id": "x", "input": "a"}\n{"id": "x", "input": "b"}\n', "duplicate item id 'x'"),
    ('{"id": "x"}\n', "line 1: 'input'"),
    ('{"id": "x", "input": "a"}\nnot json\n', "line 2: not valid JSON"),
    ("", "no items"),
])
def test_load_items_errors_name_the_line(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "items.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=needle):
        load_items(f)


def test_packed_request_uses_local_ids_and_a_schema() -> None:
    msgs = packed_messages("Classify the sentiment.", ITEMS, LABELS)
    assert "thrifty-pack" in msgs[0]["content"] and "positive, negative" in msgs[0]["content"]
    assert json.loads(msgs[1]["content"]) == {"items": [{"id": "1", "input": "I love it"},
                                                        {"id": "2", "input": "terrible"},
                                                        {"id": "3", "input": "great stuff"}]}
    schema = packed_params(LABELS, True, 100)["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["results"]["items"]["properties"]["output"]["enum"] == LABELS
    assert "response_format" not in packed_params(LABELS, False, 100)


def test_parse_accepts_any_order_and_flags_missing_duplicated_invalid() -> None:
    text = json.dumps({"results": [{"id": "3", "output": "positive"}, {"id": "2", "output": "Negative."},
                                   {"id": "9", "output": "positive"}]})
    out = parse_packed(text, ITEMS, LABELS)
    assert out.accepted == {"c": "positive", "b": "negative"} and out.failed == {"a": "missing from the answer"}
    dup = json.dumps({"results": [{"id": "1", "output": "positive"}, {"id": "1", "output": "positive"},
                                  {"id": "2", "output": "maybe"}, {"id": "3", "output": None}]})
    out = parse_packed(dup, ITEMS, LABELS)
    assert out.failed == {"a": "duplicated in the answer", "b": "invalid output", "c": "invalid output"}
    broken = parse_packed('{"results": [{"id": "1", "outp', ITEMS, LABELS)
    assert set(broken.failed) == {"a", "b", "c"} and not broken.accepted
    fenced = parse_packed('```json\n{"results": [{"id": "1", "output": "x"}]}\n```', ITEMS[:1], None)
    assert fenced.accepted == {"a": "x"}


def test_custom_validator() -> None:
    assert valid_output("42", ITEMS[0], None, lambda item, out: out.isdigit()) == "42"
    assert valid_output("forty", ITEMS[0], None, lambda item, out: out.isdigit()) is None
    with pytest.raises(DataError):
        coerce_items([])


def _mock_answer(**faults: object) -> str:
    behaviour = ModelBehaviour.model_validate({"answers": [{"pattern": "love|great", "answer": "positive"},
                                                           {"pattern": ".", "answer": "negative"}],
                                               "faults": faults})
    items = [Item(str(i), "I love it" if i % 2 else "bad") for i in range(6)]
    body = {"model": "m", "messages": packed_messages("Classify.", items, LABELS), **packed_params(LABELS, True, 500)}
    content = build_plan(0, body, "m", behaviour).choices[0].content
    assert content is not None
    return content


def test_mock_answers_packs_item_by_item_and_misbehaves_on_request() -> None:
    good = json.loads(_mock_answer())["results"]
    assert [r["output"] for r in good] == ["negative", "positive"] * 3
    assert [r["id"] for r in good] == ["1", "2", "3", "4", "5", "6"]
    assert len(json.loads(_mock_answer(pack_drop=2))["results"]) == 4
    dup = [r["id"] for r in json.loads(_mock_answer(pack_duplicate=1))["results"]]
    assert len(dup) == 7 and len(set(dup)) == 6
    reordered = [r["id"] for r in json.loads(_mock_answer(pack_reorder=True))["results"]]
    assert sorted(reordered) == sorted(r["id"] for r in good) and reordered != [r["id"] for r in good]
    assert sum(r["output"] is None for r in json.loads(_mock_answer(pack_invalid=2))["results"]) == 2
    with pytest.raises(json.JSONDecodeError):  # broken on purpose, not some other ValueError
        json.loads(_mock_answer(pack_break_json=True))
    assert json.loads(_mock_answer(pack_break_json=True, pack_min_items=7))["results"] == good
