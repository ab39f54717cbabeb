"""Per-request work on the gateway's hot path is done once, or not at all where it can be done
once per process: a served gateway (127.0.0.1), the real `openai` client and the mock upstream,
with the step counted per request (the CPU it cost is in the docstrings)."""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.datastructures import Headers

from fixtures.served import serving
from thrifty import logs
from thrifty.gateway import Gateway
from thrifty.logs import JsonFormatter
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.ops.ratelimit import period_of
from thrifty.pipeline import caller

MSG: list[Any] = [{"role": "user", "content": "How do I change my delivery address?"}]


@pytest.fixture
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig())) as server:
        yield server


def config(tmp_path: Path, upstream: RunningServer, *, auth: bool = True) -> dict[str, Any]:
    """bench/overhead.py's gateway (two models on the mock, a SQLite ledger), with virtual keys when ``auth``."""
    return {
        "providers": {"mock": {"base_url": upstream.url + "/v1", "api_key": "sk-upstream-0000"}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
                   "premium": {"provider": "mock", "price": {"input": 2.5, "output": 10}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "auth": {"enabled": auth, "admin_key": "admin-secret-0000"},
    }


def count_key_reads(gw: Gateway) -> list[str]:
    """Wrap the key store's lookup by secret (an HMAC and a cache or database read): one entry per call."""
    keys = gw.ops.keys
    assert keys is not None
    calls: list[str] = []
    real = keys.afind

    async def afind(secret: str) -> Any:
        calls.append("afind")
        return await real(secret)

    keys.afind = afind  # type: ignore[method-assign]
    return calls


def test_a_virtual_key_is_looked_up_once_per_chat_request(tmp_path: Path, upstream: RunningServer) -> None:
    """The key was read twice per request: once before the body (model_access.key_refusal), then
    again by the authenticator once the body named a model: two HMACs and cache reads, and a
    second database read whenever the cache entry expired in between."""
    with serving(config(tmp_path, upstream)) as (gw, served):
        assert gw.ops.keys is not None
        _, secret = gw.ops.keys.create("app", routes=["cheap"])
        calls = count_key_reads(gw)
        client = openai.OpenAI(base_url=str(served.base_url), api_key=secret, max_retries=0)
        for _ in range(3):
            reply = client.chat.completions.create(model="cheap", messages=MSG)
            assert reply.choices[0].message.content
        assert len(calls) == 3
        # The model check still runs on the one lookup: a model outside the key's routes is refused.
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="premium", messages=MSG)
        assert len(calls) == 4
        client.close()
    gw.close()


@pytest.fixture
def json_request_log() -> Iterator[io.StringIO]:
    """The JSON handler `thrifty serve` installs (logs.setup_logging), on thrifty's loggers at
    INFO (serve's default level), writing to a buffer; the loggers restored afterwards."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("thrifty")
    saved = (log.handlers[:], log.level, log.propagate)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield out
    finally:
        log.handlers[:], log.level, log.propagate = saved


def test_a_request_log_line_masks_each_field_once(tmp_path: Path, upstream: RunningServer,
                                                  json_request_log: io.StringIO,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each string of a log line went through every gateway's redactor (which ends with the
    key-shape pattern) and then through that same pattern again, after a fresh copy of the
    redactor set per field: at INFO (serve's default) formatting the request line took ~17 us,
    ~6 of them the repeats. Masked as before, with each pattern applied once."""
    shapes = 0
    real = logs.redact

    def counted(text: str) -> str:
        nonlocal shapes
        shapes += 1
        return real(text)

    monkeypatch.setattr(logs, "redact", counted)
    with serving(config(tmp_path, upstream, auth=False)) as (gw, client):
        client.chat.completions.create(model="cheap", messages=MSG)
        # A key-shaped or configured secret in a field (the client names the model) is masked.
        for model in ("sk-proj-leakedkey123456", "sk-upstream-0000"):
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model=model, messages=MSG)
    gw.close()
    lines = [json.loads(line) for line in json_request_log.getvalue().splitlines()]
    requests = [entry for entry in lines if entry["logger"] == "thrifty.request"]
    assert [entry["model"] for entry in requests] == ["cheap", "[REDACTED]", "[REDACTED]"]
    assert "leakedkey" not in json_request_log.getvalue() and "sk-upstream-0000" not in json_request_log.getvalue()
    assert shapes == 0  # the gateway's redactor already applied the key shapes


