"""Property-based fuzzing of the readers of user files: batch items (``thrifty batch run``),
outcome files (``thrifty eval``, ``calibrate``, ``router train``) and question pairs
(``thrifty cache eval`` / ``calibrate``). Whatever the file holds, a reader returns its records or
raises ``DataError`` (the CLI's one-line message naming the file and line), never another
exception. Lines are drawn near-valid (each record's fields, one of them replaced by a value of
any JSON type or dropped) mixed with junk lines (bytes that are not JSON, JSON that is not an
object). Hypothesis's database is off and generation derandomized: a fresh checkout runs the same
examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thrifty.batching.items import load_items
from thrifty.cache.pairs import read_pairs
from thrifty.errors import DataError
from thrifty.evaluation.dataset import load_outcomes

FUZZ = settings(max_examples=int(os.environ.get("THRIFTY_FUZZ_EXAMPLES", "250")), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=5)


def record(valid: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A valid record, or one with a field replaced by any JSON value or dropped, or junk."""
    def mutate(rec: dict[str, Any], field: str | None, value: Any, drop: bool) -> dict[str, Any]:
        out = dict(rec)
        if field is not None:
            if drop:
                out.pop(field, None)
            else:
                out[field] = value
        return out

    near = st.builds(mutate, st.fixed_dictionaries(valid), st.one_of(st.none(), st.sampled_from(sorted(valid))),
                     json_value, st.booleans())
    return st.one_of(near, near, near, json_value)


def lines_of(rec: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    line = st.one_of(rec.map(lambda r: json.dumps(r).encode()), rec.map(lambda r: json.dumps(r).encode()),
                     st.binary(max_size=30), st.just(b""), st.just(b"{\"unterminated\": "))
    return st.lists(line, max_size=5).map(lambda ls: b"\n".join(ls))


outcome = st.fixed_dictionaries({"score": st.sampled_from([0, 1, 0.5]), "response": st.text(max_size=10),
                                 "cost": st.floats(0, 1)})
outcome_record = record({
    "prompt": st.text(max_size=30),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                "content": st.text(max_size=20)}), max_size=2),
    "task": st.text(max_size=5),
    "outcomes": st.dictionaries(st.sampled_from(["cheap", "big"]), outcome, min_size=1, max_size=2),
})
pair_record = record({"text_a": st.text(max_size=20), "text_b": st.text(max_size=20),
                      "label": st.sampled_from([0, 1])})
item_record = record({"id": st.one_of(st.integers(0, 10), st.text(max_size=5)), "input": st.text(max_size=20)})


def _read_or_refuse(reader: Callable[[Path], Any], path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        reader(path)
    except DataError as exc:
        message = str(exc)
        assert message and path.name in message, message  # names the file (and the line, where one is at fault)
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} on {data!r}: {exc}")


@FUZZ
@given(data=lines_of(outcome_record))
def test_outcome_files_are_read_or_refused_with_a_data_error(tmp_path: Path, data: bytes) -> None:
    _read_or_refuse(load_outcomes, tmp_path / "outcomes.jsonl", data)


@FUZZ
@given(data=lines_of(pair_record))
def test_pairs_files_are_read_or_refused_with_a_data_error(tmp_path: Path, data: bytes) -> None:
    _read_or_refuse(read_pairs, tmp_path / "pairs.jsonl", data)


@FUZZ
@given(data=lines_of(item_record))
def test_batch_items_files_are_read_or_refused_with_a_data_error(tmp_path: Path, data: bytes) -> None:
    _read_or_refuse(load_items, tmp_path / "items.jsonl", data)


@FUZZ
@given(rows=st.lists(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["1.0", "0.0", "", "nan", "-1", "x"])),
                              min_size=0, max_size=8), max_size=4))
def test_routerbench_csv_files_are_read_or_refused_with_a_data_error(tmp_path: Path, rows: list[list[str]]) -> None:
    import csv
    import io

    header = ["sample_id", "prompt", "eval_name", "cheap", "cheap|model_response", "cheap|total_cost"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    _read_or_refuse(load_outcomes, tmp_path / "bench.csv", buf.getvalue().encode())
