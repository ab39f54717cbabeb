"""The core CLI commands, run as a user would (one-line errors, exit codes, outputs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thrifty.cli.main import build_app, main

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(build_app(), list(args))
    return result.exit_code, result.output


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_estimate_article_example_json() -> None:
    code, out = run("estimate", "-n", "500000", "--output-tokens", "1000", "-m", "gpt-4o,deepseek-v4-flash", "--json")
    assert code == 0
    data = json.loads(out)
    costs = {r["model"]: r["monthly_usd"] for r in data["rows"]}
    assert data["baseline"] == "gpt-4o"
    assert costs == {"gpt-4o": pytest.approx(5000.0), "deepseek-v4-flash": pytest.approx(125.0)}
    saved = {r["model"]: r["saved_pct"] for r in data["rows"]}
    assert saved["deepseek-v4-flash"] == pytest.approx(97.5)


def test_estimate_table_and_workloads_file(tmp_path: Path) -> None:
    wl = tmp_path / "w.yaml"
    wl.write_text("workloads:\n  - {name: faq, requests_per_month: 500000, output_tokens: 1000, models: [gpt-4o, qwen3-8b]}\n")
    code, out = run("estimate", "--workloads", str(wl), "-m", "gpt-4o")
    assert code == 0 and "faq" in out and "5,000.00" in out and "5.00" in out


def test_estimate_missing_volume_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "estimate", "--output-tokens", "10")
    assert code == 2 and err.strip().count("\n") == 0 and err.startswith("thrifty: give --requests-per-month")


def test_init_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "t.yaml"
    code, _ = run("init", "--upstream-url", "http://127.0.0.1:9/v1", "--api-key-env", "MY_KEY", "--out", str(out_file))
    assert code == 0 and "${MY_KEY}" in out_file.read_text()
    code, out = run("config", "check", str(out_file))
    assert code == 0 and "5 model(s), baseline gpt-4o" in out
    # refuses to overwrite
    code, _, err = run_main(capsys, "init", "--out", str(out_file))
    assert code == 2 and "exists" in err


def test_config_check_reports_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {p: {base_url: 'http://x'}}\nmodels: {m: {provider: q}}\n")
    code, _, err = run_main(capsys, "config", "check", str(bad))
    assert code == 2 and "models.m.provider: unknown provider 'q'" in err and "Traceback" not in err


def test_report_without_ledger_and_bad_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://x'}}\nmodels: {m: {provider: p}}\nledger: {path: none.db}\n")
    code, _, err = run_main(capsys, "report", "--config", str(cfg))
    assert code == 2 and "no ledger" in err
    code, _, err = run_main(capsys, "report", "--config", str(cfg), "--format", "xml")
    assert code == 2 and "--format" in err


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "thrifty"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "serve" in proc.stdout


@pytest.mark.parametrize("command", [["report"], ["keys", "list"], ["ledger", "import-spill"]])
def test_config_from_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    """Every command reading a config takes $THRIFTY_CONFIG when --config is not given (a
    container sets it once); without either, the parser's one-line refusal names both."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://x'}}\nmodels: {m: {provider: p}}\nledger: {path: env.db}\n")
    code, _, err = run_main(capsys, *command)
    assert code == 2 and "--config" in err and "THRIFTY_CONFIG" in err and "Traceback" not in err
    monkeypatch.setenv("THRIFTY_CONFIG", str(cfg))
    code, _, err = run_main(capsys, *command)
    # The command reached the config's ledger: report finds none yet; the others open (create) it.
    assert "Missing option" not in err
    if command == ["report"]:
        assert code == 2 and "no ledger at" in err and "env.db" in err
    else:
        assert code == 0 and (tmp_path / "env.db").exists()
