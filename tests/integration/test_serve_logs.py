"""`thrifty serve` as a process: every line on its stderr is a JSON object (docs/cli.md), its own
start-up line and uvicorn's start-up/shutdown lines included, with no access log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fixtures.processes import serve_one_request
from fixtures.services import free_port
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread


def test_serve_writes_only_json_lines(tmp_path: Path) -> None:
    with run_in_thread(create_mock(MockConfig())) as mock:
        cfg = tmp_path / "thrifty.yaml"
        cfg.write_text(yaml.safe_dump({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-never-logged"}},
            "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 1.0}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
        }))
        err = serve_one_request(cfg, free_port(), "hi")
    lines = [line for line in err.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line parses: nothing plain-text
    loggers = [e["logger"] for e in entries]
    assert entries[0]["logger"] == "thrifty.server" and entries[0]["msg"].startswith("thrifty gateway on http://")
    assert "uvicorn.error" in loggers and loggers.count("thrifty.request") == 1
    assert any("Shutting down" in e["msg"] for e in entries)
    assert "uvicorn.access" not in loggers and "sk-upstream-never-logged" not in err


def test_serve_logs_an_unset_variable_of_its_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ${VAR} ledger DSN left unset means the local SQLite ledger (documented: empty = unset),
    which other instances do not share: serve says so in a JSON warning line, as `config check`
    does, and still serves."""
    monkeypatch.delenv("THRIFTY_TEST_UNSET_DSN", raising=False)
    with run_in_thread(create_mock(MockConfig())) as mock:
        cfg = tmp_path / "thrifty.yaml"
        cfg.write_text(yaml.safe_dump({
            "providers": {"mock": {"base_url": mock.url + "/v1"}},
            "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 1.0}}},
            "ledger": {"dsn": "${THRIFTY_TEST_UNSET_DSN}", "path": str(tmp_path / "ledger.db")},
        }))
        err = serve_one_request(cfg, free_port(), "hi")
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    warnings = [e for e in entries if e.get("level") == "warning" and "THRIFTY_TEST_UNSET_DSN" in e["msg"]]
    assert len(warnings) == 1, entries
    assert (tmp_path / "ledger.db").exists()  # it served, on the local ledger
