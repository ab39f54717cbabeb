"""docs/library.md used as an application developer embeds thrifty: secrets kept out of config
errors, conflicting upstream credentials caught at load, request bodies checked as JSON before
anything is sent, close() letting running requests finish (and be recorded), and a gateway
dropped without closing leaving no "Unclosed client session" behind."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from thrifty.errors import ConfigError, InvalidRequestError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    behaviour = {"models": {"cheap": {"answer": "7"}, "slow": {"answer": "late", "faults": {"latency_ms": 800}}}}
    with run_in_thread(create_mock(MockConfig.from_dict(behaviour))) as server:
        yield server


def config(tmp_path: Path, base_url: str, **provider: Any) -> dict[str, Any]:
    return {
        "providers": {"main": {"base_url": base_url, "max_retries": 0, **provider}},
        "models": {"cheap": {"provider": "main", "price": {"input": 1.0, "output": 2.0}},
                   "slow": {"provider": "main", "price": {"input": 1.0, "output": 2.0}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }


def upstream_calls(mock: RunningServer, model: str) -> int:
    return int(httpx.get(f"{mock.url}/mock/stats").json()["calls"].get(model, 0))


def ledger_rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return db.execute("SELECT served_model, status FROM requests").fetchall()


def test_a_numeric_secret_is_not_echoed_by_config_errors(mock: RunningServer, tmp_path: Path) -> None:
    # `api_key: 20240512123456` unquoted in YAML is a number: still a secret, never shown.
    with pytest.raises(ConfigError) as err:
        Gateway.from_config(config(tmp_path, mock.url + "/v1", api_key=20240512123456))
    assert "providers.main.api_key" in str(err.value)
    assert "20240512123456" not in str(err.value)


def test_a_config_path_with_a_line_break_is_named_on_one_line(tmp_path: Path) -> None:
    # A path read from a file or a variable often keeps its "\n": the message showed it raw,
    # split in two and hiding why the file was "not found".
    with pytest.raises(ConfigError) as err:
        Gateway.from_config(f"{tmp_path}/thrifty.yaml\n")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("cannot read config file ") and "thrifty.yaml\\n: " in str(err.value)


def test_credentials_in_base_url_and_an_api_key_are_refused_at_load(mock: RunningServer, tmp_path: Path) -> None:
    url = mock.url.replace("http://", "http://user:pw-secret@") + "/v1"
    # Both: every request failed with aiohttp's ValueError (a 500); now a ConfigError at load.
    with pytest.raises(ConfigError, match=r"providers\.main: base_url carries credentials") as err:
        Gateway.from_config(config(tmp_path, url, api_key="sk-upstream"))
    assert "pw-secret" not in str(err.value)
    with pytest.raises(ConfigError, match="base_url carries credentials"):
        Gateway.from_config(config(tmp_path, url, headers={"Authorization": "Bearer x"}))
    # The URL's credentials alone are basic auth, which works.
    with Gateway.from_config(config(tmp_path, url)) as gw:
        reply = gw.openai_client(max_retries=0).chat.completions.create(model="cheap", messages=MSG)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "7"


async def test_chat_takes_json_data_only(mock: RunningServer, tmp_path: Path) -> None:
    async with Gateway.from_config(config(tmp_path, mock.url + "/v1")) as gw:
        before = upstream_calls(mock, "cheap")
        for bad in ({"user": object()}, {"metadata": {1: "x"}}):
            with pytest.raises(InvalidRequestError, match="must be JSON data"):
                await gw.chat(model="cheap", messages=MSG, **bad)
        # A field with its own check still names the field.
        with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content"):
            await gw.chat(model="cheap", messages=[{"role": "user", "content": b"bytes"}])
        with pytest.raises(InvalidRequestError, match="async_openai_client"):
            await gw.chat(model="cheap", messages=MSG, stream=True)
        assert upstream_calls(mock, "cheap") == before  # nothing was sent
        # A tuple is a JSON array, as it would be over HTTP.
        reply = await gw.chat(model="cheap", messages=tuple(MSG), stop=("a", "b"))
        assert reply["choices"][0]["message"]["content"] == "7"
    assert ledger_rows(tmp_path) == [("cheap", "ok")]  # no row for a request never started


async def test_aclose_lets_running_requests_finish_and_records_them(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path, mock.url + "/v1"))
    before = upstream_calls(mock, "slow")
    tasks = [asyncio.create_task(gw.chat(model="slow", messages=MSG)) for _ in range(3)]
    await asyncio.sleep(0.3)  # all three are waiting for the upstream
    await gw.aclose()
    replies = await asyncio.gather(*tasks)
    assert [r["choices"][0]["message"]["content"] for r in replies] == ["late"] * 3
    # Closed under them, they were retried on a new connection after the close and their rows
    # reached a closed ledger: paid and unrecorded.
    assert upstream_calls(mock, "slow") - before == 3
    assert ledger_rows(tmp_path) == [("slow", "ok")] * 3


def test_close_lets_sync_client_calls_of_other_threads_finish(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path, mock.url + "/v1"))
    client = gw.openai_client(max_retries=0)
    answers: list[str] = []

    def call() -> None:
        reply = client.chat.completions.create(model="slow", messages=MSG)  # type: ignore[arg-type]
        answers.append(reply.choices[0].message.content or "")

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gw.close()
    for t in threads:
        t.join(10)
    assert answers == ["late"] * 3
    assert ledger_rows(tmp_path) == [("slow", "ok")] * 3


DROPPED = """
import asyncio, gc, sys
from thrifty import Gateway
cfg = {{"providers": {{"main": {{"base_url": "{url}/v1", "api_key": "k"}}}},
       "models": {{"cheap": {{"provider": "main", "price": {{"input": 1, "output": 2}}}}}},
       "ledger": {{"path": sys.argv[1]}}}}
MSG = [{{"role": "user", "content": "hi"}}]

async def notebook():
    for _ in range(3):  # the cell that builds the gateway, run again: the last one is dropped
        gw = Gateway.from_config(cfg)
        await gw.chat(model="cheap", messages=MSG)
        gc.collect()
        await asyncio.sleep(0.05)

asyncio.run(notebook())
for _ in range(3):  # a helper that builds a gateway, uses the sync client and returns
    gw = Gateway.from_config(cfg)
    gw.openai_client().chat.completions.create(model="cheap", messages=MSG)
    del gw
    gc.collect()
print("done")
"""


def test_a_gateway_dropped_without_close_reports_no_unclosed_session(mock: RunningServer, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    proc = subprocess.run([sys.executable, "-c", DROPPED.format(url=mock.url), str(db)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    # Its session was collected with the gateway, nothing having closed it.
    assert "Unclosed" not in proc.stderr, proc.stderr
    assert ledger_rows(tmp_path) == [("cheap", "ok")] * 6  # every row written at exit


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A config saved as UTF-16 by an editor raised UnicodeDecodeError out of from_config (the
    CLI caught it; a library user got the decoder's traceback)."""
    from thrifty.errors import ConfigError

    odd = tmp_path / "utf16.yaml"
    odd.write_text("models: {}\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        Gateway.from_config(str(odd))
