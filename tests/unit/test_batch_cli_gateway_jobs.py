"""The batch CLI leaves jobs of deferrable gateway requests to the gateway that owns them."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.batching.collector import GATEWAY_TASK
from thrifty.batching.items import Item
from thrifty.batching.jobs import JobStore
from thrifty.cli.main import main
from thrifty.ledger.store import SQLiteStore


def test_results_and_cancel_refuse_gateway_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\nmodels: {m: {provider: p}}\n"
                   "ledger: {path: ledger.db}\n")
    jobs = JobStore(SQLiteStore(str(tmp_path / "ledger.db")))
    jobs.create("job_gw1", "m", "p", GATEWAY_TASK, None, [Item("r1", '{"model": "m", "messages": []}')])
    for args in (["batch", "results", "job_gw1"], ["batch", "cancel", "job_gw1"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--config", str(cfg)])
        assert exit_info.value.code == 2
        assert "gateway" in capsys.readouterr().err
