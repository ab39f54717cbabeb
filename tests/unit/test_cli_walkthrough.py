"""Regressions found walking through docs/cli.md as a newcomer: each test pins one CLI fix.

- ``cache stats`` reads the ledger like ``report`` and refuses an empty ``${VAR}`` ledger DSN
  instead of reading (or creating) a local SQLite file;
- a bad ``--embedder`` value is named as the flag, not as a config key (``cache eval``,
  ``cache calibrate``, ``router train``, the last before its data is read);
- ``--port 0`` (any free port) prints the port actually picked, so the server can be found;
- ``batch run --help`` and ``cache clear --help`` say what the docs say.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.cli_run import assert_one_line, run_main

CACHE_CONFIG = ("providers: {p: {base_url: 'http://127.0.0.1:9/v1', max_retries: 0}}\n"
                "models: {m: {provider: p, price: {input: 1.0, output: 1.0}}}\n"
                "cache: {path: cache.db}\n")


# ---------------------------------------------------------------- cache stats and the ledger DSN


def test_cache_stats_refuses_an_empty_dsn_variable_like_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THRIFTY_WALK_DSN", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CACHE_CONFIG + "ledger: {dsn: '${THRIFTY_WALK_DSN}', path: ledger.db}\n")
    code, out, err = run_main(capsys, "cache", "stats", "--config", str(cfg))
    last = err.strip().splitlines()[-1]
    assert_one_line(code, last + "\n", "ledger.dsn", "THRIFTY_WALK_DSN is unset or empty")
    assert out == ""
    # Nothing local was read or created in its place.
    assert not (tmp_path / "ledger.db").exists()
    # The same refusal as `report` gives, word for word.
    code_r, _, err_r = run_main(capsys, "report", "--config", str(cfg))
    assert code_r == 2 and err_r.strip().splitlines()[-1] == last


def test_cache_stats_still_reads_a_sqlite_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CACHE_CONFIG + "ledger: {path: ledger.db}\n")
    monkeypatch.setenv("THRIFTY_CONFIG", str(cfg))  # the documented default of --config
    code, out, err = run_main(capsys, "cache", "stats", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["requests"] == [] and body["store"]["entries"] == 0


# ---------------------------------------------------------------- --embedder names the flag


def _pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"text_a": f"q {i}", "text_b": f"q {i}?", "label": i % 2}) + "\n"
                            for i in range(10)))
    return path


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_cache_embedder_flag_is_named_in_its_error(command: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--out", str(tmp_path / "v.json")] if command == "calibrate" else []
    code, _, err = run_main(capsys, "cache", command, "--pairs", str(_pairs(tmp_path)), "--embedder", "bogus",
                            *extra)
    assert_one_line(code, err, "--embedder: unknown kind 'bogus'")
    assert not err.startswith("thrifty: embedder:")


def test_router_train_checks_embedder_before_reading_the_data(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # The data does not exist either: the flag is checked first (training can take minutes).
    code, _, err = run_main(capsys, "router", "train", "--data", str(tmp_path / "none.csv"),
                            "--out", str(tmp_path / "r.json"), "--embedder", "bogus")
    assert_one_line(code, err, "--embedder: unknown kind 'bogus'")
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- --port 0


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _start(procs: list[subprocess.Popen[str]], *args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "thrifty.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def _announced_port(proc: subprocess.Popen[str], pattern: str) -> int:
    """The port in the first stderr line matching ``pattern`` (read until it appears)."""
    assert proc.stderr is not None
    for _ in range(50):
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(pattern, line)
        if found:
            return int(found.group(1))
    pytest.fail(f"no start-up line matching {pattern!r} (exit {proc.poll()})")


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def test_mock_upstream_port_zero_prints_the_port_it_listens_on(
        tmp_path: Path, started: list[subprocess.Popen[str]]) -> None:
    proc = _start(started, "mock-upstream", "--port", "0", cwd=tmp_path)
    port = _announced_port(proc, r"thrifty mock upstream on http://127\.0\.0\.1:(\d+)/v1")
    assert port != 0
    for _ in range(100):  # uvicorn binds just after the line is printed
        try:
            assert _get(f"http://127.0.0.1:{port}/v1/models")["object"] == "list"
            break
        except OSError:
            time.sleep(0.1)
    else:
        pytest.fail(f"nothing answers on the announced port {port}")


def test_serve_port_zero_logs_the_port_it_listens_on(tmp_path: Path, started: list[subprocess.Popen[str]]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\n"
                   "models: {m: {provider: p, price: {input: 1.0, output: 1.0}}}\n"
                   "ledger: {path: ledger.db}\nserver: {port: 0}\n")
    proc = _start(started, "serve", "--config", str(cfg), cwd=tmp_path)  # port 0 from the config
    port = _announced_port(proc, r"thrifty gateway on http://127\.0\.0\.1:(\d+)/v1")
    assert port != 0
    _announced_port(proc, r"Uvicorn running on http://127\.0\.0\.1:(\d+)")  # listening now
    health = _get(f"http://127.0.0.1:{port}/health")
    assert health["status"] == "ok" and health["models"] == 1


# ---------------------------------------------------------------- --help agrees with the docs


def test_batch_run_help_keeps_its_paragraph_whole(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "batch", "run", "--help")
    assert code == 0
    lines = [line.strip(" │") for line in out.splitlines()]
    # The docstring's source line break no longer cuts the sentence after "run".
    assert not any(line.endswith("--out): run") for line in lines), out
    assert "run the same command again after an interruption" in " ".join(out.split())


def test_cache_clear_older_than_takes_an_iso_date_as_its_help_says(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "cache", "clear", "--help")
    assert code == 0 and "ISO date" in " ".join(out.split())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CACHE_CONFIG + "ledger: {path: ledger.db}\n")
    code, out, err = run_main(capsys, "cache", "clear", "--older-than", "2020-01-01", "--config", str(cfg))
    assert code == 0, err
    assert out.strip() == "deleted 0 entries"


def test_batch_commands_refuse_an_empty_dsn_variable_like_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch runs and jobs are in the ledger database: with its ${VAR} DSN unset, `batch status`
    used to read (and `batch run` to write) a local SQLite ledger the gateways never see."""
    monkeypatch.delenv("THRIFTY_WALK_DSN", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CACHE_CONFIG + "ledger: {dsn: '${THRIFTY_WALK_DSN}', path: ledger.db}\n")
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": 1, "input": "Loved it."}\n')
    for args in (["batch", "status"], ["batch", "run", str(items), "--task", "Classify.", "--model", "m"]):
        code, _, err = run_main(capsys, *args, "--config", str(cfg))
        assert_one_line(code, err.strip().splitlines()[-1] + "\n", "ledger.dsn", "THRIFTY_WALK_DSN is unset or empty")
    assert not (tmp_path / "ledger.db").exists()


def test_estimate_tells_small_workloads_apart(capsys: pytest.CaptureFixture[str]) -> None:
    """Every monthly cost under half a cent printed as 0.00: the table could not compare models."""
    code, out, err = run_main(capsys, "estimate", "-n", "10", "--output-tokens", "50")
    assert code == 0, err
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if "│ workload" in line]
    monthly = [row[2] for row in rows]
    assert len(monthly) >= 3 and "0.00" not in monthly, out
    assert len(set(monthly)) == len(monthly), out  # distinct prices give distinct figures
    big = run_main(capsys, "estimate", "-n", "100000", "--output-tokens", "500")[1]
    big_monthly = [line.split("│")[3].strip() for line in big.splitlines() if "│ workload" in line]
    assert big_monthly and all(re.fullmatch(r"\d[\d,]*\.\d\d", v) for v in big_monthly), big  # cents from a cent up
