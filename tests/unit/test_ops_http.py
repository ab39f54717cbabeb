"""Auth, the admin API, /metrics and request logs through the ASGI app (in-process, no port)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from thrifty.gateway import Gateway
from thrifty.logs import JsonFormatter
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.server.inprocess import httpx

ADMIN = "admin-secret-1"


def make_gateway(tmp_path: Path, auth: dict[str, Any] | None = None, **server: Any) -> Gateway:
    async def fn(body: dict[str, Any]) -> dict[str, Any]:
        return chat_response(body["model"], "pong", {"prompt_tokens": 5, "completion_tokens": 10})

    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-upstream-secret-xyz"}},
        "models": {"cheap": {"provider": "p", "price": {"input": 1, "output": 2}},
                   "big": {"provider": "p", "price": {"input": 10, "output": 20}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "auth": {"enabled": True, "admin_key": ADMIN, **(auth or {})},
        "server": server,
    }
    return Gateway.from_config(cfg, providers={"p": FunctionProvider(fn)})


def client(gw: Gateway) -> Any:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t")


def chat(model: str = "cheap", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "secret prompt text"}], **extra}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_requests_need_a_valid_key(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path)
    async with client(gw) as c:
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer("thr-not-a-real-key-123456"))
        assert r.status_code == 401 and "thr-not" not in r.text
        r = await c.post("/admin/keys", json={"name": "app", "routes": ["cheap"]}, headers=bearer(ADMIN))
        assert r.status_code == 201
        created = r.json()
        key = created["key"]
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "pong"
        r = await c.post("/v1/chat/completions", json=chat("big"), headers=bearer(key))
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
        r = await c.delete(f"/admin/keys/{created['key_id']}", headers=bearer(ADMIN))
        assert r.status_code == 200 and r.json()["active"] is False
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"
    gw.flush()
    rows = gw.ops.store.query("SELECT key_id, tenant FROM requests") if gw.ops.store else []
    assert rows == [(created["key_id"], created["key_id"])]
    await gw.aclose()


async def test_admin_api_needs_the_admin_key(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path)
    async with client(gw) as c:
        for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("DELETE", "/admin/keys/key_x")):
            r = await c.request(method, path, headers=bearer("wrong"))
            assert r.status_code == 401, path
        r = await c.post("/admin/keys", json={"name": "x", "period": "week"}, headers=bearer(ADMIN))
        assert r.status_code == 400 and r.json()["error"]["param"] == "period"
        r = await c.post("/admin/keys", json={"name": "x", "budget_usd": 1, "period": "day", "rpm": 5},
                         headers=bearer(ADMIN))
        key_id = r.json()["key_id"]
        r = await c.get("/admin/keys", headers=bearer(ADMIN))
        assert [k["key_id"] for k in r.json()["data"]] == [key_id]
        assert "key" not in r.json()["data"][0] and "thr-" not in r.text.replace(r.json()["data"][0]["key_prefix"], "")
        r = await c.get(f"/admin/keys/{key_id}", headers=bearer(ADMIN))
        assert r.json()["usage"]["spent_usd"] == 0 and r.json()["usage"]["period"]
        r = await c.get("/admin/keys/key_missing", headers=bearer(ADMIN))
        assert r.status_code == 404
    await gw.aclose()


async def test_over_budget_gets_openai_429_with_retry_after(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path)
    assert gw.ops.keys is not None
    _, key = gw.ops.keys.create("small", budget_usd=0.0001, period="day")
    _, rpm_key = gw.ops.keys.create("slow", rpm=1)
    async with client(gw) as c:
        statuses = []
        for _ in range(6):
            r = await c.post("/v1/chat/completions", json=chat(max_tokens=10), headers=bearer(key))
            statuses.append(r.status_code)
        assert statuses[0] == 200 and statuses[-1] == 429
        body = r.json()["error"]
        assert body["code"] == "budget_exceeded" and body["type"] == "insufficient_quota"
        assert int(r.headers["retry-after"]) > 0
        await c.post("/v1/chat/completions", json=chat(), headers=bearer(rpm_key))
        r = await c.post("/v1/chat/completions", json=chat(), headers=bearer(rpm_key))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 60
    await gw.aclose()


async def test_metrics_count_requests_errors_tokens_cost(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path)
    assert gw.ops.keys is not None
    _, key = gw.ops.keys.create("m")
    async with client(gw) as c:
        await asyncio.gather(*(c.post("/v1/chat/completions", json=chat(), headers=bearer(key)) for _ in range(3)))
        await c.post("/v1/chat/completions", json=chat("nope"), headers=bearer(key))
        await c.post("/v1/chat/completions", json=chat())
        text = (await c.get("/metrics")).text
    assert 'thrifty_requests_total{model="cheap",route="-",status="ok",strategy="passthrough"} 3.0' in text
    # A model the config does not know is not a label value (unbounded: counted as "(unknown)").
    assert 'thrifty_errors_total{error_type="NotFoundError",model="(unknown)",route="-"} 1.0' in text
    assert 'thrifty_tokens_total{kind="completion",model="cheap",route="-"} 30.0' in text
    cost = re.search(r'^thrifty_cost_usd_total\{model="cheap",route="-"\} (\S+)$', text, re.M)
    assert cost is not None and float(cost.group(1)) == pytest.approx(3 * (5 * 1 + 10 * 2) / 1e6)
    assert 'thrifty_request_latency_seconds_count{model="cheap",route="-"} 3.0' in text
    assert 'thrifty_savings_usd_total{route="-",strategy="passthrough"}' in text  # baseline is "big"
    assert 'thrifty_auth_failures_total{reason="missing"} 1.0' in text
    assert key not in text
    await gw.aclose()


async def test_request_log_lines_are_json_without_keys_or_prompts(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    for log_prompts in (False, True):
        (tmp_path / str(log_prompts)).mkdir()
        gw = make_gateway(tmp_path / str(log_prompts), log_prompts=log_prompts)
        assert gw.ops.keys is not None
        _, key = gw.ops.keys.create("logs")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="thrifty.request"):
            async with client(gw) as c:
                r = await c.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        lines = [JsonFormatter().format(rec) for rec in caplog.records if rec.name == "thrifty.request"]
        assert len(lines) == 1
        entry = json.loads(lines[0])
        assert entry["request_id"] == r.headers["x-thrifty-request-id"] and entry["key_id"].startswith("key_")
        assert key not in lines[0] and "sk-upstream" not in lines[0]
        assert ("secret prompt text" in lines[0]) is log_prompts
        await gw.aclose()
