"""A semantic lookup searches the index once and checks each candidate's hard vetoes once.

After `thrifty cache clear` a running gateway keeps the cleared questions' vectors in memory until
their TTL. A lookup whose best verified candidates were all cleared searched the whole index and
ran the verifier again for each one (up to `top_k` times); it now walks the verified candidates
of its one search, best first. The hard vetoes are the lookup's: the rule verifier checked them a
second time on every candidate the lookup had already let through, and a verifier with token
features had the lookup check them twice. Searches and veto checks are counted through wrappers
on the real functions, over real HTTP (uvicorn on loopback, the openai client, the mock upstream).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml

from fixtures.cache_verifiers import WordTokens, random_verifier
from fixtures.cli_run import run_main
from thrifty.cache import vetoes as vetoes_module
from thrifty.cache.alignment import ALIGN_NAMES
from thrifty.cache.backends.base import EntryMeta
from thrifty.cache.backends.memory import MemoryBackend
from thrifty.cache.index import VectorIndex
from thrifty.cache.semantic import SemanticCache
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as server:
        yield server


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many index searches and veto checks (``vetoes.vetoes``, which ``vetoed`` calls) ran."""
    seen = {"searches": 0, "vetoes": 0}
    search, vetoes = VectorIndex.search, vetoes_module.vetoes

    def counted_search(self: VectorIndex, *args: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        seen["searches"] += 1
        return search(self, *args, **kw)

    def counted_vetoes(a: str, b: str) -> list[str]:
        seen["vetoes"] += 1
        return vetoes(a, b)

    monkeypatch.setattr(VectorIndex, "search", counted_search)
    monkeypatch.setattr(vetoes_module, "vetoes", counted_vetoes)
    return seen


def write_config(mock: RunningServer, tmp: Path) -> Path:
    cfg = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-up-123456"}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "cache": {"path": str(tmp / "cache.db"),
                  "semantic": {"enabled": True, "embedder": "lexical", "top_k": 10, "refresh_s": 0.05}},
    }
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def ask(c: openai.OpenAI, text: str, **headers: str) -> tuple[str, str | None]:
    """The cache status and match kind of one temperature-0 question."""
    raw = c.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": text}], temperature=0, extra_headers=headers)
    return raw.headers["x-thrifty-cache"], raw.headers.get("x-thrifty-cache-match")


def upstream_calls(mock: RunningServer) -> int:
    data = httpx.get(mock.url + "/mock/requests?limit=500").json()["data"]
    return sum(1 for r in data if isinstance(r["body"], dict) and r["body"].get("model") == "cheap")


def test_a_lookup_after_cache_clear_searches_once(mock: RunningServer, tmp_path: Path, counts: dict[str, int],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Five wordings of one question stored, then cleared: each is a verified candidate of every
    later paraphrase (similarity 1.0) whose entry is gone. One search per lookup (6 before)."""
    path = write_config(mock, tmp_path)
    gw = Gateway.from_config(path)
    with run_in_thread(gw.app()) as server:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-once", max_retries=0, timeout=10)
        assert ask(c, "How do I bake sourdough bread?") == ("miss", None)  # the scope's index is in memory
        for spaces in range(1, 6):  # five keys, one question: `no-cache` skips the lookup and stores
            assert ask(c, QUESTION.replace(" ", " " * spaces, 1), **{"x-thrifty-cache": "no-cache"})[0] == "miss"
        code, out, err = run_main(capsys, "cache", "clear", "--config", str(path), "--all")
        assert (code, out.strip()) == (0, "deleted 6 entries"), err

        counts["searches"] = 0
        assert ask(c, "what is the capital of France?") == ("miss", None)  # every verified one is gone
        assert counts["searches"] == 1
        calls = upstream_calls(mock)
        counts["searches"] = 0
        assert ask(c, "what is the capital of france") == ("hit", "semantic")  # the entry stored since
        assert counts["searches"] == 1 and upstream_calls(mock) == calls
    gw.close()


def test_each_candidate_is_vetted_once_and_near_misses_still_miss(mock: RunningServer, tmp_path: Path,
                                                                   counts: dict[str, int]) -> None:
    """The rule verifier used to run every veto again on the candidates the lookup let through:
    here 3 checks a lookup instead of 2 (QQP at 20k entries, top_k 10: 16.2 instead of 10).
    Hits and misses are those of the vetoes as before."""
    gw = Gateway.from_config(write_config(mock, tmp_path))
    with run_in_thread(gw.app()) as server:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-vetted", max_retries=0, timeout=10)
        assert ask(c, "How do I enable dark mode?") == ("miss", None)
        counts["vetoes"] = 0
        assert ask(c, "How do I enable dark mode in 2023?") == ("miss", None)  # a number: vetoed
        assert counts["vetoes"] == 1
        counts["vetoes"] = 0
        assert ask(c, "how do I enable dark mode") == ("hit", "semantic")  # two candidates, one vetoed
        assert counts["vetoes"] == 2
        assert ask(c, "How do I enable dark mode in 2024?") == ("miss", None)  # 2023 is not 2024
    gw.close()


async def test_a_token_verifier_lookup_vets_each_candidate_once(tmp_path: Path, counts: dict[str, int]) -> None:
    """With a verifier that reads token vectors the lookup checked the vetoes to choose the texts
    to tokenise, then again to score: each candidate twice."""
    emb = WordTokens()
    cache = SemanticCache(MemoryBackend(), emb, top_k=3)
    texts = ["how do i learn knitting ?", "how do i learn knitting in 3 days ?", "how do i learn java ?"]
    for i, t in enumerate(texts):
        await cache.add("scope", EntryMeta(f"k{i}", "t", "m", 0.0, 1e12), t)
    v = random_verifier(tmp_path, len(ALIGN_NAMES), emb.name, "logreg", align_idf={"how": 1.0, "<unk>": 3.0})
    counts["vetoes"] = counts["searches"] = 0
    best, _ = await cache.lookup("scope", "how can i learn knitting ?", v, threshold=-1.0)
    assert (counts["vetoes"], counts["searches"]) == (3, 1)
    found, _ = await cache.matches("scope", "how can i learn knitting ?", v, threshold=-1.0)
    assert [m.text for m in found] == [m.text for m in sorted(found, key=lambda m: -m.score)]
    assert len(found) == 2 and best == found[0]  # the vetoed one ("in 3 days") is never scored
