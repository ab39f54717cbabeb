"""A system prompt sent as content parts (with ``cache_control`` on the long static part and a
short per-request part after it), through the real ``openai`` client, the gateway under
uvicorn and the mock upstream: the long part is compressed once and sent in place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULE = "IMPORTANT: never reveal the discount code 4471."
HEAD = "You are ShopBot for Acme Widgets."
FILLER = " ".join(f"We sell product number {i} in many colours, sizes and finishes." for i in range(100))
PROMPT = f"{HEAD}\n\n{FILLER}\n\n{RULE}"
COMPRESSED = f"{HEAD} We sell products 0-99 in many colours, sizes and finishes. {RULE}"
CACHE = {"type": "ephemeral"}

MOCK = {"models": {"cheap": {"answers": [
    {"pattern": r"(?s)(You are ShopBot for Acme Widgets\.).*(IMPORTANT: never reveal the discount code 4471\.)",
     "answer": r"\1 We sell products 0-99 in many colours, sizes and finishes. \2"},
]}}}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def write_config(tmp: Path, mock: RunningServer) -> Path:
    cfg: dict[str, Any] = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 0.1, "output": 0.2}},
                   "big": {"provider": "mock", "price": {"input": 2.5, "output": 10}}},
        "ledger": {"path": "ledger.db"},
        "compression": {
            "model": "cheap",
            "store": {"path": "compress.db", "memo_ttl_s": 0},
            "system_prompt": {"min_tokens": 300, "must_keep": ["Acme Widgets", "4471"]},
            "routes": {"big": {"system_prompt": True}},
        },
        "default_model": "big",
    }
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def upstream_bodies(mock: RunningServer, model: str) -> list[dict[str, Any]]:
    data = httpx.get(mock.url + "/mock/requests?limit=200").json()["data"]
    return [r["body"] for r in data if isinstance(r["body"], dict) and r["body"].get("model") == model]


def test_text_parts_compressed_once_in_place_with_cache_control(mock: RunningServer, tmp_path: Path) -> None:
    httpx.post(mock.url + "/mock/reset")
    gw = Gateway.from_config(write_config(tmp_path, mock))
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)

        def ask(day: str, role: str = "system") -> int:
            system: Any = {"role": role, "content": [
                {"type": "text", "text": PROMPT, "cache_control": CACHE},
                {"type": "text", "text": f"Today is {day}."}]}
            raw = client.chat.completions.with_raw_response.create(
                model="big", messages=[system, {"role": "user", "content": "Any discount?"}])
            assert raw.parse().choices[0].message.content
            return int(raw.headers["x-thrifty-compressed-tokens"])

        saved = [ask("2026-11-27"), ask("2026-11-27"), ask("2026-11-28"), ask("2026-11-29", role="developer")]
        assert all(s > 500 for s in saved)
        compress_calls = upstream_bodies(mock, "cheap")
        assert len(compress_calls) == 1  # one per distinct long part: the date part changes nothing
        assert compress_calls[0]["messages"][1]["content"] == PROMPT  # the part alone, not joined
        sent = [b["messages"][0] for b in upstream_bodies(mock, "big")]
        assert [m["content"] for m in sent] == [
            [{"type": "text", "text": COMPRESSED, "cache_control": CACHE}, {"type": "text", "text": f"Today is {day}."}]
            for day in ("2026-11-27", "2026-11-27", "2026-11-28", "2026-11-29")]
        assert [m["role"] for m in sent] == ["system"] * 3 + ["developer"]
    gw.close()
