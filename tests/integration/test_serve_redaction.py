"""`thrifty serve`'s JSON log lines mask the configured provider key even when it has no key shape
(the formatter uses the gateway's Redactor, not only the key-shape patterns)."""

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

KEY = "PlainProviderKey42"


def test_serve_logs_mask_a_plain_provider_key(tmp_path: Path) -> None:
    with run_in_thread(create_mock(MockConfig())) as mock:
        cfg = tmp_path / "thrifty.yaml"
        cfg.write_text(yaml.safe_dump({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": KEY}},
            "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 1.0}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "server": {"log_prompts": True},
        }))
        port = free_port()
        proc = subprocess.Popen(thrifty_cmd("serve", "--config", str(cfg), "--port", str(port)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc)
            r = httpx.post(url + "/v1/chat/completions", timeout=30,
                           json={"model": "m", "messages": [{"role": "user", "content": f"my key is {KEY}, ok?"}]})
            assert r.status_code == 200
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    prompts = [e["prompt"] for e in entries if e["logger"] == "thrifty.request"]
    assert prompts == ["my key is [REDACTED], ok?"]
    assert KEY not in err
