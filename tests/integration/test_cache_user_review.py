"""The cache as an application and an operator meet it: real HTTP on loopback, the openai client,
the mock upstream, the exact and semantic caches on SQLite with the lexical embedder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fixtures.cli_run import run_main
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

QUESTION = "What is the capital of France?"
PARAPHRASE = "what is the capital of france"  # the same words: similarity 1.0 with the lexical embedder


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    models = {"blank": {"answer": ""}, "thinker": {"reasoning_tokens": 300}}
    with run_in_thread(create_mock(MockConfig.from_dict({"models": models}))) as server:
        yield server


def config(mock: RunningServer, tmp: Path, ttl_s: float = 86_400.0) -> dict[str, Any]:
    return {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-up-123456"}},
        "models": {name: {"provider": "mock", "price": {"input": 1, "output": 2}}
                   for name in ("cheap", "blank", "thinker")},
        "ledger": {"path": str(tmp / "ledger.db")},
        "cache": {"path": str(tmp / "cache.db"), "ttl_s": ttl_s,
                  "semantic": {"enabled": True, "embedder": "lexical", "refresh_s": 0.05}},
    }


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-aaaaaaaa", max_retries=0, timeout=10)


def ask(c: openai.OpenAI, text: str, model: str = "cheap", **kw: Any) -> tuple[str, str | None]:
    """The cache status and match kind of one temperature-0 question."""
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0, **kw)
    return raw.headers["x-thrifty-cache"], raw.headers.get("x-thrifty-cache-match")


def upstream_calls(mock: RunningServer, model: str) -> int:
    data = httpx.get(mock.url + "/mock/requests?limit=500").json()["data"]
    return sum(1 for r in data if isinstance(r["body"], dict) and r["body"].get("model") == model)


def test_question_asked_again_after_its_ttl_is_found_semantically_again(mock: RunningServer,
                                                                         tmp_path: Path) -> None:
    """An entry stored again under the same key (the question asked after its TTL) kept the first
    store's expiry in the semantic index, so paraphrases of it never hit again in that process."""
    gw = Gateway.from_config(config(mock, tmp_path, ttl_s=1.0))
    with run_in_thread(gw.app()) as server:
        c = client(server)
        assert ask(c, QUESTION) == ("miss", None)
        assert ask(c, PARAPHRASE) == ("hit", "semantic")
        time.sleep(1.2)
        assert ask(c, QUESTION) == ("miss", None)  # expired: answered and stored again
        assert ask(c, PARAPHRASE) == ("hit", "semantic")
    gw.close()


def test_an_instance_sees_an_entry_another_stored_again(mock: RunningServer, tmp_path: Path) -> None:
    """Two gateways on one cache file: the one that did not store the entry again learns its new
    expiry from the shared vector log."""
    cfg = config(mock, tmp_path, ttl_s=1.0)
    first, second = Gateway.from_config(cfg), Gateway.from_config(cfg)
    with run_in_thread(first.app()) as a, run_in_thread(second.app()) as b:
        ca, cb = client(a), client(b)
        assert ask(ca, QUESTION) == ("miss", None)
        assert ask(ca, PARAPHRASE) == ("hit", "semantic")
        time.sleep(1.2)
        assert ask(cb, QUESTION) == ("miss", None)  # stored again by the second gateway
        time.sleep(0.1)  # past refresh_s: the first one re-reads the vector log
        assert ask(ca, PARAPHRASE) == ("hit", "semantic")
    first.close()
    second.close()


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_answer_is_not_stored(mock: RunningServer, tmp_path: Path, stream: bool) -> None:
    """An empty answer (a provider glitch; a reasoning model that spent max_tokens thinking) was
    stored and served for the whole TTL, and to every paraphrase, instead of asking again."""
    gw = Gateway.from_config(config(mock, tmp_path))
    with run_in_thread(gw.app()) as server:
        c = client(server)
        cases: list[tuple[str, dict[str, Any]]] = [("blank", {}), ("thinker", {"max_tokens": 50})]
        for model, extra in cases:
            text = f"Say something, {model} {stream}."
            before = upstream_calls(mock, model)
            for _ in range(2):
                if stream:
                    with c.chat.completions.with_streaming_response.create(
                            model=model, messages=[{"role": "user", "content": text}], temperature=0,
                            stream=True, **extra) as resp:
                        assert resp.headers["x-thrifty-cache"] == "miss"
                        assert [line for line in resp.iter_lines() if line][-1] == "data: [DONE]"
                else:
                    reply = c.chat.completions.with_raw_response.create(
                        model=model, messages=[{"role": "user", "content": text}], temperature=0, **extra)
                    assert reply.headers["x-thrifty-cache"] == "miss"
                    assert reply.parse().choices[0].message.content == ""
            assert upstream_calls(mock, model) - before == 2
        # A real answer is still stored and served.
        assert ask(c, "Say something real.") == ("miss", None)
        assert ask(c, "Say something real.") == ("hit", "exact")
    gw.close()


