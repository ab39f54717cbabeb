"""docs/library.md walked through as a newcomer would: misuse of a Gateway (wrong arguments, use
after close, close() inside an event loop, a missing optional extra) raises a one-line
ThriftyError, spends nothing upstream, and leaves no thread behind."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from thrifty.errors import ConfigError, GatewayStateError, ThriftyError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"cheap": {"answer": "7"}}}))) as server:
        yield server


def config(tmp_path: Path, upstream: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"main": {"base_url": f"{upstream}/v1", "api_key": "k", "max_retries": 0}},
        "models": {"cheap": {"provider": "main", "price": {"input": 1.0, "output": 2.0}}},
        "default_model": "cheap",
        "ledger": {"path": str(tmp_path / "ledger.db")},
        **extra,
    }


def upstream_calls(mock: RunningServer) -> int:
    return int(httpx.get(f"{mock.url}/mock/stats").json()["calls"].get("cheap", 0))


def ledger_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


def ledger_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "thrifty-ledger" and t.is_alive())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": ["not", "a", "config"]}, "takes a path, a dict or a Config, not list"),
        ({"source": None}, "not NoneType"),
        ({"providers": [("main", object())]}, "providers= must be a dict"),
        ({"providers": {"main": object()}}, "providers['main'] is not a Provider (no complete, stream, aclose"),
        ({"env": ["OPENAI_API_KEY"]}, "env= must be a dict of strings"),
    ],
)
def test_from_config_with_wrong_argument_types_raises_a_config_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"source": config(tmp_path, "http://127.0.0.1:9"), **kwargs}
    source = args.pop("source")
    before = ledger_threads()
    with pytest.raises(ConfigError) as info:
        Gateway.from_config(source, **args)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert ledger_threads() == before


async def test_a_closed_gateway_refuses_work_and_spends_nothing(tmp_path: Path, mock: RunningServer) -> None:
    gw = Gateway.from_config(config(tmp_path, mock.url))
    early = gw.async_openai_client(max_retries=0)  # made before close, used after
    reply = await gw.chat(model="auto", messages=MSG)
    assert reply["choices"][0]["message"]["content"] == "7"
    await gw.aclose()
    assert gw.closed
    calls = upstream_calls(mock)

    with pytest.raises(GatewayStateError, match="this gateway is closed") as info:
        await gw.chat(model="auto", messages=MSG)
    assert isinstance(info.value, ThriftyError) and info.value.status == 503
    assert info.value.code == "gateway_closed"
    with pytest.raises(GatewayStateError, match="closed"):
        gw.openai_client()
    with pytest.raises(GatewayStateError, match="closed"):
        gw.async_openai_client()
    with pytest.raises(openai.APIConnectionError):
        await early.chat.completions.create(model="auto", messages=MSG)

    assert upstream_calls(mock) == calls  # before the fix each of these reached the provider
    assert ledger_rows(tmp_path) == 1
    assert not [t for t in threading.enumerate() if t.name == "thrifty-inprocess"]
    await gw.aclose()  # closing again is a no-op
    gw.close()


def test_the_sync_client_after_close_raises_connection_error_without_a_new_loop_thread(
    tmp_path: Path, mock: RunningServer
) -> None:
    with Gateway.from_config(config(tmp_path, mock.url)) as gw:
        client = gw.openai_client(max_retries=0)
        assert client.chat.completions.create(model="auto", messages=MSG).choices[0].message.content == "7"
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="auto", messages=MSG)
    with pytest.raises(GatewayStateError):
        gw.openai_client()  # used to start a fresh loop thread nothing would ever stop
    assert not [t for t in threading.enumerate() if t.name == "thrifty-inprocess"]
    assert ledger_rows(tmp_path) == 1


async def test_close_inside_a_running_loop_is_a_thrifty_error_and_still_a_runtime_error(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path, "http://127.0.0.1:9"))
    with pytest.raises(GatewayStateError, match=r"await gateway\.aclose") as info:
        gw.close()
    assert isinstance(info.value, RuntimeError) and info.value.code == "running_event_loop"
    assert not gw.closed  # nothing was closed: aclose() still works
    await gw.aclose()
    gw.close()  # already closed: nothing to do, even inside a loop


def test_a_missing_optional_extra_is_a_config_error_and_leaks_no_ledger_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The redis extra "not installed": an import of redis or redis.asyncio fails.
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    before = ledger_threads()
    auth = {"enabled": True, "backend": "redis", "admin_key": "a" * 32}
    with pytest.raises(ConfigError) as info:  # was a bare ModuleNotFoundError from ops/redis_limits.py
        Gateway.from_config(config(tmp_path, "http://127.0.0.1:9", redis_url="redis://127.0.0.1:1/0", auth=auth))
    assert "pip install 'thrifty[redis]'" in str(info.value)
    with pytest.raises(ConfigError, match=r"thrifty\[redis\]"):  # raised after the ledger was opened
        Gateway.from_config(config(tmp_path, "http://127.0.0.1:9",
                                   cache={"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}))
    assert ledger_threads() == before


def test_documented_sync_and_async_use_leaves_no_threads(tmp_path: Path, mock: RunningServer) -> None:
    before = set(threading.enumerate())

    async def main() -> str:
        async with Gateway.from_config(config(tmp_path, mock.url)) as gw:
            aclient = gw.async_openai_client()
            stream = await aclient.chat.completions.create(model="auto", messages=MSG, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return text

    assert asyncio.run(main()) == "7"
    with (Gateway.from_config(config(tmp_path, mock.url)) as gw,
          gw.openai_client().chat.completions.create(model="auto", messages=MSG, stream=True) as stream):
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "7"
    assert set(threading.enumerate()) - before == set()
    assert ledger_rows(tmp_path) == 2


def established_to(port: int) -> int:
    """Client-side TCP connections to ``port`` that are still open (Linux /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
                    count += 1
    return count


def test_asyncio_run_twice_leaves_no_upstream_connection_open(tmp_path: Path, mock: RunningServer) -> None:
    gw = Gateway.from_config(config(tmp_path, mock.url))
    port = int(mock.url.rsplit(":", 1)[1])
    assert asyncio.run(gw.chat(model="auto", messages=MSG))["choices"][0]["message"]["content"] == "7"
    # The loop has ended: its pooled upstream connection is closed with it, not left to the GC.
    assert established_to(port) == 0
    assert asyncio.run(gw.chat(model="auto", messages=MSG))["choices"][0]["message"]["content"] == "7"
    assert established_to(port) == 0
    gw.close()
    assert ledger_rows(tmp_path) == 2


def test_a_served_app_of_a_closed_gateway_refuses_every_endpoint(tmp_path: Path, mock: RunningServer) -> None:
    """`gw.app()` kept serving after `gw.close()`: chat was refused, but the embeddings, Responses
    and legacy completions passthroughs (and stored responses) still reached the provider, with no
    ledger to record the spend."""
    gw = Gateway.from_config(config(tmp_path, mock.url))
    with run_in_thread(gw.app()) as server:
        gw.close()
        calls = upstream_calls(mock)
        for path, body in [("/v1/chat/completions", {"model": "cheap", "messages": MSG}),
                           ("/v1/embeddings", {"model": "cheap", "input": "hi"}),
                           ("/v1/responses", {"model": "cheap", "input": "hi"}),
                           ("/v1/completions", {"model": "cheap", "prompt": "hi"})]:
            resp = httpx.post(server.url + path, json=body, timeout=30)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.json()["error"]["code"] == "gateway_closed", (path, resp.text)
        stored = httpx.get(server.url + "/v1/responses/resp_123", timeout=30)
        assert stored.status_code == 503 and stored.json()["error"]["code"] == "gateway_closed", stored.text
        assert upstream_calls(mock) == calls
