"""`thrifty evaluate` (the product brief's name for the command) runs `thrifty eval`: the same
options, the same result, and the same one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.cli_run import assert_one_line, run_main


def test_evaluate_is_eval(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_dir / "routerbench" / "mbpp_train.csv"
    args = ("--data", str(data), "--no-fit", "--sweep", "none", "-q", "--json")
    code, by_eval, err = run_main(capsys, "eval", *args)
    assert code == 0, err
    code, by_evaluate, err = run_main(capsys, "evaluate", *args)
    assert code == 0, err
    first, second = json.loads(by_eval), json.loads(by_evaluate)
    first.pop("timings_s"), second.pop("timings_s")  # wall times differ run to run
    assert second == first
    assert second["prompts"] == 299

    code, _, err = run_main(capsys, "evaluate", "--data", str(tmp_path / "missing.csv"))
    assert_one_line(code, err, "missing.csv")
    code, out, _ = run_main(capsys, "--help")
    assert " eval " in out and "evaluate" not in out  # listed once
