"""`thrifty serve` stopped by SIGTERM while a stream runs past the drain bound: uvicorn cancels
the request, its ledger row is still written, with what the call cost, and the log says so in
one line (it was an ERROR with a CancelledError traceback).

Found by the fleet review: with a key whose budget lives in Redis, the stream's finalizers (the
budget settle, awaiting Redis) ran inside Starlette's cancelled anyio scope, which cancels every
await again; the settle was cancelled, the row never written, though the provider was paid and
Redis had counted the spend (reseeded later from the ledger, the key's spend went down).
"""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from pathlib import Path

import httpx
import yaml

from fixtures.processes import serve_with_drain
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread

ADMIN = "admin-shutdown-0000"


def test_a_stream_cancelled_at_the_shutdown_bound_is_recorded_with_a_redis_budget(
        tmp_path: Path, redis_url: str) -> None:
    mock = MockConfig.from_dict({"models": {"chatty": {"faults": {"chunk_delay_ms": 100},
                                                       "output_tokens": [200, 200]}}})  # ~20 s of chunks
    with run_in_thread(create_mock(mock)) as upstream:
        config = tmp_path / "thrifty.yaml"
        config.write_text(yaml.safe_dump({
            "providers": {"m": {"base_url": upstream.url + "/v1", "api_key": "sk-up-0000", "max_retries": 0}},
            "models": {"chatty": {"provider": "m", "price": {"input": 1, "output": 2}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "redis_url": redis_url,
            "auth": {"enabled": True, "admin_key": ADMIN, "backend": "redis",
                     "redis_prefix": f"shutdown-{uuid.uuid4().hex[:8]}"},
        }))
        with serve_with_drain(config) as (base, proc):
            made = httpx.post(f"{base}/admin/keys", headers={"authorization": f"Bearer {ADMIN}"},
                              json={"name": "app", "budget_usd": 5})
            assert made.status_code == 201, made.text
            body = {"model": "chatty", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            headers = {"authorization": f"Bearer {made.json()['key']}"}
            received = 0
            try:
                with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers,
                                  timeout=30) as reply:
                    for _ in reply.iter_lines():
                        received += 1
                        if received == 3:
                            proc.send_signal(signal.SIGTERM)
            except httpx.HTTPError:
                pass  # the stream is cut at the bound: what this test is about is the ledger
            started = time.monotonic()
            proc.wait(20)
            assert time.monotonic() - started < 15
        log = proc.stderr.read() if proc.stderr else ""
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT requested_model, status, error_type, cost_usd FROM requests").fetchall()
    assert len(rows) == 1, log[-3000:]
    model, status, error_type, cost = rows[0]
    assert (model, status, error_type) == ("chatty", "error", "ClientDisconnected")
    assert cost is not None and cost > 0
    # uvicorn's cancellation of it is one warning line, not an ERROR with a traceback.
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert "cancelled at the shutdown bound" in log
