"""``server.cors_origins``: browser apps on the listed origins may call the gateway; others may not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

APP = "https://app.example.com"
BODY = {"model": "cheap", "messages": [{"role": "user", "content": "Hi"}]}


def gateway(mock: RunningServer, tmp: Path, origins: list[str]) -> Gateway:
    return Gateway.from_config({
        "providers": {"mock": {"base_url": mock.url + "/v1", "max_retries": 0}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}}},
        "ledger": {"path": str(tmp / "l.db")}, "server": {"cors_origins": origins}})


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as server:
        yield server


def test_listed_origins_get_preflight_and_readable_headers(mock: RunningServer, tmp_path: Path) -> None:
    gw = gateway(mock, tmp_path, [APP])
    with run_in_thread(gw.app()) as server:
        url = server.url + "/v1/chat/completions"
        pre = httpx.options(url, headers={"origin": APP, "access-control-request-method": "POST",
                                          "access-control-request-headers": "authorization, content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == APP
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = httpx.post(url, json=BODY, headers={"origin": APP, "authorization": "Bearer sk-browser-0000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
        assert "x-thrifty-cost-usd" in r.headers["access-control-expose-headers"]
        other = httpx.options(url, headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    gw.close()


def test_without_cors_origins_no_cors_headers(mock: RunningServer, tmp_path: Path) -> None:
    gw = gateway(mock, tmp_path, [])
    with run_in_thread(gw.app()) as server:
        r = httpx.post(server.url + "/v1/chat/completions", json=BODY, headers={"origin": APP})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        pre = httpx.options(server.url + "/v1/chat/completions",
                            headers={"origin": APP, "access-control-request-method": "POST"})
        assert pre.status_code == 405 and pre.json()["error"]["type"] == "invalid_request_error"
    gw.close()
