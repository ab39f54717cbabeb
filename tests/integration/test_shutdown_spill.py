"""A gateway stopped while its PostgreSQL ledger is down spills the rows it still holds.

Found by the fleet review: `thrifty serve` flushed the ledger on shutdown by waiting through the
writer's retries (about 30 s); uvicorn then ended the process with the SIGTERM it had caught, so
no exit hook ran and the queued rows were neither written nor spilled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import openai
import psycopg
import pytest
import yaml

from fixtures.processes import thrifty_cmd, wait_healthy
from fixtures.services import free_port

pytestmark = pytest.mark.postgres


def test_rows_queued_at_shutdown_during_a_database_outage_are_spilled_then_imported(
        tmp_path: Path, pg_dsn: str, database_switch: Callable[[bool], None]) -> None:
    mock_port, port = free_port(), free_port()
    cfg = {
        "providers": {"mock": {"base_url": f"http://127.0.0.1:{mock_port}/v1", "api_key": "sk-shutdown-secret"}},
        "models": {"m": {"provider": "mock", "price": {"input": 1.0, "output": 2.0}}},
        "ledger": {"dsn": pg_dsn},
    }
    config = tmp_path / "thrifty.yaml"
    config.write_text(yaml.safe_dump(cfg))
    mock = subprocess.Popen(thrifty_cmd("mock-upstream", "--port", str(mock_port), "--log-level", "warning"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        gateway = subprocess.Popen(thrifty_cmd("serve", "--config", str(config), "--port", str(port)),
                                   stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_healthy(f"http://127.0.0.1:{mock_port}", mock)
        wait_healthy(f"http://127.0.0.1:{port}", gateway)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        database_switch(False)
        served = [client.chat.completions.with_raw_response.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": f"question {n}"}],
        ).headers["x-thrifty-request-id"] for n in range(8)]
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
        # One more try per batch, not the half minute of retries a running gateway allows.
        assert time.monotonic() - started < 20
    finally:
        for proc in (gateway, mock):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    spill = tmp_path / "thrifty-ledger.failed.jsonl"
    assert spill.is_file(), log.read_text()[-2000:]
    spilled = spill.read_text()
    assert all(rid in spilled for rid in served)
    assert "sk-shutdown-secret" not in spilled
    database_switch(True)
    out = subprocess.run(thrifty_cmd("ledger", "import-spill", "--config", str(config)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(pg_dsn) as conn:
        found = {r[0] for r in conn.execute("SELECT request_id FROM requests")}
    assert set(served) <= found
    assert all(json.loads(line)["logger"] for line in log.read_text().splitlines() if line.startswith("{"))
