"""Operations when the key database is down, and the admin API's and CLI's shared checks: stale
key records within auth.key_cache_stale_s, 503s naming the service (never its address), one
route-pattern check, the dashboard data behind an admin key that is set, `config check` wording,
and the gateway's provider keys masked in JSON log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.cli_run import assert_one_line, run_main
from thrifty.errors import ServiceUnavailableError, StorageError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.logs import JsonFormatter, setup_logging
from thrifty.ops.keys import KeyStore
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.server.inprocess import httpx

ADMIN = "admin-secret-resilience"
HI = [{"role": "user", "content": "hi"}]
# What psycopg says when the server is down: an address no client may see.
DOWN = "cannot connect to the PostgreSQL ledger: connection to server at 127.0.0.1, port 18702 failed"


class SwitchableStore(SQLiteStore):
    """A real SQLite ledger whose reads fail, as a PostgreSQL server that went away, while ``down``."""

    down = False

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if self.down:
            raise StorageError(DOWN)
        return super().query(sql, params)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("thrifty.ops.keys.time.monotonic", c)
    return c


async def test_known_key_is_served_from_its_last_record_while_the_database_is_down(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    store = SwitchableStore(str(tmp_path / "l.db"))
    keys = KeyStore(store, cache_ttl_s=5, stale_s=60)
    key, secret = keys.create("app")
    assert (await keys.afind(secret)) == key
    store.down = True
    clock.now += 30  # past the TTL, within the stale window
    with caplog.at_level(logging.WARNING, logger="thrifty.ops"):
        assert (await keys.afind(secret)) == key
        assert (await keys.aget(key.key_id)) == key
    assert any("serving key" in r.getMessage() and key.key_id in r.getMessage() for r in caplog.records)
    # A key never seen cannot be checked: a 503 naming the service, not the server's address.
    with pytest.raises(ServiceUnavailableError) as info:
        await keys.afind("thr-never-seen-key")
    assert info.value.status == 503 and "key database" in info.value.message
    assert "127.0.0.1" not in info.value.message and "18702" not in info.value.message
    clock.now += 31  # the record is now more than stale_s old
    with pytest.raises(ServiceUnavailableError):
        await keys.afind(secret)


async def test_a_key_revoked_during_the_outage_is_refused_once_the_database_answers(
        tmp_path: Path, clock: Clock) -> None:
    store = SwitchableStore(str(tmp_path / "l.db"))
    keys = KeyStore(store, cache_ttl_s=5, stale_s=300)
    key, secret = keys.create("app")
    await keys.afind(secret)
    store.down = True
    clock.now += 10
    assert (await keys.afind(secret)) == key  # stale, still active
    # Revoked elsewhere (another instance, the CLI) while this one could not read the database.
    store.down = False
    KeyStore(SQLiteStore(str(tmp_path / "l.db"))).revoke(key.key_id)
    clock.now += 10
    found = await keys.afind(secret)
    assert found is not None and not found.active


async def test_stale_window_zero_refuses_at_once(tmp_path: Path, clock: Clock) -> None:
    store = SwitchableStore(str(tmp_path / "l.db"))
    keys = KeyStore(store, cache_ttl_s=5, stale_s=0)
    _, secret = keys.create("app")
    await keys.afind(secret)
    store.down = True
    clock.now += 6
    with pytest.raises(ServiceUnavailableError):
        await keys.afind(secret)


async def _pong(body: dict[str, Any]) -> dict[str, Any]:
    return chat_response(body["model"], "pong", {"prompt_tokens": 5, "completion_tokens": 10})


def _gateway(tmp_path: Path, **extra: Any) -> Gateway:
    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-upstream-secret-xyz"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 1, "output": 2}, "aliases": ["fast"]}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "base_dir": str(tmp_path),
        **extra,
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(_pong)})


def _client(gw: Gateway) -> Any:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t")


async def test_http_errors_name_the_service_not_its_address(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, auth={"enabled": True, "admin_key": ADMIN, "key_cache_ttl_s": 0})
    assert gw.ops.keys is not None
    _, secret = gw.ops.keys.create("app")
    down = SwitchableStore(str(tmp_path / "ledger.db"))
    async with _client(gw) as c:
        before = await c.post("/v1/chat/completions", json={"model": "cheap", "messages": HI},
                              headers={"authorization": f"Bearer {secret}"})
        down.down = True
        gw.ops.keys.store = down  # the key database goes away
        known = await c.post("/v1/chat/completions", json={"model": "cheap", "messages": HI},
                             headers={"authorization": f"Bearer {secret}"})
        unknown = await c.post("/v1/chat/completions", json={"model": "cheap", "messages": HI},
                               headers={"authorization": "Bearer thr-unknownkey123"})
        listing = await c.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})
        health = await c.get("/health")
    await gw.aclose()
    assert (before.status_code, known.status_code, health.status_code) == (200, 200, 200)
    for r in (unknown, listing):
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["type"] == "storage_error" and err["code"] == "service_unavailable"
        assert "database" in err["message"] and "127.0.0.1" not in r.text and "18702" not in r.text


async def test_admin_api_refuses_route_patterns_that_match_nothing(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, auth={"admin_key": ADMIN})
    admin = {"authorization": f"Bearer {ADMIN}"}
    async with _client(gw) as c:
        bad = await c.post("/admin/keys", json={"name": "x", "routes": ["cheap", "chaep"]}, headers=admin)
        good = await c.post("/admin/keys", json={"name": "y", "routes": "fast, ch*"}, headers=admin)
    await gw.aclose()
    assert bad.status_code == 400, bad.text
    err = bad.json()["error"]
    assert err["param"] == "routes" and "'chaep' matches no model, alias or route" in err["message"]
    assert "cheap" not in err["message"].split("matches")[0]  # only the bad pattern is named
    assert good.status_code == 201 and good.json()["routes"] == ["fast", "ch*"]


def test_cli_refuses_the_same_patterns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
                                   "models": {"cheap": {"provider": "p"}}, "ledger": {"path": "l.db"}}))
    code, _, err = run_main(capsys, "keys", "create", "--config", str(cfg), "--name", "x", "--routes", "chaep")
    assert_one_line(code, err, "--routes: 'chaep' matches no model, alias or route of")
    assert not (tmp_path / "l.db").exists()


@pytest.mark.parametrize(("auth", "status_without", "status_with"), [
    ({"admin_key": ADMIN}, 401, 200),  # auth off, admin key set: the key is required
    ({}, 200, 200),  # neither: open, as the rest of the gateway
    ({"enabled": True, "admin_key": ADMIN}, 401, 200),
])
async def test_dashboard_data_need_the_admin_key_whenever_it_is_set(
        tmp_path: Path, auth: dict[str, Any], status_without: int, status_with: int) -> None:
    gw = _gateway(tmp_path, auth=auth)
    async with _client(gw) as c:
        without = await c.get("/dashboard/data")
        with_key = await c.get("/dashboard/data", headers={"authorization": f"Bearer {ADMIN}"})
    await gw.aclose()
    assert (without.status_code, with_key.status_code) == (status_without, status_with)


async def test_ready_checks_the_ledger(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    async with _client(gw) as c:
        r = await c.get("/ready")
    await gw.aclose()
    assert r.status_code == 200 and r.json() == {"status": "ready", "checks": {"ledger": "ok"}}


def test_config_check_says_how_each_unset_variable_is_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("T_SALT_UNSET", "T_PROMPT_UNSET", "T_KEY_UNSET"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:1/v1', api_key: '${T_KEY_UNSET}',\n"
                   "  headers: {x-team: '${T_PROMPT_UNSET}'}}}\n"
                   "models: {m: {provider: p, price: {input: 1, output: 1}}}\n"
                   "ledger: {path: l.db}\nauth: {key_salt: '${T_SALT_UNSET}'}\n")
    code, _, err = run_main(capsys, "config", "check", str(cfg))
    assert code == 0, err
    assert "warning: environment variable T_SALT_UNSET is not set (treated as unset)" in err
    assert "warning: environment variable T_KEY_UNSET is not set (treated as unset)" in err
    assert "warning: environment variable T_PROMPT_UNSET is not set (used as an empty string)" in err


@pytest.mark.parametrize("command", [["keys", "create", "--name", "x"], ["keys", "list"], ["report"]])
def test_ledger_commands_refuse_an_unset_dsn_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        command: list[str]) -> None:
    monkeypatch.delenv("T_DSN_UNSET", raising=False)
    monkeypatch.delenv("T_OTHER_UNSET", raising=False)
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:1/v1', api_key: '${T_OTHER_UNSET}'}}\n"
                   "models: {m: {provider: p}}\nledger: {dsn: '${T_DSN_UNSET}'}\n")
    (tmp_path / "thrifty-ledger.db").touch()  # a stray local ledger must not be used either
    code, _, err = run_main(capsys, *command, "--config", str(cfg))
    lines = err.strip().splitlines()
    assert lines[:2] == ["warning: environment variable T_DSN_UNSET is not set (treated as unset)",
                         "warning: environment variable T_OTHER_UNSET is not set (treated as unset)"]
    assert_one_line(code, "\n".join(lines[2:]) + "\n", "ledger.dsn", "T_DSN_UNSET", "refusing")
    assert (tmp_path / "thrifty-ledger.db").stat().st_size == 0


def test_ledger_commands_warn_but_work_without_a_dsn_reference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_OTHER_UNSET", raising=False)
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:1/v1', api_key: '${T_OTHER_UNSET}'}}\n"
                   "models: {m: {provider: p}}\nledger: {path: l.db}\n")
    code, out, err = run_main(capsys, "keys", "create", "--config", str(cfg), "--name", "x")
    assert code == 0 and out.startswith("thr-")
    assert err.splitlines()[0] == "warning: environment variable T_OTHER_UNSET is not set (treated as unset)"


@pytest.fixture
def json_logs() -> Iterator[None]:
    """``setup_logging``'s JSON handlers (on the stderr of the moment); the CLI's logging after."""
    from thrifty.cli.main import _cli_logging

    setup_logging("info")
    try:
        yield
    finally:
        _cli_logging()
        logging.getLogger("uvicorn").handlers[:] = []
        logging.getLogger("uvicorn").propagate = True
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)]


async def test_json_logs_mask_a_provider_key_that_is_not_key_shaped(
        tmp_path: Path, json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    gw = _gateway(tmp_path, providers={"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "PlainProviderKey42"}},
                  server={"log_prompts": True})
    async with _client(gw) as c:
        r = await c.post("/v1/chat/completions",
                         json={"model": "cheap", "messages": [{"role": "user", "content": "is PlainProviderKey42 ok"}]})
    logging.getLogger("thrifty.providers").warning("upstream echoed PlainProviderKey42 back")
    # Another library's warning (psycopg, redis, asyncio) is a JSON line too, and masked.
    logging.getLogger("psycopg").warning("error ignored terminating <Pipeline> for PlainProviderKey42")
    await gw.aclose()
    assert r.status_code == 200
    err = capsys.readouterr().err
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    request = [e for e in entries if e["logger"] == "thrifty.request"]
    assert request and request[0]["prompt"] == "is [REDACTED] ok"
    assert any(e["msg"] == "upstream echoed [REDACTED] back" for e in entries)
    assert any(e["logger"] == "psycopg" and e["msg"].endswith("for [REDACTED]") for e in entries)
    assert "PlainProviderKey42" not in err
