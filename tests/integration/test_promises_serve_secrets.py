"""Promise: keys never reach the logs of `thrifty serve` (a real process, debug level, prompts
logged), nor its ledger, nor what clients get back, on the error paths too.

The provider key is not key-shaped (only the gateway's configured-key redaction can catch it)
and the upstream echoes it in its 401 error; the client's key is not key-shaped either, so only
never writing it keeps it out.
"""

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

PROVIDER_KEY = "PlainProviderKeyForPromises42"
CLIENT_KEY = "plain-client-token-for-promises-77"
MOCK = {"models": {"leaky": {"faults": {"status": 401, "error_message": f"Incorrect API key: {PROVIDER_KEY}"}}}}


def test_serve_keeps_keys_out_of_logs_ledger_and_responses(tmp_path: Path) -> None:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as mock:
        cfg = tmp_path / "thrifty.yaml"
        cfg.write_text(yaml.safe_dump({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": PROVIDER_KEY, "max_retries": 0}},
            "models": {m: {"provider": "mock", "price": {"input": 1.0, "output": 1.0}} for m in ("m", "leaky")},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "cache": {"path": str(tmp_path / "cache.db")},
            "server": {"log_prompts": True},
        }))
        port = free_port()
        proc = subprocess.Popen(thrifty_cmd("serve", "--config", str(cfg), "--port", str(port), "--log-level", "debug"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        replies: list[httpx.Response] = []
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc)
            headers = {"authorization": f"Bearer {CLIENT_KEY}"}
            # (A key the user pastes into a prompt is the user's content: test_serve_redaction.py.)
            for model, stream, text in [("m", False, "a question"), ("m", True, "another question"),
                                        ("leaky", False, "hi"), ("leaky", True, "hi"), ("nope", False, "hi")]:
                replies.append(httpx.post(url + "/v1/chat/completions", headers=headers, timeout=30, json={
                    "model": model, "stream": stream, "temperature": 0,
                    "messages": [{"role": "user", "content": text}]}))
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert [r.status_code for r in replies] == [200, 200, 502, 502, 404]
    # The upstream's error reached the client, with the key masked.
    assert "[REDACTED]" in replies[2].json()["error"]["message"]
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert sum(e["logger"] == "thrifty.request" for e in entries) == 5  # the lines that could leak exist
    assert any("[REDACTED]" in json.dumps(e) for e in entries)  # and the echoed key was in one of them
    for text in [err, *(r.text + json.dumps(dict(r.headers)) for r in replies)]:
        assert PROVIDER_KEY not in text and CLIENT_KEY not in text
    for path in tmp_path.iterdir():
        if path.suffix != ".yaml":
            data = path.read_bytes()
            assert PROVIDER_KEY.encode() not in data and CLIENT_KEY.encode() not in data, path.name
