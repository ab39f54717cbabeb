"""An optional extra that a config needs but is not installed is a one-line ``ConfigError`` at
start-up (`serve`, `config check`, `Gateway.from_config`), never a failure found later."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from thrifty.errors import ConfigError
from thrifty.gateway import Gateway


def test_a_postgres_ledger_without_its_driver_is_refused_at_start_up(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the gateway started, and the first ledger write failed, was retried for 30 s and
    spilled, for every request."""
    real = importlib.util.find_spec

    def without_psycopg(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "psycopg" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_psycopg)
    with pytest.raises(ConfigError, match=r"ledger\.dsn: .*pip install 'thrifty\[postgres\]'"):
        Gateway.from_config({
            "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
            "ledger": {"dsn": "postgresql://thrifty@127.0.0.1:9/ledger"},
            "base_dir": str(tmp_path),
        })
