"""The library's lifecycle: `import thrifty`, provider sessions per event loop, Gateway close
and context managers, the ledger writer's exit hook, and how upstream statuses are mapped."""

from __future__ import annotations

import asyncio
import atexit
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from thrifty.config import ProviderConfig
from thrifty.errors import UpstreamStatusError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.ledger.writer import LedgerWriter
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.providers.openai_compat import OpenAICompatProvider
from thrifty.server.inprocess import LoopThread

MSG = [{"role": "user", "content": "hi"}]


def test_import_thrifty_is_cheap_and_exports_gateway_and_version() -> None:
    code = (
        "import sys, thrifty\n"
        "assert 'thrifty.gateway' not in sys.modules and 'importlib.metadata' not in sys.modules\n"
        "assert sorted(thrifty.__all__) == ['Gateway', '__version__']\n"
        "from thrifty import Gateway, __version__\n"
        "from thrifty.gateway import Gateway as G\n"
        "assert Gateway is G and isinstance(__version__, str) and __version__\n"
        "print(__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import thrifty

        _ = thrifty.nope


# ------------------------------------------------------------------ provider sessions per loop


def provider() -> OpenAICompatProvider:
    return OpenAICompatProvider("p", ProviderConfig(base_url="http://127.0.0.1:1/v1"))


def test_each_event_loop_gets_its_own_session_and_aclose_drops_closed_loops() -> None:
    prov = provider()

    async def session() -> aiohttp.ClientSession:
        return prov._get_session()

    first = asyncio.run(session())
    second = asyncio.run(session())  # the first loop is closed by now
    assert second is not first
    assert first.closed  # dropped (without raising) when the new loop showed up
    asyncio.run(prov.aclose())  # from a third loop: the second's loop is closed too
    assert second.closed


def test_aclose_closes_the_session_of_a_loop_running_in_another_thread() -> None:
    prov = provider()
    other = LoopThread()
    try:

        async def session() -> aiohttp.ClientSession:
            return prov._get_session()

        theirs = other.call(session(), 10)
        mine = asyncio.run(session())
        assert theirs is not mine
        asyncio.run(prov.aclose())
        assert theirs.closed and mine.closed
    finally:
        other.stop()


# ------------------------------------------------------------------ Gateway close


def config(tmp_path: Path) -> dict[str, Any]:
    return {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
            "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
            "ledger": {"path": str(tmp_path / "ledger.db"), "flush_interval_s": 30}}


def answer(body: dict[str, Any]) -> dict[str, Any]:
    return chat_response(body["model"], "ok")


class BrokenClose(FunctionProvider):
    async def aclose(self) -> None:
        raise RuntimeError("provider close failed")


def count_rows(tmp_path: Path) -> int:
    return int(SQLiteStore(str(tmp_path / "ledger.db")).query("SELECT COUNT(*) FROM requests")[0][0])


def test_a_component_failing_to_close_does_not_keep_the_ledger_open(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path), providers={"p": BrokenClose(answer)})
    writer = gw.ledger
    assert writer is not None
    asyncio.run(gw.chat(model="m", messages=MSG))
    with pytest.raises(RuntimeError, match="provider close failed"):
        gw.close()
    assert gw.ledger is None and not writer._thread.is_alive()
    assert count_rows(tmp_path) == 1


def test_with_closes_the_gateway_and_writes_the_ledger(tmp_path: Path) -> None:
    with Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(answer)}) as gw:
        reply = gw.openai_client(max_retries=0).chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "ok"
    assert gw.ledger is None
    assert count_rows(tmp_path) == 1


async def test_async_with_closes_the_gateway(tmp_path: Path) -> None:
    async with Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(answer)}) as gw:
        await gw.chat(model="m", messages=MSG)
    assert gw.ledger is None
    assert count_rows(tmp_path) == 1


async def test_close_inside_a_running_loop_says_to_use_aclose(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(answer)})
    with pytest.raises(RuntimeError, match="aclose"):
        gw.close()
    await gw.aclose()


def test_ledger_writer_registers_an_exit_hook_and_close_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks: list[Any] = []
    monkeypatch.setattr(atexit, "register", hooks.append)
    monkeypatch.setattr(atexit, "unregister", hooks.remove)
    writer = LedgerWriter(SQLiteStore(str(tmp_path / "l.db")), flush_interval_s=30)
    (hook,) = hooks
    writer.close()
    assert hooks == []
    writer.close()  # idempotent
    hook()  # a hook that ran late finds the writer closed: nothing to do, nothing raised


def test_the_exit_hook_writes_what_is_queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks: list[Any] = []
    monkeypatch.setattr(atexit, "register", hooks.append)
    monkeypatch.setattr(atexit, "unregister", hooks.remove)
    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(answer)})
    asyncio.run(gw.chat(model="m", messages=MSG))
    assert count_rows(tmp_path) == 0  # still queued (flush_interval_s: 30)
    hooks[0]()  # what the interpreter runs at exit
    assert count_rows(tmp_path) == 1


# ------------------------------------------------------------------ upstream statuses


@pytest.mark.parametrize(("upstream", "code", "needle"), [
    (401, "upstream_auth_failed", "rejected the gateway's credentials"),
    (403, "upstream_auth_failed", "refused the gateway's credentials"),
    (404, "upstream_not_found", "does not know this model"),
])
def test_gateway_side_upstream_statuses_become_502(upstream: int, code: str, needle: str) -> None:
    body = {"error": {"message": "nope", "type": "invalid_request_error", "code": "invalid_api_key", "param": "x"}}
    err = UpstreamStatusError(f"p: upstream returned HTTP {upstream}: nope", status=upstream, body=body)
    assert (err.status, err.upstream_status, err.code, err.type) == (502, upstream, code, "upstream_error")
    assert needle in err.message and err.param is None and not err.retryable


@pytest.mark.parametrize("upstream", [400, 413, 422])
def test_client_side_upstream_statuses_are_kept(upstream: int) -> None:
    body = {"error": {"message": "bad", "code": "bad_param", "param": "temperature"}}
    err = UpstreamStatusError("p: upstream returned HTTP 4xx: bad", status=upstream, body=body)
    assert (err.status, err.type, err.code, err.param) == (upstream, "invalid_request_error", "bad_param", "temperature")


def test_upstream_5xx_is_a_retryable_502() -> None:
    err = UpstreamStatusError("p: upstream returned HTTP 503", status=503)
    assert err.status == 502 and err.retryable
