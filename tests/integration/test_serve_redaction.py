"""`thrifty serve`'s JSON log lines mask the configured provider key even when it has no key shape
(the formatter uses the gateway's Redactor, not only the key-shape patterns)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fixtures.processes import serve_one_request
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
        err = serve_one_request(cfg, free_port(), f"my key is {KEY}, ok?")
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    prompts = [e["prompt"] for e in entries if e["logger"] == "thrifty.request"]
    assert prompts == ["my key is [REDACTED], ok?"]
    assert KEY not in err
