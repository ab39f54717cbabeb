"""Compression over real HTTP: the gateway under uvicorn, the mock upstream as the provider."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from fixtures.shopbot import FILLER, HEAD, RULE, upstream_bodies, write_config
from thrifty.cli.main import build_app
from thrifty.gateway import Gateway
from thrifty.mock.server import RunningServer, run_in_thread

PROMPT = f"{HEAD}\n\n{FILLER}\n\n{FILLER}\n\n{RULE}"  # the repeated paragraph goes by compaction


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def test_system_prompt_compressed_once_stable_priced_and_managed(shopbot_upstream: RunningServer, tmp_path: Path) -> None:
    mock = shopbot_upstream
    httpx.post(mock.url + "/mock/reset")
    config = write_config(tmp_path, mock)
    gw = Gateway.from_config(config)
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        msgs = [{"role": "system", "content": PROMPT}, {"role": "user", "content": "Any discount?"}]
        raws = [client.chat.completions.with_raw_response.create(model="big", messages=msgs) for _ in range(3)]
        assert all(int(r.headers["x-thrifty-compressed-tokens"]) > 1000 for r in raws)
        compress_calls = [b for b in upstream_bodies(mock, "cheap")]
        assert len(compress_calls) == 1
        assert FILLER.count("number 5 ") == 1 and compress_calls[0]["messages"][1]["content"].count(FILLER) == 1
        sent = [b["messages"][0]["content"] for b in upstream_bodies(mock, "big")]
        assert sent == [f"{HEAD} We sell products 0-99 in many colours, sizes and finishes. {RULE}"] * 3  # same bytes every time: provider prompt caching keeps working
        gw.flush()
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            rows = db.execute("SELECT compression_saved_tokens, compression_saved_usd FROM requests").fetchall()
            purposes = db.execute("SELECT purpose, COUNT(*) FROM attempts GROUP BY purpose").fetchall()
        assert len(rows) == 3 and all(t > 1000 and usd == pytest.approx(t * 2.5 / 1e6) for t, usd in rows)
        assert dict(purposes) == {"answer": 3, "compress": 1}

        code, out = cli("report", "--config", str(config), "--format", "json")
        (total,) = json.loads(out)
        assert code == 0 and total["compression_saved_tokens"] == sum(t for t, _ in rows)
        assert total["compression_saved_usd"] == pytest.approx(sum(u for _, u in rows))

        code, out = cli("compress", "show", "--config", str(config))
        assert code == 0 and "v1 in use" in out, out
        prefix = out.split()[0]
        code, out = cli("compress", "show", prefix, "--config", str(config))
        assert code == 0 and "---- v1 validated" in out and RULE in out
        code, out = cli("compress", "reject", prefix, "--config", str(config))
        assert code == 0 and "v1: rejected" in out
        client.chat.completions.create(model="big", messages=msgs)
        assert upstream_bodies(mock, "big")[-1]["messages"][0]["content"] != f"{HEAD} {RULE}"  # original again

        own = tmp_path / "mine.txt"
        own.write_text(f"{HEAD} Sell products 0-99. {RULE}")
        code, out = cli("compress", "approve", prefix, "--text-file", str(own), "--config", str(config))
        assert code == 0 and "v2: approved" in out
        client.chat.completions.create(model="big", messages=msgs)
        assert upstream_bodies(mock, "big")[-1]["messages"][0]["content"] == own.read_text()

        code, out = cli("compress", "purge", prefix, "--config", str(config))
        assert code == 0 and "purged" in out
        client.chat.completions.create(model="big", messages=msgs)
        assert len(upstream_bodies(mock, "cheap")) == 2  # compressed again after a purge
        bad = CliRunner().invoke(build_app(), ["compress", "approve", "ffff", "--config", str(config)])
        assert bad.exit_code != 0 and "no stored prompt" in str(bad.exception)  # main() prints it as one line
    gw.close()


def test_history_trimmed_with_a_cached_summary(shopbot_upstream: RunningServer, tmp_path: Path) -> None:
    mock = shopbot_upstream
    httpx.post(mock.url + "/mock/reset")
    gw = Gateway.from_config(write_config(tmp_path, mock))
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        msgs: list[Any] = [{"role": "system", "content": "You are terse."}]
        for i in range(8):
            msgs += [{"role": "user", "content": f"Tell me fact {i} about widgets, please, in detail."},
                     {"role": "assistant", "content": f"Fact {i}: widgets are useful in many situations."}]
        msgs.append({"role": "user", "content": "And the last one?"})
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(model="chatty", messages=msgs)
            assert int(raw.headers["x-thrifty-compressed-tokens"]) > 0
        sent = upstream_bodies(mock, "big")
        assert len(sent) == 2 and sent[0]["messages"] == sent[1]["messages"]
        got = sent[0]["messages"]
        assert got[0] == msgs[0] and got[-1] == msgs[-1] and len(got) < len(msgs)
        assert got[1]["role"] == "system" and got[1]["content"].startswith("Summary of the earlier conversation")
        summaries = [b for b in upstream_bodies(mock, "cheap") if "Summarise" in b["messages"][0]["content"]]
        assert len(summaries) == 1  # cached per conversation prefix
    gw.close()
