"""Server hardening found in a security review, over real HTTP (uvicorn on 127.0.0.1, the openai
SDK, the mock upstream): non-Bearer credentials get their own cache tenant (F6); no key, no
body read, and a body has a deadline (F7); a client hanging up mid-body is not an internal
error (F8); admin key names are bounded (F10)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from pydantic import ValidationError
from tests.fixtures.processes import thrifty_cmd, wait_healthy
from tests.fixtures.services import free_port

from thrifty.config import ServerConfig
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

ADMIN = "admin-hardening-test-key-0000"
PRICE = {"input": 1.0, "output": 1.0}
MSG: Any = [{"role": "user", "content": "my private account summary please"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    behaviour = MockConfig.from_dict({"models": {"slow": {"faults": {"latency_ms": 1500}}}})
    with run_in_thread(create_mock(behaviour)) as server:
        yield server


def config(tmp: Path, mock: RunningServer, *, auth: bool, body_timeout_s: float = 30.0) -> dict[str, Any]:
    return {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-up-hardening-123456"}},
        "models": {"cheap": {"provider": "mock", "price": PRICE}, "slow": {"provider": "mock", "price": PRICE},
                   "embed": {"provider": "mock", "price": PRICE}},
        "default_model": "cheap",
        "ledger": {"path": str(tmp / "ledger.db")},
        "cache": {"path": str(tmp / "cache.db")},
        "auth": {"enabled": auth, "admin_key": ADMIN},
        "server": {"body_timeout_s": body_timeout_s},
    }


@pytest.fixture(scope="module")
def open_gw(mock: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer]]:
    gw = Gateway.from_config(config(tmp_path_factory.mktemp("open"), mock, auth=False, body_timeout_s=1.0))
    with run_in_thread(gw.app()) as server:
        yield gw, server
    gw.close()


@pytest.fixture(scope="module")
def keyed(mock: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    gw = Gateway.from_config(config(tmp_path_factory.mktemp("keyed"), mock, auth=True, body_timeout_s=1.0))
    assert gw.ops.keys is not None
    secret = gw.ops.keys.create("hardening")[1]
    with run_in_thread(gw.app()) as server:
        yield server, secret
    gw.close()


def half_request(server: RunningServer, path: str, headers: dict[str, str], body: bytes = b"{") -> socket.socket:
    """A POST that declares a 100 kB body and sends only ``body`` of it."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{lines}content-type: application/json\r\n"
                 f"content-length: 100000\r\n\r\n".encode() + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any], bool]:
    """(status, headers, JSON body, whether the server then closed the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    return int(lines[0].split()[1]), headers, json.loads(rest), closed


# F6 ---------------------------------------------------------------------------------------------


def test_each_authorization_scheme_credential_is_its_own_tenant(open_gw: tuple[Gateway, RunningServer]) -> None:
    gw, server = open_gw

    def ask(authorization: str) -> str:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=10,
                          default_headers={"Authorization": authorization})
        raw = c.chat.completions.with_raw_response.create(model="cheap", messages=MSG, temperature=0)
        return raw.headers["x-thrifty-cache"]

    alice, bob = "Basic YWxpY2U6c2VjcmV0MQ==", "Basic Ym9iOnNlY3JldDI="
    assert ask(alice) == "miss"
    assert ask(bob) == "miss"  # was a hit: bob received alice's answer
    assert ask("Token x") == "miss"
    assert ask(alice) == "hit"  # the same credential still shares its own cache
    gw.flush()
    for name in ("cache.db", "ledger.db"):  # hashed: the credential itself is stored nowhere
        stored = b"".join(p.read_bytes() for p in Path(gw.config.ledger.path or "").parent.glob(name + "*"))
        assert b"YWxpY2U6c2VjcmV0MQ" not in stored


# F7 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions"])
def test_no_key_is_refused_before_the_body_arrives(keyed: tuple[RunningServer, str], path: str) -> None:
    server, _ = keyed
    for headers in ({}, {"authorization": "Bearer thr-not-a-real-key-000000"}):
        with half_request(server, path, headers) as sock:
            t0 = time.monotonic()
            status, _, body, closed = read_response(sock)
        assert status == 401 and body["error"]["type"] == "authentication_error"
        # Before the 1 s body deadline and the 5 s keep-alive: the key decided it, and the
        # connection is closed rather than left for the client to trickle its body into.
        assert closed and time.monotonic() - t0 < 0.9


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/admin/keys"])
def test_a_trickled_body_gets_a_408_and_the_connection_closes(keyed: tuple[RunningServer, str], path: str) -> None:
    server, secret = keyed
    key = ADMIN if path.startswith("/admin") else secret
    with half_request(server, path, {"authorization": f"Bearer {key}"}) as sock:
        t0 = time.monotonic()
        for _ in range(3):  # still sending, slower than the deadline allows
            time.sleep(0.4)
            try:
                sock.sendall(b" ")
            except OSError:
                break
        status, headers, body, closed = read_response(sock)
    assert status == 408, body
    assert body["error"]["code"] == "request_timeout" and "server.body_timeout_s" in body["error"]["message"]
    assert headers["x-thrifty-request-id"].startswith("req_") or path.startswith("/admin")
    assert closed and time.monotonic() - t0 < 5


def test_the_deadline_ends_with_the_body(keyed: tuple[RunningServer, str]) -> None:
    """An upstream slower than the body deadline is fine, streamed or not: only the upload is bounded."""
    server, secret = keyed
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=secret, max_retries=0, timeout=20)
    answer = c.chat.completions.create(model="slow", messages=MSG)
    assert answer.choices[0].message.content
    chunks = list(c.chat.completions.create(model="slow", messages=MSG, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_body_timeout_setting_is_checked() -> None:
    assert ServerConfig().body_timeout_s == 30.0 and ServerConfig().max_connections is None
    for bad in ({"body_timeout_s": 0}, {"body_timeout_s": float("inf")}, {"max_connections": 0}):
        with pytest.raises(ValidationError):
            ServerConfig(**bad)


def test_serve_applies_max_connections(mock: RunningServer, tmp_path: Path) -> None:
    cfg = config(tmp_path, mock, auth=False)
    cfg["server"]["max_connections"] = 2
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(thrifty_cmd("serve", "-c", str(path), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        with socket.create_connection(("127.0.0.1", port)) as idle:
            time.sleep(0.2)  # the idle connection is counted
            r = httpx.get(url + "/health", timeout=5, headers={"connection": "close"})
            assert r.status_code == 503
            idle.sendall(b"")
        time.sleep(0.2)
        assert httpx.get(url + "/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        assert proc.stderr is not None
        proc.stderr.close()


# F8 ---------------------------------------------------------------------------------------------


def test_client_hanging_up_mid_body_is_not_an_internal_error(
    open_gw: tuple[Gateway, RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    _, server = open_gw
    caplog.set_level(logging.INFO, logger="thrifty.server")
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        half_request(server, path, {}).close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum("disconnected" in r.getMessage() for r in caplog.records) < 2:
        time.sleep(0.05)
    server_records = [r for r in caplog.records if r.name == "thrifty.server"]
    assert sum("client disconnected" in r.getMessage() for r in server_records) == 2
    assert [r for r in server_records if r.levelno >= logging.WARNING or r.exc_info] == []


# F10 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a" * 201, "a" * 3_000_000, "a\x00b", "ops\x1b[31m", "two\nlines"])
def test_admin_key_names_are_bounded(keyed: tuple[RunningServer, str], name: str) -> None:
    server, _ = keyed
    r = httpx.post(server.url + "/admin/keys", json={"name": name}, timeout=30,
                   headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400, r.text[:200]
    assert r.json()["error"]["param"] == "name" and len(r.text) < 1000


def test_admin_key_names_within_bounds_are_kept(keyed: tuple[RunningServer, str]) -> None:
    server, _ = keyed
    for name in ("a" * 200, "équipe données 🚀"):
        r = httpx.post(server.url + "/admin/keys", json={"name": name}, timeout=10,
                       headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 201 and r.json()["name"] == name
