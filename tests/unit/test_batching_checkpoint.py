"""The progress file of packed batch runs (batching/checkpoint.py): whole lines only, a cut last
line from a crash dropped, another run's progress never used, one run per file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thrifty.batching.checkpoint import Checkpoint, run_id_for
from thrifty.batching.items import coerce_items
from thrifty.batching.runner import ItemResult
from thrifty.errors import UsageError

ITEMS = coerce_items([{"id": 7, "input": "a"}, {"id": "b", "input": "b"}, {"id": "c", "input": "c"}])
RUN = run_id_for("cheap", "Classify.", ["x", "y"], ITEMS)


def ok(item_id: str, output: str = "x") -> ItemResult:
    return ItemResult(item_id, output, "ok", "packed", 0.0012345, 10.5, 2.25, 1, None)


def test_run_id_follows_the_work_not_the_settings() -> None:
    assert run_id_for("cheap", "Classify.", ["x", "y"], coerce_items([{"id": 7, "input": "a"},
                                                                            {"id": "b", "input": "b"},
                                                                            {"id": "c", "input": "c"}])) == RUN
    others = [run_id_for("strong", "Classify.", ["x", "y"], ITEMS), run_id_for("cheap", "Other.", ["x", "y"], ITEMS),
              run_id_for("cheap", "Classify.", None, ITEMS), run_id_for("cheap", "Classify.", ["x", "y"], ITEMS[:2]),
              run_id_for("cheap", "Classify.", ["x", "y"], coerce_items(["a", "b", "changed"]))]
    assert RUN not in others and len(set(others)) == len(others)


def test_results_survive_a_reopen_with_their_id_type(tmp_path: Path) -> None:
    path = tmp_path / "p.partial"
    cp = Checkpoint.open(path, RUN)
    cp.add([(7, ok("7")), ("b", ItemResult("b", None, "failed", "failed", 0.1, 1, 1, 2, "no answer"))])
    assert cp.kept == 0  # queued, not yet written
    cp.sync()
    assert cp.kept == 1  # failed items are not kept: a new run tries them again
    cp.close()
    again = Checkpoint.open(path, RUN)
    assert set(again.finished) == {"7"} and again.resumed == 1 and not again.replaced
    assert again.finished["7"].to_json() == ok("7").to_json()
    assert json.loads(path.read_text().splitlines()[1])["id"] == 7  # the number the input gave
    again.close()


def test_a_line_cut_by_a_crash_is_dropped_and_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "p.partial"
    cp = Checkpoint.open(path, RUN)
    cp.add([(7, ok("7"))])
    cp.sync()
    cp.close()
    whole = path.read_bytes()
    path.write_bytes(whole + ok("b").to_line("b").encode()[:25])  # the crash: half a line
    cp = Checkpoint.open(path, RUN)
    assert set(cp.finished) == {"7"} and path.read_bytes() == whole
    cp.add([("c", ok("c", "y"))])
    cp.sync(before=lambda: None)
    cp.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)
    cp = Checkpoint.open(path, RUN)
    assert set(cp.finished) == {"7", "c"}
    cp.close()


def test_damaged_and_foreign_content_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "p.partial"
    header = json.dumps({"thrifty_batch_checkpoint": 1, "run": RUN})
    path.write_text("\n".join([header, "{not json", json.dumps({"id": "b", "status": "ok"}),  # no output
                               ok("c").to_line("c").strip(), "[1, 2]"]) + "\n")
    cp = Checkpoint.open(path, RUN)
    assert set(cp.finished) == {"c"}
    cp.close()

    other = run_id_for("cheap", "Another task.", None, ITEMS)
    cp = Checkpoint.open(path, other)  # another run's progress: dropped
    assert cp.finished == {} and cp.replaced
    cp.close()
    assert path.read_text() == json.dumps({"thrifty_batch_checkpoint": 1, "run": other}) + "\n"

    path.write_text("some file the user had\n")
    cp = Checkpoint.open(path, RUN)
    assert cp.finished == {} and cp.replaced
    cp.close()


def test_restart_drops_this_runs_progress(tmp_path: Path) -> None:
    path = tmp_path / "p.partial"
    cp = Checkpoint.open(path, RUN)
    cp.add([(7, ok("7"))])
    cp.sync()
    cp.close()
    cp = Checkpoint.open(path, RUN, restart=True)
    assert cp.finished == {} and cp.replaced and cp.kept == 0
    cp.remove()
    assert not path.exists()


def test_one_run_per_file(tmp_path: Path) -> None:
    path = tmp_path / "p.partial"
    first = Checkpoint.open(path, RUN)
    with pytest.raises(UsageError, match="in use by another"):
        Checkpoint.open(path, RUN)
    first.close()
    Checkpoint.open(path, RUN).close()  # released on close


def test_due_waits_for_results_and_the_interval(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "p.partial", RUN, interval_s=0)
    assert not cp.due()  # nothing queued
    cp.add([(7, ok("7"))])
    assert cp.due()
    cp.close()
    cp = Checkpoint.open(tmp_path / "p.partial", RUN, interval_s=3600)
    cp.add([("b", ok("b"))])
    assert not cp.due()
    cp.close()
