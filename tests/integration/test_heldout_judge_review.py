"""The judge's view: ``thrifty eval`` and ``thrifty cache eval`` on held-out data cut from the shared
data, with the awkward files a judge's held-out set may hold, checked against figures recomputed
by hand from the data and the ``--decisions`` file."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from fixtures.cli_run import assert_one_line, run_main

csv.field_size_limit(sys.maxsize)


def qqp_rows(data: Path, start: int, stop: int) -> list[dict[str, object]]:
    lines = (data / "qqp" / "pairs_dev.jsonl").read_text(encoding="utf-8").splitlines()[start:stop]
    return [json.loads(line) for line in lines]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cache_eval_decisions_index_the_pairs_file_when_calibration_overlap_is_left_out(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calibration = qqp_rows(data_dir, 0, 400)
    heldout = qqp_rows(data_dir, 1000, 1120)
    # The first five held-out pairs repeat calibration pairs: they are left out of the judged set,
    # so every later pair's position in the judged list is five less than its line in the file.
    pairs = write_jsonl(tmp_path / "heldout.jsonl", calibration[:5] + heldout)
    cal = write_jsonl(tmp_path / "cal.jsonl", calibration)
    out = tmp_path / "decisions.jsonl"
    code, stdout, err = run_main(capsys, "cache", "eval", "--pairs", str(pairs), "--calibrate-on", str(cal),
                                 "--embedder", "lexical", "--model", "cosine", "--confidence", "0",
                                 "--max-false-hit-rate", "0.2", "--decisions", str(out), "--json")
    assert code == 0, err
    assert "5 of the 125 --pairs share a question" in err
    rep = json.loads(stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(5, 125))
    # A judge scores each line with the label of the pair its index names in the file.
    labels = [json.loads(line)["label"] for line in pairs.read_text().splitlines()]
    hits = [labels[r["index"]] for r in rows if r["hit"]]
    assert hits, "the operating point should serve some pairs for this check to mean anything"
    assert sum(hits) == rep["operating_point"]["duplicates_served"]
    assert len(hits) - sum(hits) == rep["operating_point"]["false_hits"]


def copy_rows(data: Path, out: Path, files: dict[str, str], start: int, stop: int) -> Path:
    """Rows [start, stop) of each shared RouterBench file in ``files`` (shared name: new name)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, new in files.items():
        with (data / "routerbench" / name).open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = [r for i, r in enumerate(reader) if start <= i < stop]
        with (out / new).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    return out


def test_eval_names_a_heldout_task_absent_from_train_as_the_cause_of_overspending(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Held-out data brings a task family (mbpp) that --train has no prompt of: the fit never saw
    # it, so its prompts are not routed as the budget says. The warning must say so, not blame
    # the cost estimates.
    train = copy_rows(data_dir, tmp_path / "train", {"arc_challenge_train.csv": "arc_challenge_train.csv",
                                                     "winograde_train.csv": "winograde_train.csv"}, 0, 200)
    test = copy_rows(data_dir, tmp_path / "test", {"arc_challenge_train.csv": "arc_challenge_test.csv",
                                                   "winograde_train.csv": "winograde_test.csv",
                                                   "mbpp_train.csv": "mbpp_test.csv"}, 200, 240)
    code, stdout, err = run_main(capsys, "eval", "--train", str(train), "--data", str(test),
                                 "--max-cost-share", "0.1", "--sweep", "none", "-q", "--json")
    assert code == 0, err
    warnings = json.loads(stdout)["warnings"]
    assert "tasks of --data with no --train prompt: mbpp (40 prompts)" in warnings[0], warnings
    over = [w for w in warnings if "is over the budget" in w]
    assert over and "tasks of --data have no --train prompt" in over[0], warnings
    assert "costs estimated on the training prompts did not hold" not in over[0]


def test_eval_reads_a_heldout_folder_with_upper_case_extensions_and_macos_resource_files(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_rows(data_dir, tmp_path / "heldout", {"mbpp_train.csv": "MBPP_TEST.CSV"}, 0, 12)
    # What unzipping a Mac-made archive leaves beside each file: binary, not data.
    (folder / "._MBPP_TEST.CSV").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    for data in (folder, folder / "MBPP_TEST.CSV"):
        code, stdout, err = run_main(capsys, "eval", "--data", str(data), "--no-fit", "--sweep", "none", "-q", "--json")
        assert code == 0, err
        assert json.loads(stdout)["prompts"] == 12


def heldout_csv(data_dir: Path, tmp_path: Path) -> tuple[Path, list[str], list[list[str]]]:
    """A 12-row held-out ``mbpp_test.csv`` copied from the data: its path, header and rows."""
    folder = copy_rows(data_dir, tmp_path / "heldout", {"mbpp_train.csv": "mbpp_test.csv"}, 0, 12)
    path = folder / "mbpp_test.csv"
    with path.open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    return path, header, rows


def test_eval_skips_the_empty_rows_a_spreadsheet_saves_without_renumbering_the_others(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, header, rows = heldout_csv(data_dir, tmp_path)
    blank = [""] * len(header)
    with path.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows([header, *rows[:6], blank, *rows[6:], blank])
    decisions = tmp_path / "d.jsonl"
    code, stdout, err = run_main(capsys, "eval", "--data", str(path), "--no-fit", "--sweep", "none", "-q", "--json",
                                 "--decisions", str(decisions))
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["prompts"] == 12
    gpt4 = next(r for r in doc["rows"] if r["name"] == "always gpt-4-1106-preview")
    column = header.index("gpt-4-1106-preview")
    assert gpt4["accuracy"] == pytest.approx(sum(float(r[column] or 0) for r in rows) / 12)
    # Rows keep their place in the file (pandas' row index): the one after the blank row is 7.
    assert [json.loads(line)["row"] for line in decisions.read_text().splitlines()] == [*range(6), *range(7, 13)]


def test_eval_refuses_a_model_whose_score_column_is_missing_rather_than_scoring_it_zero(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, header, rows = heldout_csv(data_dir, tmp_path)
    # The model's response and cost columns are there, its score column is not.
    keep = [i for i, name in enumerate(header) if name != "mistralai/mixtral-8x7b-chat"]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([[row[i] for i in keep] for row in [header, *rows]])
    code, _, err = run_main(capsys, "eval", "--data", str(path), "--no-fit", "--sweep", "none", "-q")
    assert_one_line(code, err, "no score column for 'mistralai/mixtral-8x7b-chat'", "mbpp_test.csv")
