"""Cache safety over real HTTP (uvicorn on loopback, the mock upstream): semantic near misses are
not served, `pragma: no-cache` bypasses, unknown cache controls are refused with a 400 naming the
accepted values, and Azure-style `api-key` clients get their own tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("cache-safety")
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as mock:
        cfg = {
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-up-123456"}},
            "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}}},
            "ledger": {"path": "ledger.db"},
            "cache": {"path": "cache.db", "semantic": {"enabled": True}},
        }
        path = tmp / "thrifty.yaml"
        path.write_text(yaml.safe_dump(cfg))
        gw = Gateway.from_config(path)
        with run_in_thread(gw.app()) as srv:
            yield srv
        gw.flush()


def post(server: RunningServer, text: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    payload = {"model": "cheap", "temperature": 0, "messages": [{"role": "user", "content": text}], **body}
    return httpx.post(server.url + "/v1/chat/completions", json=payload, timeout=10,
                      headers={"authorization": "Bearer sk-client-safety", **(headers or {})})


@pytest.mark.parametrize(("first", "second"), [
    ("What is 6/3?", "What is 6*3?"),
    ("Is -5 greater than 3?", "Is 5 greater than 3?"),
    ("Translate to English: 我爱你", "Translate to English: 我恨你"),
    ("Convert 'hello world' to uppercase", "Convert 'HELLO WORLD' to uppercase"),
])
def test_semantic_near_misses_are_not_served(server: RunningServer, first: str, second: str) -> None:
    assert post(server, first).headers["x-thrifty-cache"] == "miss"
    again = post(server, second)
    assert again.status_code == 200 and again.headers["x-thrifty-cache"] == "miss"
    reworded = post(server, first.lower() + " ")  # the same question, reworded: still served
    assert reworded.headers["x-thrifty-cache"] == "hit" and reworded.headers["x-thrifty-cache-match"] == "semantic"


def test_pragma_no_cache_bypasses(server: RunningServer) -> None:
    post(server, "Pragma test question")
    assert post(server, "Pragma test question").headers["x-thrifty-cache"] == "hit"
    assert post(server, "Pragma test question", {"pragma": "no-cache"}).headers["x-thrifty-cache"] == "bypass"


@pytest.mark.parametrize(("headers", "body", "named"), [
    ({"x-thrifty-cache": "bypass"}, {}, "no-store, no-cache, max-age=N"),
    ({"cache-control": "no-cahce"}, {}, "no-store, no-cache, max-age=N"),
    ({}, {"cache": "false"}, "true or false"),
    ({}, {"cache": 0}, "true or false"),
])
def test_unknown_cache_controls_are_refused(server: RunningServer, headers: dict[str, str], body: dict[str, Any],
                                            named: str) -> None:
    resp = post(server, "Refused control question", headers, **body)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and named in err["message"]


def test_api_key_header_is_a_tenant_like_a_bearer_token(server: RunningServer) -> None:
    def ask(headers: dict[str, str]) -> str:
        payload = {"model": "cheap", "temperature": 0, "messages": [{"role": "user", "content": "Whose answer?"}]}
        resp = httpx.post(server.url + "/v1/chat/completions", json=payload, headers=headers, timeout=10)
        assert resp.status_code == 200
        return resp.headers["x-thrifty-cache"]

    assert ask({"api-key": "azure-client-1"}) == "miss"
    assert ask({"api-key": "azure-client-2"}) == "miss"  # was the shared `default` tenant: a hit
    assert ask({"api-key": "azure-client-1"}) == "hit"
    assert ask({"authorization": "Bearer azure-client-1"}) == "hit"  # the same key, the same tenant
