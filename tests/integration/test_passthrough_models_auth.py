"""GET /v1/models and /v1/models/{id} need a valid key when virtual keys are on, and list only
what the key may call; /metrics needs the admin key with ``server.metrics_key_required``.
A real gateway on 127.0.0.1 and the official openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.requests import Request

from thrifty.errors import AuthenticationError, ConfigError, PermissionDeniedError
from thrifty.gateway import Gateway
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.types import ChatRequest

ADMIN = "admin-models-test-key-000000"
PRICE = {"input": 1.0, "output": 1.0}


def config(tmp: Path, *, auth: bool, metrics_key: bool = False) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"cheap": {"provider": "p", "aliases": ["c"], "price": PRICE},
                   "strong": {"provider": "p", "price": PRICE}, "embed": {"provider": "p", "price": PRICE}},
        "default_model": "cheap",
        "ledger": {"path": str(tmp / "ledger.db")},
        "auth": {"enabled": auth, "admin_key": ADMIN},
        **({"server": {"metrics_key_required": True}} if metrics_key else {}),
    }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer, dict[str, str]]]:
    gw = Gateway.from_config(config(tmp_path_factory.mktemp("models"), auth=True))
    assert gw.ops.keys is not None
    keys = {"any": gw.ops.keys.create("any")[1],
            "cheap": gw.ops.keys.create("cheap-only", routes=["cheap", "c", "auto"])[1],
            "embed": gw.ops.keys.create("embed-only", routes=["embed"])[1]}
    revoked, secret = gw.ops.keys.create("gone")
    gw.ops.keys.revoke(revoked.key_id)
    keys["revoked"] = secret
    with run_in_thread(gw.app()) as server:
        yield gw, server, keys
    gw.close()


def client(server: RunningServer, key: str, base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + base, api_key=key, max_retries=0, timeout=30)


@pytest.mark.parametrize("key", ["", "thr-not-a-real-key-0000", "revoked"])
def test_model_list_needs_a_valid_key(secured: tuple[Gateway, RunningServer, dict[str, str]], key: str) -> None:
    _, server, keys = secured
    headers = {"authorization": f"Bearer {keys.get(key, key)}"} if key else {}
    for path in ("/v1/models", "/models", "/v1/models/cheap", "/models/cheap"):
        r = httpx.get(server.url + path, headers=headers, timeout=30)
        assert r.status_code == 401, (path, r.text)
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and "data" not in r.json()
        assert r.headers["x-request-id"].startswith("req_")
    if key:
        with pytest.raises(openai.AuthenticationError):
            client(server, keys.get(key, key)).models.list()


def test_a_key_sees_what_it_may_call(secured: tuple[Gateway, RunningServer, dict[str, str]]) -> None:
    _, server, keys = secured
    everything = {m.id for m in client(server, keys["any"]).models.list()}
    assert everything == {"cheap", "c", "strong", "embed", "auto"}
    assert {m.id for m in client(server, keys["cheap"]).models.list()} == {"cheap", "c", "auto"}
    assert {m.id for m in client(server, keys["embed"], base="").models.list()} == {"embed"}
    # The Azure-style header is read as everywhere else (server/credentials.py).
    r = httpx.get(server.url + "/v1/models", headers={"api-key": keys["embed"]}, timeout=30)
    assert [m["id"] for m in r.json()["data"]] == ["embed"]


def test_retrieve_hides_models_the_key_may_not_use(secured: tuple[Gateway, RunningServer, dict[str, str]]) -> None:
    _, server, keys = secured
    assert client(server, keys["cheap"]).models.retrieve("c").id == "c"
    with pytest.raises(openai.NotFoundError) as err:
        client(server, keys["cheap"]).models.retrieve("strong")
    assert err.value.code == "model_not_found"
    assert client(server, keys["any"]).models.retrieve("strong").id == "strong"


def test_metrics_need_the_admin_key_when_configured(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path, auth=True, metrics_key=True))
    assert gw.ops.keys is not None
    virtual = gw.ops.keys.create("any")[1]
    with run_in_thread(gw.app()) as server:
        for headers in ({}, {"authorization": f"Bearer {virtual}"}):
            r = httpx.get(server.url + "/metrics", headers=headers, timeout=30)
            assert r.status_code == 401 and "metrics_key_required" in r.json()["error"]["message"]
        r = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert r.status_code == 200 and "thrifty_requests" in r.text
    gw.close()


def test_metrics_key_required_needs_an_admin_key(tmp_path: Path) -> None:
    cfg = config(tmp_path, auth=False, metrics_key=True)
    cfg["auth"] = {}
    with pytest.raises(ConfigError, match=r"server\.metrics_key_required: needs auth\.admin_key"):
        Gateway.from_config(cfg)


def test_a_custom_authenticate_hook_filters_the_list(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path, auth=False))

    async def authenticate(request: Request, chat: ChatRequest) -> tuple[str, str]:
        if request.headers.get("authorization") != "Bearer team-a":
            raise AuthenticationError("Unknown team.")
        if not chat.model.startswith("c"):
            raise PermissionDeniedError(f"Team a may not use {chat.model!r}.")
        return "team-a", "team-a"

    with run_in_thread(gw.app()) as server:
        # Without authentication the list and /metrics stay open (Prometheus scrapes as before).
        assert {m["id"] for m in httpx.get(server.url + "/v1/models", timeout=30).json()["data"]} == {
            "cheap", "c", "strong", "embed", "auto"}
        assert httpx.get(server.url + "/metrics", timeout=30).status_code == 200
        gw.authenticate = authenticate
        assert {m.id for m in client(server, "team-a").models.list()} == {"cheap", "c"}
        with pytest.raises(openai.AuthenticationError):
            client(server, "team-b").models.list()
    gw.close()
