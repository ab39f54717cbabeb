"""`thrifty batch` against the mock upstream: output ids keep the input's JSON type (packed runs,
deferred jobs and `batch results` read back later), id-less items are numbered without
colliding silently, and job prefixes shared by several jobs are refused as ambiguous."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.cli_run import assert_one_line, run_main
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULES = [{"pattern": "love", "answer": "positive"}, {"pattern": ".", "answer": "negative"}]
# A string id, an integer id, a string that looks like an integer, and a line with no id (line 4).
ITEMS = [{"id": "a", "input": "I love it"}, {"id": 7, "input": "it broke"}, {"id": "8", "input": "love it"},
         {"input": "meh"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"good": {"answers": RULES}}}))) as server:
        yield server


def write_config(mock: RunningServer, tmp: Path) -> Path:
    cfg: dict[str, Any] = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
        "models": {"good": {"provider": "mock", "price": {"input": 1.0, "output": 4.0}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "batching": {"deferred": {"poll_interval_s": 0.05}},
    }
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_items(tmp: Path, items: list[dict[str, Any]], name: str = "items.jsonl") -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return path


def ids_of(path: Path) -> list[Any]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", [[], ["--deferred"]])
def test_output_ids_keep_the_json_type_of_the_input(mode: list[str], mock: RunningServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg, items, out = write_config(mock, tmp_path), write_items(tmp_path, ITEMS), tmp_path / "out.jsonl"
    code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "Classify.", "--model", "good",
                            "--labels", "positive,negative", "--out", str(out), "--config", str(cfg),
                            "--no-progress", *mode)
    assert code == 0, err
    assert ids_of(out) == ["a", 7, "8", 4]  # the id-less line 4 is numbered 4 (a number)
    if mode:
        # Read back by a later command from the job store: the same types.
        job_id = run_main(capsys, "batch", "status", "--config", str(cfg))[1].split()[0]
        again = tmp_path / "again.jsonl"
        code, _, err = run_main(capsys, "batch", "results", job_id, "--out", str(again), "--config", str(cfg))
        assert code == 0, err
        assert again.read_text() == out.read_text()


def test_an_id_less_line_whose_number_is_taken_is_refused_naming_both_lines(
        mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(mock, tmp_path)
    items = write_items(tmp_path, [{"id": 3, "input": "x"}, {"input": "y"}, {"input": "z"}])
    code, out, err = run_main(capsys, "batch", "run", str(items), "--task", "t", "--model", "good",
                              "--config", str(cfg), "--no-progress")
    assert_one_line(code, err, "items.jsonl: line 3 has no 'id'", "is the id of line 1")
    assert out == ""


def test_item_errors_name_the_file(mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(mock, tmp_path)
    items = write_items(tmp_path, [{"id": 1}], "noinput.jsonl")
    code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "t", "--model", "good",
                            "--config", str(cfg), "--no-progress")
    assert_one_line(code, err, f"{items}: line 1: 'input' must be a non-empty string")


@pytest.mark.parametrize("labels", [",", " , ,"])
def test_labels_without_a_label_are_refused(labels: str, mock: RunningServer, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg, items = write_config(mock, tmp_path), write_items(tmp_path, ITEMS)
    code, out, err = run_main(capsys, "batch", "run", str(items), "--task", "t", "--model", "good",
                              "--labels", labels, "--config", str(cfg), "--no-progress")
    assert_one_line(code, err, "--labels", "no label")
    assert out == ""


def test_a_job_prefix_shared_by_several_jobs_is_ambiguous(mock: RunningServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(mock, tmp_path)
    for n in range(2):  # two different jobs (different items), left running
        items = write_items(tmp_path, [{"id": n, "input": f"text {n}"}], f"i{n}.jsonl")
        code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "t", "--model", "good",
                                "--deferred", "--no-wait", "--config", str(cfg), "--no-progress")
        assert code == 0, err
    code, _, err = run_main(capsys, "batch", "status", "bj_", "--config", str(cfg))
    assert_one_line(code, err, "prefix 'bj_' is ambiguous", "2 job ids", "bj_")
    # A prefix is matched literally: '_' is not a wildcard.
    code, _, err = run_main(capsys, "batch", "status", "b_", "--config", str(cfg))
    assert_one_line(code, err, "no batch job 'b_'")
