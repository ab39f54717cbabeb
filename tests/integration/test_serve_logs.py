"""`thrifty serve` as a process: every line on its stderr is a JSON object (docs/cli.md), its own
start-up line and uvicorn's start-up/shutdown lines included, with no access log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import yaml

from fixtures.processes import thrifty_cmd, wait_healthy
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
        port = free_port()
        proc = subprocess.Popen(thrifty_cmd("serve", "--config", str(cfg), "--port", str(port)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc)
            r = httpx.post(url + "/v1/chat/completions", timeout=30,
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line parses: nothing plain-text
    loggers = [e["logger"] for e in entries]
    assert entries[0]["logger"] == "thrifty.server" and entries[0]["msg"].startswith("thrifty gateway on http://")
    assert "uvicorn.error" in loggers and loggers.count("thrifty.request") == 1
    assert any("Shutting down" in e["msg"] for e in entries)
    assert "uvicorn.access" not in loggers and "sk-upstream-never-logged" not in err