SENTIMENT = ("Please classify the sentiment of the following customer review as positive, negative or neutral. "
             "Answer with one word only and do not explain your reasoning. Review\n\n")
SENTIMENT_ONE_LINE = ("Classify the sentiment of this customer review as positive, negative or neutral, answering "
                      "with one word only and taking sarcasm into account: ")


@pytest.mark.parametrize("template", [SENTIMENT, SENTIMENT_ONE_LINE])
def test_a_prompt_template_filled_with_other_data_is_not_a_semantic_hit(mock: RunningServer, tmp_path: Path,
                                                                       template: str) -> None:
    """A long instruction shared word for word made two reviews nearly identical (similarity
    0.97-0.98 with the lexical embedder), and the rule verifier served the sentiment of one for the
    other. The same review reworded in the template's instruction is still a paraphrase."""
    gw = Gateway.from_config(config(mock, tmp_path))
    with run_in_thread(gw.app()) as server:
        c = client(server)
        assert ask(c, template + "The delivery was quick and the packaging was nice") == ("miss", None)
        assert ask(c, template + "The delivery was quick and the packaging was damaged") == ("miss", None)
        assert ask(c, template + "The delivery was quick and the packaging was nice") == ("hit", "exact")
        assert ask(c, QUESTION) == ("miss", None)
        assert ask(c, PARAPHRASE) == ("hit", "semantic")  # plain questions are still matched
    gw.close()


def test_expired_phrasings_do_not_hide_the_live_one(mock: RunningServer, tmp_path: Path) -> None:
    """A question asked every day is stored each day in the words it came in first that day. The
    nearest top_k vectors of the scope were yesterday's expired copies, which the lookup then
    dropped, so the live entry behind them was never a semantic hit while the process ran."""
    cfg = config(mock, tmp_path, ttl_s=0.5)
    cfg["cache"]["semantic"]["top_k"] = 2
    gw = Gateway.from_config(cfg)
    with run_in_thread(gw.app()) as server:
        c = client(server)
        for day, spaces in enumerate((" ", "  ", "   ")):  # the same words: similarity 1.0 to each other
            if day:
                time.sleep(0.6)  # yesterday's entry has expired
            assert ask(c, f"What is{spaces}the capital of France?") == ("miss", None)
        assert ask(c, PARAPHRASE) == ("hit", "semantic")
    gw.close()


def test_paraphrases_hit_again_after_cache_clear(mock: RunningServer, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """After `thrifty cache clear`, the cleared question's vector stayed in the running gateway's
    index until its TTL and kept winning the lookup, so every paraphrase of it missed, even the
    ones stored since."""
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(config(mock, tmp_path)))
    gw = Gateway.from_config(path)
    with run_in_thread(gw.app()) as server:
        c = client(server)
        assert ask(c, QUESTION) == ("miss", None)
        code, out, err = run_main(capsys, "cache", "clear", "--config", str(path), "--all")
        assert (code, out.strip()) == (0, "deleted 1 entries"), err
        assert ask(c, "what is the capital of France?") == ("miss", None)  # stored anew
        assert ask(c, PARAPHRASE) == ("hit", "semantic")
        assert ask(c, "WHAT is the capital of France?") == ("hit", "semantic")
    gw.close()


LONG = ("I'm a software engineer with several years of experience in backend development, and I'm considering "
        "moving into machine learning; what courses, books and projects would you recommend to make the switch "
        "within a year while working full time and raising a family?")


def test_a_long_question_with_a_word_changed_is_not_served_by_the_rule_verifier(mock: RunningServer,
                                                                                 tmp_path: Path) -> None:
    """Without a verifier file the semantic cache served on similarity alone, and one changed word
    in a long question barely moves it: "within a month" got the answer for "within a year"
    (0.977), "frontend" the one for "backend" (0.967)."""
    gw = Gateway.from_config(config(mock, tmp_path))
    with run_in_thread(gw.app()) as server:
        c = client(server)
        assert ask(c, LONG) == ("miss", None)
        assert ask(c, LONG.replace("within a year", "within a month")) == ("miss", None)
        assert ask(c, LONG.replace("backend", "frontend")) == ("miss", None)
        assert ask(c, LONG.lower()) == ("hit", "semantic")  # the same words are still a paraphrase
        assert ask(c, LONG.replace("several years", "several good years")) == ("hit", "semantic")  # one added
    gw.close()
