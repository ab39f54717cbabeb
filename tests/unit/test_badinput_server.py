"""Bad input to the server side (request bodies, the admin API, the ledger path, and the flags of
``serve``, ``mock-upstream``, ``replay-upstream`` and ``keys create``): a 4xx in OpenAI format over
HTTP, one line and exit code 2 on the CLI, and nothing created or started on the way."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.cli_run import assert_one_line, run_main
from thrifty.errors import ConfigError, InvalidRequestError
from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.server.inprocess import httpx
from thrifty.types import ChatRequest

ADMIN = "admin-secret-1"
HI = [{"role": "user", "content": "hi"}]


async def _pong(body: dict[str, Any]) -> dict[str, Any]:
    return chat_response(body["model"], "pong", {"prompt_tokens": 5, "completion_tokens": 10})


def make_gateway(tmp_path: Path, **auth: Any) -> Gateway:
    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-upstream-secret-xyz"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 1, "output": 2}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "auth": {"admin_key": ADMIN, **auth},
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(_pong)})


def client(gw: Gateway) -> Any:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t")


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN}"}




# -- 1. request bodies: object-typed parameters ---------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("value", ["x", [[1, 2]], 5, True])
async def test_stream_options_not_an_object_is_a_400(tmp_path: Path, stream: bool, value: Any) -> None:
    gw = make_gateway(tmp_path)
    body = {"model": "cheap", "stream": stream, "stream_options": value, "messages": HI}
    async with client(gw) as c:
        r = await c.post("/v1/chat/completions", json=body)
    await gw.aclose()
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "stream_options"
    assert "'stream_options' must be an object" in err["message"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("metadata", "task-x", "'metadata' must be an object, got string"),
        ("response_format", "json", "'response_format' must be an object"),
        ("logit_bias", [1, 2], "'logit_bias' must be an object, got array"),
        ("tools", [1], "'tools' must be an array of objects"),
        ("stop", ["a", 1], "'stop' must be a string or an array of strings"),
    ],
)
def test_object_and_array_params_are_checked(field: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ChatRequest.from_body({"model": "m", "messages": HI, field: value})
    assert info.value.param == field and message in info.value.message


def test_to_body_tolerates_a_bad_stream_options_built_in_code() -> None:
    # A ChatRequest built directly (not from a body) must not fail mid-request on to_body.
    req = ChatRequest(model="m", messages=HI, params={"stream_options": "x"}, stream=True)
    assert req.to_body("up")["stream_options"] == {"include_usage": True}


# -- 2. the admin API and keys create --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param", "message"),
    [
        ('{"name": "z", "budget_usd": 1e999}', "budget_usd", "budget_usd must be a finite number"),
        ('{"name": "z", "budget_usd": -1e999}', "budget_usd", "budget_usd must be a finite number"),
        ('{"name": "z", "budget_usd": true}', "budget_usd", "budget_usd must be a number"),
        ('{"name": "z", "rpm": 1e999}', "rpm", "rpm must be a whole number"),
        ('{"name": "z", "rpm": 1.5}', "rpm", "rpm must be a whole number"),
        ('{"name": "z", "tpm": 100000000000000000000000}', "tpm", "tpm must be between 1 and"),
        ('{"name": "z", "routes": 5}', "routes", "routes must be an array"),
        ('{"name": 5}', "name", "name must be a string"),
        ('{"name": "z", "period": ["day"]}', "period", "period must be a string"),
    ],
)
async def test_admin_create_refuses_bad_limits_and_creates_nothing(
    tmp_path: Path, raw: str, param: str, message: str
) -> None:
    gw = make_gateway(tmp_path)
    async with client(gw) as c:
        r = await c.post("/admin/keys", content=raw, headers={**admin(), "content-type": "application/json"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param and message in err["message"]
        listed = await c.get("/admin/keys", headers=admin())
        assert listed.status_code == 200 and listed.json()["data"] == []
    await gw.aclose()


async def test_admin_unexpected_error_is_openai_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway(tmp_path)
    assert gw.ops.keys is not None

    def broken(**_: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(gw.ops.keys, "list", broken)
    async with client(gw) as c:
        r = await c.get("/admin/keys", headers=admin())
    await gw.aclose()
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == "server_error" and "Internal error (request id req_" in err["message"]
    assert "boom" not in r.text and err["message"].endswith(f"{r.headers['x-thrifty-request-id']}).")


async def test_a_stored_infinite_budget_no_longer_breaks_listings(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path)
    assert gw.ops.keys is not None
    key, _ = gw.ops.keys.create("old", budget_usd=1.0)
    # As a key created before budgets had to be finite was stored.
    gw.ops.keys.store.execute("UPDATE virtual_keys SET budget_usd = ? WHERE key_id = ?", (float("inf"), key.key_id))
    async with client(gw) as c:
        r = await c.get("/admin/keys", headers=admin())
        one = await c.get(f"/admin/keys/{key.key_id}", headers=admin())
    await gw.aclose()
    assert r.status_code == 200 and r.json()["data"][0]["budget_usd"] is None
    assert one.status_code == 200 and one.json()["budget_usd"] is None


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--budget-usd", "inf"], "--budget-usd: expected a finite number > 0, got inf"),
        (["--budget-usd", "nan"], "--budget-usd: expected a finite number > 0, got nan"),
        (["--budget-usd", "0"], "--budget-usd: expected a finite number > 0"),
        (["--rpm", "0"], "--rpm: expected a whole number between 1 and"),
        (["--tpm", "10000000000000000000"], "--tpm: expected a whole number between 1 and"),
        (["--period", "week"], "--period: expected day or month, got 'week'"),
    ],
)
def test_keys_create_refuses_bad_flags_before_opening_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], needle: str
) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://x'}}\nmodels: {m: {provider: p}}\nledger: {path: l.db}\n")
    code, out, err = run_main(capsys, "keys", "create", "--name", "k", "--config", str(cfg), *flags)
    assert_one_line(code, err, needle)
    assert out == "" and not (tmp_path / "l.db").exists()


# -- 3. a ledger path that cannot be opened ------------------------------------------------------


def _config(tmp_path: Path, ledger_path: str) -> Path:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:1/v1'}}\n"
                   "models: {m: {provider: p, price: {input: 1, output: 1}}}\n"
                   f"ledger: {{path: '{ledger_path}'}}\n")
    return cfg


@pytest.mark.parametrize(
    ("ledger_path", "needle"),
    [
        ("/proc/x/ledger.db", "cannot open /proc/x/ledger.db: cannot create folder /proc/x"),
        ("/proc/version/ledger.db", "cannot create folder /proc/version"),
        (".", "is a folder, expected a database file"),
        ("notadb.json", "file is not a database"),
    ],
)
def test_unusable_ledger_path_fails_at_startup(tmp_path: Path, ledger_path: str, needle: str) -> None:
    (tmp_path / "notadb.json").write_text("[1, 2, 3] and more text than a sqlite header\n")
    with pytest.raises(ConfigError) as info:
        Gateway.from_config(_config(tmp_path, ledger_path))
    assert info.value.message.startswith("ledger.path: ") and needle in info.value.message


def test_serve_with_unusable_ledger_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     free_port: int) -> None:
    code, _, err = run_main(capsys, "serve", "--config", str(_config(tmp_path, "/proc/x/ledger.db")),
                            "--port", str(free_port))
    assert_one_line(code, err, "ledger.path: cannot open", "cannot create folder /proc/x")


@pytest.mark.parametrize("ledger_path", ["ledger.db", "data/sub/ledger.db"])
def test_a_good_ledger_path_is_created_at_startup(tmp_path: Path, ledger_path: str) -> None:
    # A missing folder is created, as for the cache's SQLite file.
    gw = Gateway.from_config(_config(tmp_path, ledger_path))
    try:
        tables = {r[0] for r in sqlite3.connect(tmp_path / ledger_path).execute("SELECT name FROM sqlite_master")}
        assert "requests" in tables
    finally:
        gw.close()


# -- 4./5. serve, mock-upstream and replay-upstream flags ----------------------------------------


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _serve_args(tmp_path: Path) -> list[str]:
    return ["serve", "--config", str(_config(tmp_path, "ledger.db"))]


@pytest.mark.parametrize("command", ["serve", "mock-upstream", "replay-upstream"])
def test_bad_log_level_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    args = {"serve": _serve_args(tmp_path), "mock-upstream": ["mock-upstream"],
            "replay-upstream": ["replay-upstream", "--data", "x"]}[command]
    code, _, err = run_main(capsys, *args, "--log-level", "bogus")
    assert_one_line(code, err, "--log-level: expected one of critical, error, warning, info, debug, trace",
                    "'bogus'")


@pytest.mark.parametrize("command", ["serve", "mock-upstream", "replay-upstream"])
@pytest.mark.parametrize("port", ["99999", "-1"])
def test_port_out_of_range_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       command: str, port: str) -> None:
    args = {"serve": _serve_args(tmp_path), "mock-upstream": ["mock-upstream"],
            "replay-upstream": ["replay-upstream", "--data", "x"]}[command]
    code, _, err = run_main(capsys, *args, "--port", port)
    assert_one_line(code, err, f"--port: expected a whole number between 0 and 65535, got {port}")


@pytest.mark.parametrize("command", ["serve", "mock-upstream", "replay-upstream"])
def test_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], busy_port: int,
                                 command: str) -> None:
    args = {"serve": _serve_args(tmp_path), "mock-upstream": ["mock-upstream"],
            "replay-upstream": ["replay-upstream", "--data", "x"]}[command]
    code, _, err = run_main(capsys, *args, "--port", str(busy_port))
    assert_one_line(code, err, f"cannot listen on 127.0.0.1:{busy_port}: address already in use")
    if command == "serve":  # refused before the gateway opened anything
        assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--error-rate", "5"], "--error-rate: expected a finite number >= 0 and <= 1, got 5.0"),
        (["--error-rate", "nan"], "--error-rate: expected a finite number >= 0 and <= 1, got nan"),
        (["--latency-ms", "-5"], "--latency-ms: expected a finite number >= 0, got -5.0"),
        (["--latency-ms", "inf"], "--latency-ms: expected a finite number >= 0, got inf"),
        (["--jitter-ms", "-1"], "--jitter-ms: expected a finite number >= 0"),
        (["--chunk-delay-ms", "-1"], "--chunk-delay-ms: expected a finite number >= 0"),
        (["--fail-status", "200"], "--fail-status: expected a whole number between 400 and 599, got 200"),
    ],
)
def test_mock_upstream_fault_flags_are_one_line(capsys: pytest.CaptureFixture[str], flags: list[str],
                                                needle: str) -> None:
    code, _, err = run_main(capsys, "mock-upstream", *flags)
    assert_one_line(code, err, needle)


def test_mock_upstream_bad_config_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n b: 2\n")
    code, _, err = run_main(capsys, "mock-upstream", "--config", str(bad))
    assert_one_line(code, err, f"mock config {bad}: invalid YAML at line 3, column 1")
    missing = tmp_path / "nonexist.yaml"
    code, _, err = run_main(capsys, "mock-upstream", "--config", str(missing))
    assert_one_line(code, err, f"mock config {missing}: cannot read it: No such file or directory")
    code, _, err = run_main(capsys, "mock-upstream", "--config", str(tmp_path))
    assert_one_line(code, err, "cannot read it: Is a directory")


def test_mock_faults_from_code_are_a_config_error() -> None:
    from thrifty.mock.behaviour import MockConfig

    with pytest.raises(ConfigError, match="mock faults: error_rate: Input should be less than or equal to 1"):
        MockConfig().with_default_faults(error_rate=5)
