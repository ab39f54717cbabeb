"""`make bench` runs bench/run_all.py: it must run every command docs/benchmarks.md names, and
every script it lists must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fixtures.bench_module import load_bench

ROOT = Path(__file__).resolve().parents[2]


def test_every_documented_benchmark_is_run_and_exists() -> None:
    run_all = load_bench("run_all")
    listed = {" ".join(argv) for _, argv, _ in run_all.BENCHES}
    documented = re.findall(r"_Command:_ `(?:\.venv/bin/)?python (bench/[^`]+)`", (ROOT / "docs" / "benchmarks.md").read_text())
    assert documented
    for command in documented:
        assert command in listed, f"docs/benchmarks.md names `{command}`, which bench/run_all.py does not run"
    for name, argv, _slow in run_all.BENCHES:
        assert (ROOT / argv[0]).is_file(), name


def test_selection() -> None:
    run_all = load_bench("run_all")
    quick = run_all.selected(None, include_slow=False)
    assert quick and all(not slow for _, _, slow in quick)
    assert len(run_all.selected(None, include_slow=True)) == len(run_all.BENCHES)
    assert [n for n, _, _ in run_all.selected("soak,tokenizers", False)] == ["tokenizers", "soak"]
    with pytest.raises(SystemExit, match="unknown benchmark nope"):
        run_all.selected("nope", False)
