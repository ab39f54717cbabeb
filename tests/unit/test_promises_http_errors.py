"""Promise: bad input to any HTTP endpoint is a 4xx with an OpenAI error body, never a 5xx or a
traceback, and never echoes a key; whatever credentials come with it (admin key, virtual key, a
wrong key, none).

The routes are read from the app itself, so an endpoint added later is swept too: every method
(allowed or not) with malformed, non-object and wrongly-typed bodies, and hostile path values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response

ADMIN = "admin-secret-for-the-sweep-123456"
BODIES = [b"{not json", b"[1]", b'{"zz": 1}', b'{"model": 5, "messages": "x", "name": [], "stream": "yes"}', b""]
HOSTILE = {"{model_id:path}": "no/such/../model%00", "{key_id}": "key_../../x", "{name}": "..%2f..%2fetc%2fpasswd",
           "{response_id}": "resp_..%2f..%2fmodels%00"}


def requests_for(app: Any) -> list[tuple[str, str, bytes | None]]:
    out: list[tuple[str, str, bytes | None]] = []
    for route in app.routes:
        path = route.path
        for placeholder, value in HOSTILE.items():
            path = path.replace(placeholder, value)
        assert "{" not in path, f"a path parameter the sweep does not fill: {route.path}"
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            for body in (BODIES if method in ("POST", "PUT", "PATCH") else [None]):
                out.append((method, path, body))
    out += [("GET", "/dashboard/data?period=bogus", None), ("GET", "/no/such/path", None),
            ("POST", "/v1/embeddings", b"{}")]
    return out


@pytest.mark.parametrize("auth_enabled", [True, False], ids=["virtual-keys", "open"])
async def test_every_endpoint_answers_bad_input_with_an_openai_error(tmp_path: Path, auth_enabled: bool) -> None:
    cfg = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
           "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
           "ledger": {"path": str(tmp_path / "l.db")}, "cache": {"path": str(tmp_path / "c.db")},
           "auth": {"enabled": auth_enabled, "admin_key": ADMIN}}
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(lambda b: chat_response(b["model"], "ok"))})
    assert gw.ops.keys is not None
    _, secret = gw.ops.keys.create("app")
    app = gw.app()
    sweep = requests_for(app)
    assert len({p for _, p, _ in sweep}) >= 10  # the routes were found: the sweep is not empty
    failures: list[str] = []
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for credential in (f"Bearer {ADMIN}", f"Bearer {secret}", "Bearer thr-not-a-real-key-0000", None):
            for method, path, body in sweep:
                headers = {"content-type": "application/json"}
                if credential:
                    headers["authorization"] = credential
                r = await client.request(method, path, content=body, headers=headers)
                where = f"{method} {path} {body!r} ({(credential or 'no key')[:12]}): {r.status_code} {r.text[:120]}"
                if r.status_code >= 500 or "Traceback" in r.text or ADMIN in r.text or secret in r.text:
                    failures.append(where)
                elif r.status_code >= 400:
                    try:
                        err = r.json()["error"]
                        assert set(err) >= {"message", "type", "param", "code"} and err["message"]
                    except (ValueError, KeyError, TypeError, AssertionError):
                        failures.append("not an OpenAI error: " + where)
    await gw.aclose()
    assert failures == []


async def test_budget_and_rate_refusals_are_ledgered_and_bad_keys_are_not_requests(tmp_path: Path) -> None:
    from thrifty.ledger.store import SQLiteStore

    cfg = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
           "models": {"m": {"provider": "p", "price": {"input": 1000, "output": 1000}}},
           "ledger": {"path": str(tmp_path / "l.db")}, "auth": {"enabled": True}}
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(lambda b: chat_response(b["model"], "ok"))})
    assert gw.ops.keys is not None
    _, budgeted = gw.ops.keys.create("budget", budget_usd=0.02)
    _, slow = gw.ops.keys.create("rpm", rpm=1)
    outcomes = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://t") as client:
        for key in (budgeted, budgeted, slow, slow, "thr-not-a-real-key-0000"):
            r = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={
                "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            gw.flush()
            rows = SQLiteStore(str(tmp_path / "l.db")).query(
                "SELECT status, error_type FROM requests WHERE request_id = ?", [r.headers["x-thrifty-request-id"]])
            outcomes.append((r.status_code, r.json().get("error", {}).get("code"), rows))
    await gw.aclose()
    assert outcomes == [
        (200, None, [("ok", None)]),
        (429, "budget_exceeded", [("error", "BudgetExceededError")]),
        (200, None, [("ok", None)]),
        (429, "rate_limit_exceeded", [("error", "RateLimitError")]),
        # Refused before it is anyone's request (like a body that is not JSON): no row.
        (401, "invalid_api_key", []),
    ]
