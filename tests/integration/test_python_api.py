"""The Python API: Gateway.from_config, chat(), and in-process OpenAI clients (no server, no port)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MSG = [{"role": "user", "content": "Name a prime number."}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"cheap": {"answer": "7"}}}))) as server:
        yield server


def write_config(tmp_path: Path, upstream: str) -> Path:
    f = tmp_path / "thrifty.yaml"
    f.write_text(
        f"""
providers:
  local:
    base_url: {upstream}
    api_key: ${{THRIFTY_TEST_UPSTREAM_KEY:-sk-test}}
models:
  cheap: {{provider: local, price: {{input: 0.1, output: 0.2}}}}
  premium: {{provider: local, price: {{input: 2.5, output: 10}}}}
ledger: {{path: ledger.db}}
"""
    )
    return f


async def test_chat_from_yaml_path(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(write_config(tmp_path, mock.url + "/v1"))
    reply = await gw.chat(model="cheap", messages=MSG)
    assert reply["choices"][0]["message"]["content"] == "7"
    await gw.aclose()
    # relative ledger path lands beside the config file
    assert (tmp_path / "ledger.db").exists()


async def test_async_openai_client_in_process(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(write_config(tmp_path, mock.url + "/v1"))
    client = gw.async_openai_client()
    reply = await client.chat.completions.create(model="cheap", messages=MSG)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "7"
    stream = await client.chat.completions.create(model="cheap", messages=MSG, stream=True)  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "7"
    await gw.aclose()


def test_sync_openai_client_in_process(mock: RunningServer, tmp_path: Path) -> None:
    gw = Gateway.from_config(write_config(tmp_path, mock.url + "/v1"))
    try:
        client = gw.openai_client()
        reply = client.chat.completions.create(model="premium", messages=MSG)  # type: ignore[arg-type]
        # The mock's answer for this model, whole (not just "something came back").
        assert (reply.choices[0].message.content or "").startswith("[premium] answer to: Name a prime number.")
        gw.flush()
        from thrifty.ledger.store import SQLiteStore

        rows = SQLiteStore(str(tmp_path / "ledger.db")).query("SELECT served_model, status FROM requests")
        assert rows == [("premium", "ok")]
    finally:
        gw.close()  # else its upstream session is left open ("Unclosed client session" at exit)