def test_without_a_gateway_redactor_the_key_shapes_still_apply() -> None:
    line = JsonFormatter().format(logging.LogRecord("thrifty.x", logging.INFO, __file__, 1, "key %s",
                                                    ("sk-proj-leakedkey123456",), None))
    assert json.loads(line)["msg"] == "key [REDACTED]"


def test_the_credential_headers_are_read_in_one_pass(tmp_path: Path, upstream: RunningServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without virtual keys, every request looked up authorization, api-key, x-api-key and
    authorization again for its cache tenant, one scan of the headers each (and a raised
    KeyError for each absent one). The tenant is the same."""
    looked_up: list[str] = []
    real = Headers.__getitem__

    def getitem(self: Headers, key: str) -> str:
        looked_up.append(key.lower())
        return real(self, key)

    with serving(config(tmp_path, upstream, auth=False)) as (gw, client):
        monkeypatch.setattr(Headers, "__getitem__", getitem)
        client.chat.completions.create(model="cheap", messages=MSG)
        with openai.OpenAI(base_url=str(client.base_url), api_key="unused", max_retries=0,
                           default_headers={"authorization": "Basic dXNlcjpwdw=="}) as basic:
            basic.chat.completions.create(model="cheap", messages=MSG)
        monkeypatch.undo()
        gw.flush()
        rows = gw.ops.store.query("SELECT tenant FROM requests ORDER BY ts") if gw.ops.store else []
    gw.close()
    assert not {"authorization", "api-key", "x-api-key"} & set(looked_up)
    tenants = [hashlib.sha256(c.encode()).hexdigest()[:16] for c in ("sk-client-0000", "Basic dXNlcjpwdw==")]
    assert rows == [(f"anon-{t}",) for t in tenants]


def test_no_retry_policy_is_built_per_request(tmp_path: Path, upstream: RunningServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call built a default RetryPolicy as the fallback of a dict lookup that always finds
    the provider's own (built once, from its config): a frozen dataclass per request for nothing."""
    built: list[tuple[Any, ...]] = []

    class Counted(caller.RetryPolicy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(args)
            super().__init__(*args, **kwargs)

    cfg = config(tmp_path, upstream, auth=False)
    cfg["providers"]["mock"]["max_retries"] = 1
    with serving(cfg) as (gw, client):
        monkeypatch.setattr(caller, "RetryPolicy", Counted)
        client.chat.completions.create(model="cheap", messages=MSG)
        assert gw.caller.retry_policies["mock"].max_retries == 1
    gw.close()
    assert built == []


def test_a_budget_period_is_worked_out_once_while_it_lasts() -> None:
    """Every admitted request of a key with a budget or limits worked its UTC day or month out
    anew (gmtime, two timegm, strftime: ~2.5 us); the period is the same until it ends."""
    before_new_year = calendar.timegm((2025, 12, 31, 23, 59, 0))
    december = period_of("month", before_new_year)
    assert period_of("month", before_new_year + 59.999) is december
    assert (december.id, december.start) == ("2025-12", calendar.timegm((2025, 12, 1, 0, 0, 0)))
    january = period_of("month", before_new_year + 60)
    assert (january.id, january.start, january.end) == (
        "2026-01", december.end, calendar.timegm((2026, 2, 1, 0, 0, 0)))
    day = period_of("day", before_new_year)
    assert period_of("day", before_new_year + 1) is day and day.id == "2025-12-31"
    assert period_of("day", before_new_year + 60).id == "2026-01-01"
    # A time in an earlier period (a late correction of last month's spend) gets its own.
    assert period_of("month", before_new_year).id == "2025-12"


def test_a_refused_key_is_still_refused_with_its_reason(tmp_path: Path, upstream: RunningServer) -> None:
    with serving(config(tmp_path, upstream)) as (gw, served):
        keys = gw.ops.keys
        assert keys is not None
        key, secret = keys.create("app")
        url = str(served.base_url)
        with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
            openai.OpenAI(base_url=url, api_key="thr-not-a-real-key-0000", max_retries=0).chat.completions.create(
                model="cheap", messages=MSG)
        keys.revoke(key.key_id)
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=url, api_key=secret, max_retries=0).chat.completions.create(
                model="cheap", messages=MSG)
        assert err.value.code == "key_revoked"
        failures = gw.ops.metrics.auth_failures
        assert failures.labels("invalid")._value.get() == 1
        assert failures.labels("revoked")._value.get() == 1
    gw.close()

