"""Final-review findings (session 17): a 400 merely quoting a parameter taken for its refusal, a
client schema with ``\\p{L}`` read as an invalid schema, a whole answer from a server that ignored
``stream`` given a made-up "stop" (and cached), and whole answers ending in ``end_turn``/``eos``
never cached.

The stream tests use real servers on 127.0.0.1: the gateway (driven by the real ``openai``
client) and a small scripted upstream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fixtures.served import serving
from thrifty.batching.packing import format_refused
from thrifty.errors import UpstreamStatusError
from thrifty.gateway import Gateway
from thrifty.mock.server import run_in_thread
from thrifty.providers.openai_compat import refuses_stream_options
from thrifty.providers.refusals import refuses_param
from thrifty.scoring.jsonschema import schema_problems

# vLLM's validation 400 (pydantic through FastAPI): the whole request body quoted, whatever failed.
VLLM_400 = ("1 validation error for ChatCompletionRequest\n  Value error, `max_tokens` must be at least 1 "
            "[type=value_error, input_value={'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}], "
            "'max_tokens': 0, 'logprobs': True, 'top_logprobs': 5, 'stream_options': {'include_usage': True}, "
            "'response_format': {'type': 'json_schema', 'json_schema': {'name': 'x'}}}, input_type=dict]")


# ---------------------------------------------------------------- 1. a mention is no refusal
def test_a_400_quoting_the_body_refuses_nothing() -> None:
    """It taught "refuses logprobs" and downgraded a pack's response_format for the process."""
    assert not refuses_param(400, None, VLLM_400, ("logprobs", "top_logprobs"))
    assert not format_refused(400, None, VLLM_400)
    assert not refuses_stream_options(UpstreamStatusError(VLLM_400, status=400))


@pytest.mark.parametrize(("message", "names"), [
    ("Unrecognized request argument supplied: logprobs", ("logprobs",)),
    ("logprobs is not supported with this model", ("logprobs",)),
    ("Model o1-mini does not support top_logprobs", ("top_logprobs",)),
    ("body.stream_options: Extra inputs are not permitted", ("stream_options",)),
    ("Unknown parameter: 'stream_options'.", ("stream_options",)),
    ("This response_format type is unavailable now", ("response_format",)),
])
def test_a_refusal_beside_the_name_still_counts(message: str, names: tuple[str, ...]) -> None:
    assert refuses_param(400, None, message, names)


# ---------------------------------------------------------------- 2. patterns Python's re does not read
def test_a_unicode_property_pattern_is_a_valid_schema() -> None:
    """``check_schema`` validated ``pattern`` with ``re``: every answer was "invalid schema"."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": r"^\p{L}+$"}},
              "required": ["name"]}
    assert schema_problems({"name": "Zoë"}, schema) == []
    problems = schema_problems({"name": "42"}, schema)
    assert problems and not any("invalid schema" in p for p in problems)


# ---------------------------------------------------------------- 4, 5. finish reasons of streamed answers
SEEN: dict[str, int] = {}  # model -> requests the upstream received
ASK: Any = [{"role": "user", "content": "Tell me about the weather in Paris today please"}]


async def _chat(request: Request) -> Response:
    """A server that ignores ``stream`` and answers one JSON object; the model's name says which
    finish_reason it gives (``none``: the field left out)."""
    body = await request.json()
    model = body["model"]
    SEEN[model] = SEEN.get(model, 0) + 1
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "Sunny today."}}
    if model != "none":
        choice["finish_reason"] = model
    return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                         "choices": [choice],
                         "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, openai.OpenAI]]:
    tmp: Path = tmp_path_factory.mktemp("final_review_s17")
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
    with run_in_thread(app) as upstream, serving({
        "providers": {"p": {"base_url": upstream.url + "/v1", "api_key": "sk-test-0000", "max_retries": 0}},
        "models": {name: {"provider": "p", "price": {"input": 1.0, "output": 2.0}}
                   for name in ("none", "end_turn", "eos")},
        "cache": {"path": str(tmp / "cache.db")},
        "ledger": {"path": str(tmp / "ledger.db")},
    }) as (gw, client):
        yield gw, client
        gw.close()


def _stream(client: openai.OpenAI, model: str) -> tuple[str, str | None]:
    text, finish = "", None
    for chunk in client.chat.completions.create(model=model, messages=ASK, stream=True, temperature=0):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish


def _asked_twice(client: openai.OpenAI, model: str) -> int:
    """Upstream requests for two identical streams (the second after the first could be stored)."""
    assert _stream(client, model)[0] == "Sunny today."
    time.sleep(0.3)  # the store may finish just after the stream
    assert _stream(client, model)[0] == "Sunny today."
    return SEEN[model]


def test_no_finish_reason_is_not_made_a_stop(served: tuple[Gateway, openai.OpenAI]) -> None:
    """A whole answer without finish_reason streamed with "stop" (and so was cached, where the
    same answer unstreamed was not): it keeps none, as the provider gave it."""
    _, client = served
    assert _stream(client, "none") == ("Sunny today.", None)
    assert _asked_twice(client, "none") == 3


@pytest.mark.parametrize("finish", ["end_turn", "eos"])
def test_whole_answers_of_any_provider_are_cached(served: tuple[Gateway, openai.OpenAI], finish: str) -> None:
    """Only "stop" and "length" were stored: a provider ending its whole answers with "end_turn"
    or "eos" (types.WHOLE_FINISH_REASONS) was asked again every time."""
    _, client = served
    assert _asked_twice(client, finish) == 1
