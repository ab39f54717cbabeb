"""How the CLI speaks: parser errors as one `thrifty: ...` line (exit 2) while --help still works,
library warnings as `warning: ...` lines said once, and the report's three formats agreeing."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.cli_run import assert_one_line, run_main
from fixtures.rows import req
from thrifty.ledger.store import SQLiteStore


@pytest.mark.parametrize(("args", "needles"), [
    (["estimate", "-n", "abc", "--output-tokens", "100"], ["'--requests-per-month' / '-n'", "'thrifty estimate --help'"]),
    (["estimate", "--bogus"], ["No such option: --bogus"]),
    (["serve"], ["Missing option '--config'", "'thrifty serve --help'"]),
    (["evalute"], ["No such command 'evalute'", "'thrifty --help'"]),
    (["mock-upstream", "--allow-model", "a", "b"], ["unexpected extra argument", "(b)"]),
    (["route", "explain"], ["Missing argument 'prompt'", "'thrifty route explain --help'"]),
])
def test_parser_errors_are_one_line(args: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, *args)
    assert_one_line(code, err, *needles)
    assert "╭" not in err and out == ""


@pytest.mark.parametrize("args", [["--help"], ["estimate", "--help"], ["batch", "run", "--help"]])
def test_help_still_prints_and_exits_zero(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, *args)
    assert code == 0 and "Usage" in out and err == ""


def test_a_bare_group_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "batch")
    assert code == 2 and "Usage" in out and "results" in out


def test_config_check_warns_once_per_unpriced_model(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\nmodels: {mymodel-xyz: {provider: p}}\n"
                   f"ledger: {{path: {tmp_path / 'l.db'}}}\n")
    # A real process: under pytest a root log handler would swallow Python's bare fallback line.
    proc = subprocess.run([sys.executable, "-m", "thrifty.cli.main", "config", "check", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "mymodel-xyz" in line]
    assert lines == ["warning: models.mymodel-xyz: no known price; its cost will be recorded as unknown"]


def test_library_warnings_reach_the_terminal_as_warning_lines(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # `estimate` prices models through the catalog, which logs an unknown price.
    code, _, err = run_main(capsys, "estimate", "-n", "10", "--output-tokens", "10", "-m", "gpt-4o,nosuch-model-x")
    assert code == 0, err
    assert [line for line in err.splitlines() if "nosuch-model-x" in line] == [
        "warning: model nosuch-model-x (nosuch-model-x): no known price; its cost will be recorded as unknown"]


# ---------------------------------------------------------------- report


@pytest.fixture
def ledger_config(tmp_path: Path) -> Path:
    store = SQLiteStore(str(tmp_path / "l.db"))
    store.write([req(1, "a", 0.1, 1.0, cache_status="hit"), req(2, "a", 0.2, 1.0, cache_status="miss"),
                 req(3, "b", 0.3, 1.0)], [])
    store.close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"ledger: {{path: {tmp_path / 'l.db'}}}\n")
    return cfg


def test_report_formats_carry_the_same_columns(ledger_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "report", "--config", str(ledger_config), "--by", "model", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["group"] for r in rows] == ["a", "b"] and rows[0]["cache_misses"] == 1
    code, out, _ = run_main(capsys, "report", "--config", str(ledger_config), "--by", "model", "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == list(rows[0]) and [r[0] for r in table[1:]] == ["a", "b"]
    code, out, _ = run_main(capsys, "report", "--config", str(ledger_config), "--by", "model")
    assert "cache misses" in out and "cache hits" in out


def test_an_empty_csv_report_prints_the_whole_header(ledger_config: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "report", "--config", str(ledger_config), "--format", "csv",
                              "--since", "2000-01-01", "--until", "2000-01-02")
    assert code == 0, err
    header, = list(csv.reader(io.StringIO(out)))
    assert header[0] == "group" and "cache_misses" in header and len(header) > 10


def test_report_since_after_until_is_refused(ledger_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "report", "--config", str(ledger_config), "--since", "2024-02-01",
                            "--until", "2024-01-01")
    assert_one_line(code, err, "--since 2024-02-01", "--until 2024-01-01")


def test_report_table_hides_empty_strategies_and_ends_with_a_total(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway without caching gets a table without cache columns (it fits a terminal), says
    so, and a grouped table ends with the window's total; JSON keeps every field."""
    store = SQLiteStore(str(tmp_path / "plain.db"))
    store.write([req(1, "a", 0.1, 1.0), req(2, "a", 0.2, 1.0), req(3, "b", 0.3, 1.0)], [])
    store.close()
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(f"ledger: {{path: {tmp_path / 'plain.db'}}}\n")
    code, out, err = run_main(capsys, "report", "--config", str(cfg), "--by", "model")
    assert code == 0, err
    assert "cache hits" not in out and "compress $" not in out and "empty columns hidden" in out
    total = next(line for line in out.splitlines() if "total" in line)
    assert total.split("│")[2].strip() == "3" and "0.600000" in total  # requests and spend of a and b
    code, out, _ = run_main(capsys, "report", "--config", str(cfg), "--by", "model", "--format", "json")
    rows = json.loads(out)
    assert [r["group"] for r in rows] == ["a", "b"] and "cache_hits" in rows[0]  # no total row in JSON
