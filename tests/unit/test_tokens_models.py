"""Offline counts with each model's own tokenizer: o200k_base for the gpt-4o family, without network."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from thrifty import tokens
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.pipeline.accounting import observed_usage, priced_usage
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

# Hindi and Japanese: o200k's larger vocabulary needs far fewer tokens than cl100k for these.
MULTILINGUAL = "नमस्ते, आप कैसे हैं? 今日はとても良い天気ですね。散歩に行きましょう。"


@pytest.mark.parametrize(("model", "name"), [
    (None, "cl100k_base"),
    ("gpt-4o", "o200k_base"),
    ("gpt-4o-mini-2024-07-18", "o200k_base"),
    ("openai/gpt-4o", "o200k_base"),
    ("gpt-4.1-mini", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3-mini", "o200k_base"),
    ("o4-mini", "o200k_base"),
    ("gpt-realtime", "o200k_base"),
    ("gpt-audio-mini", "o200k_base"),
    ("ft:gpt-4o-mini-2024-07-18:acme::abc", "o200k_base"),
    ("gpt-oss-120b", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("deepseek-v4-flash", "cl100k_base"),
    ("qwen3-8b", "cl100k_base"),
])
def test_encoding_name_per_model(model: str | None, name: str) -> None:
    assert tokens.encoding_name(model) == name


def test_o200k_ids_are_openais() -> None:
    """Known o200k_base ids (OpenAI's tokenizer page) and special-token text counted as text."""
    assert tokens.encode("hello world", model="gpt-4o") == [24912, 2375]
    assert tokens.count_text("<|endoftext|>", model="gpt-4o") > 1


def test_o200k_counts_and_known_ids() -> None:
    assert tokens.encode("hello world", model="gpt-4o") == [24912, 2375]
    assert tokens.encode("hello world") == [15339, 1917]  # cl100k, as before
    o200k, cl100k = tokens.count_text(MULTILINGUAL, model="gpt-4o"), tokens.count_text(MULTILINGUAL)
    assert o200k < cl100k * 0.8
    assert tokens.count_text(MULTILINGUAL, model="qwen3-8b") == cl100k


def test_messages_and_truncation_use_the_model_encoding() -> None:
    messages = [{"role": "user", "content": MULTILINGUAL}]
    assert tokens.count_messages(messages, model="gpt-4o") == 3 + tokens.count_text(MULTILINGUAL, model="gpt-4o") + 3
    assert tokens.count_message(messages[0], model="gpt-4o") < tokens.count_message(messages[0])
    cut = tokens.truncate_text(MULTILINGUAL, 10, model="gpt-4o")
    assert cut != MULTILINGUAL and tokens.count_text(cut, model="gpt-4o") <= 10


@pytest.fixture
def fresh_o200k() -> Iterator[None]:
    tokens._quick.cache_clear()
    yield
    tokens._quick.cache_clear()


def test_unloadable_o200k_falls_back_to_cl100k(fresh_o200k: None, caplog: pytest.LogCaptureFixture) -> None:
    with mock.patch.dict(sys.modules, {"quicktok": None}), caplog.at_level(logging.WARNING, "thrifty.tokens"):
        assert tokens.count_text(MULTILINGUAL, model="gpt-4o") == tokens.count_text(MULTILINGUAL)
        assert tokens.truncate_text(MULTILINGUAL, 5, model="gpt-4o") == tokens.truncate_text(MULTILINGUAL, 5)
        assert tokens.encode("hello world", model="gpt-4o") == [15339, 1917]  # tiktoken's cl100k ids
    assert "tokenizer unavailable" in caplog.text


def test_quicktok_cl100k_ids_are_tiktokens() -> None:
    """The fast path gives exactly the fallback's ids, special-token text and odd whitespace included."""
    texts = [MULTILINGUAL, "def f(x):\n\treturn x  # <|endoftext|> <|fim_prefix|>\r\n", "  ", "🙂" * 7, "a" * 3000,
             Path(tokens.__file__).read_text(encoding="utf-8")]
    reference = tokens.encoding()
    for text in texts:
        ids = reference.encode(text, disallowed_special=())
        assert tokens.encode(text) == ids
        assert tokens.count_text(text) == len(ids)
    assert tokens.truncate_text(MULTILINGUAL, 7) == reference.decode(reference.encode(MULTILINGUAL)[:7])


def test_missing_usage_is_counted_with_the_answering_models_tokenizer() -> None:
    request = ChatRequest(model="auto", messages=[{"role": "user", "content": MULTILINGUAL}])
    response = {"model": "gpt-4o-2024-08-06", "choices": [{"message": {"content": MULTILINGUAL}}]}
    usage, estimated = observed_usage(None, request, response)
    assert estimated
    assert usage.prompt_tokens == tokens.count_messages(request.messages, model="gpt-4o")
    assert usage.completion_tokens == tokens.count_text(MULTILINGUAL, model="gpt-4o")
    # An explicit upstream model wins over what the response names (a stream's has no model).
    usage2, _ = priced_usage(None, request, {"choices": response["choices"]}, None, model="gpt-4o")
    assert usage2.prompt_tokens == usage.prompt_tokens
    usage3, _ = observed_usage(None, request, {"choices": response["choices"]})
    assert usage3.prompt_tokens == tokens.count_messages(request.messages)  # "auto": cl100k


async def test_gateway_counts_unreported_usage_with_o200k(tmp_path: Path) -> None:
    def fn(body: dict[str, Any]) -> dict[str, Any]:
        reply = chat_response(body["model"], MULTILINGUAL)
        del reply["usage"]
        return reply

    config = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {"four-o": {"provider": "p", "upstream_model": "gpt-4o", "price": {"input": 2.5, "output": 10}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }
    gw = Gateway.from_config(config, providers={"p": FunctionProvider(fn)})
    messages = [{"role": "user", "content": MULTILINGUAL}]
    try:
        await gw.chat(model="four-o", messages=messages)
        gw.flush()
        rows = SQLiteStore(str(tmp_path / "ledger.db")).query(
            "SELECT prompt_tokens, completion_tokens, cost_source FROM attempts")
    finally:
        await gw.aclose()
    prompt = tokens.count_messages(messages, model="gpt-4o")
    completion = tokens.count_text(MULTILINGUAL, model="gpt-4o")
    assert rows == [(prompt, completion, "estimated")]
    assert prompt < tokens.count_messages(messages)
