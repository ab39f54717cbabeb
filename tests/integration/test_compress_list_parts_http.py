"""A system prompt sent as content parts (with ``cache_control`` on the long static part and a
short per-request part after it), through the real ``openai`` client, the gateway under
uvicorn and the mock upstream: the long part is compressed once and sent in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai

from fixtures.shopbot import FILLER, HEAD, RULE, upstream_bodies, write_config
from thrifty.gateway import Gateway
from thrifty.mock.server import RunningServer, run_in_thread

PROMPT = f"{HEAD}\n\n{FILLER}\n\n{RULE}"
COMPRESSED = f"{HEAD} We sell products 0-99 in many colours, sizes and finishes. {RULE}"
CACHE = {"type": "ephemeral"}


def test_text_parts_compressed_once_in_place_with_cache_control(shopbot_upstream: RunningServer, tmp_path: Path) -> None:
    mock = shopbot_upstream
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
