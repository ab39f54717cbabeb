"""Neighbourhood (density) features of the semantic cache: the sample, the features, the verifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.cache_verifiers import random_verifier
from thrifty.cache.density import DENSITY_NAMES, DensitySample, text_hash
from thrifty.cache.features import FEATURE_NAMES
from thrifty.cache.index import VectorIndex
from thrifty.cache.verifier import LearnedVerifier


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def test_sample_is_the_bottom_k_by_text_hash_whatever_the_insertion_order() -> None:
    rng = np.random.default_rng(0)
    texts = [f"question {i}" for i in range(60)]
    vecs = unit(rng.normal(size=(60, 8)))
    forward, backward = DensitySample(8, size=10), DensitySample(8, size=10)
    for t, v in zip(texts, vecs, strict=True):
        forward.add([t], v[None, :])
    backward.add(texts[::-1], vecs[::-1])
    backward.add(texts[:5], vecs[:5])  # re-adding a sampled or unsampled text changes nothing
    want = set(sorted(texts, key=text_hash)[:10])
    assert set(forward._row) == set(backward._row) == want
    # Each sampled text keeps its own vector through the evictions.
    for t in want:
        assert np.allclose(forward._mat[forward._row[t]], vecs[texts.index(t)])


def test_features_see_crowding_and_leave_the_candidate_out() -> None:
    rng = np.random.default_rng(1)
    centre, lonely = unit(rng.normal(size=16)), unit(rng.normal(size=16))
    crowd = unit(centre + 0.05 * rng.normal(size=(30, 16)))
    sample = DensitySample(16)
    sample.add([f"crowd {i}" for i in range(30)], crowd)
    sample.add(["lonely"], lonely[None, :])
    query = unit(centre + 0.05 * rng.normal(size=16))
    rows = sample.features(query, ["crowd 0", "lonely"], np.vstack([crowd[0], lonely]),
                           np.array([float(crowd[0] @ query), float(lonely @ query)]))
    f = {name: rows[:, i] for i, name in enumerate(DENSITY_NAMES)}
    assert rows.shape == (2, len(DENSITY_NAMES))
    assert f["cand_nn1"][0] > 0.9 > f["cand_nn1"][1]  # the crowd member has close neighbours, "lonely" none
    assert f["query_nn10"][0] > 0.9  # the query sits in the crowd
    # The candidate itself is not its own neighbour: its similarity to the query is not a rival's.
    assert f["gap_query"][0] == pytest.approx(float(crowd[0] @ query) - f["query_nn1"][0])
    assert f["query_rank"][1] == 30  # every crowd member is nearer the query than "lonely"
    assert np.array_equal(f["mutual_rank"], np.minimum(f["query_rank"], f["cand_rank"]))
    # A cache holding only the candidate: no neighbours at all, features stay finite.
    alone = DensitySample(16)
    alone.add(["lonely"], lonely[None, :])
    one = alone.features(query, ["lonely"], lonely[None, :], np.array([0.2]))
    assert np.isfinite(one).all() and one[0, DENSITY_NAMES.index("cand_nn1")] == 0.0


def test_index_keeps_its_sample_current() -> None:
    rng = np.random.default_rng(2)
    index = VectorIndex(8, ann="none")
    index.add(["k0", "k1"], ["a", "b"], unit(rng.normal(size=(2, 8))), [1e12, 1e12])
    sample = index.density()
    assert len(sample) == 2
    index.add(["k2"], ["c"], unit(rng.normal(size=(1, 8))), [1e12])
    assert len(index.density()) == 3 and index.density() is sample


def density_verifier(tmp_path: Path) -> LearnedVerifier:
    return random_verifier(tmp_path, len(DENSITY_NAMES), "lexical-test", "logreg+density", seed=3, density=True)


def test_verifier_with_density_round_trips_and_refuses_to_score_without_it(tmp_path: Path) -> None:
    v = density_verifier(tmp_path)
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["density"] is True and saved["features"][len(FEATURE_NAMES):-1] == DENSITY_NAMES
    back = LearnedVerifier.load(tmp_path / "v.json")
    assert back.uses_density and back.feature_names == v.feature_names
    cands, sims = ["How do I learn knitting?", "How do I learn java?"], np.array([0.9, 0.8])
    dens = np.random.default_rng(4).normal(size=(2, len(DENSITY_NAMES)))
    assert np.allclose(v.score("How can I learn knitting?", cands, sims, dens),
                       back.score("How can I learn knitting?", cands, sims, dens))
    with pytest.raises(ValueError, match="density"):
        back.score("How can I learn knitting?", cands, sims)


def test_semantic_lookup_hands_the_verifier_each_candidates_neighbourhood(tmp_path: Path) -> None:
    from thrifty.cache.backends.memory import MemoryBackend
    from thrifty.cache.semantic import SemanticCache
    from thrifty.embeddings import build_embedder

    emb = build_embedder("lexical")
    texts = ["How do I learn knitting?", "How can I learn to knit?", "What is the capital of France?",
             "How do I learn python?", "Best way to learn knitting fast?"] + [f"How do I cook dish number {i}?"
                                                                               for i in range(20)]
    index = VectorIndex(emb.dim, ann="none")
    index.add([f"k{i}" for i in range(len(texts))], texts, emb.embed(texts), [1e12] * len(texts))
    cache = SemanticCache(MemoryBackend(), emb, top_k=3)
    v = density_verifier(tmp_path)
    query = "How can I learn knitting?"
    qvec = emb.embed([query])[0]
    pos, got_texts, sims, scores = cache.candidates(index, query, qvec, v)
    assert len(got_texts) == 3
    want = v.score(query, got_texts, sims, index.density().features(qvec, got_texts, index.vectors(pos), sims))
    assert np.allclose(scores, want)


def test_gate_zeroes_what_the_plain_verifier_rejects_and_survives_a_round_trip(tmp_path: Path) -> None:
    from thrifty.cache.verifier import _Cosine

    v = density_verifier(tmp_path)
    # The gate reads the rows without the neighbourhood columns; a cosine gate at 0.85 keeps only
    # candidates at least that similar.
    gated = LearnedVerifier(v.model, v.idf, v.threshold, v.embedder, v.info, density=True, gate=_Cosine(),
                            gate_threshold=0.85)
    gated.save(tmp_path / "g.json")
    back = LearnedVerifier.load(tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())["gate"]["threshold"] == 0.85
    cands, sims = ["How do I learn knitting?", "How do I learn java?"], np.array([0.9, 0.8])
    dens = np.random.default_rng(5).normal(size=(2, len(DENSITY_NAMES)))
    plain = v.score("How can I learn knitting?", cands, sims, dens)
    for ver in (gated, back):
        got = ver.score("How can I learn knitting?", cands, sims, dens)
        assert got[0] == pytest.approx(plain[0]) and got[1] == 0.0


def test_density_calibration_gates_with_the_plain_verifier(data_dir: Path) -> None:
    """The "+density" scorer is cross-validated after its plain gate and stores that gate."""
    from thrifty.cache.calibrate import GATE_RATE, calibrate
    from thrifty.cache.pairs import read_pairs
    from thrifty.embeddings import build_embedder

    pairs = read_pairs(data_dir / "qqp" / "pairs_dev.jsonl")[:600]
    cal = calibrate(pairs, build_embedder("lexical"), model="logreg+density", folds=3, max_false_hit_rate=0.05)
    v = cal.verifier
    assert v.gate is not None and v.density and v.info["gate"] == {"model": "logreg",
                                                                    "false_acceptance_rate": GATE_RATE}
    assert set(v.info["cv_duplicate_hit_rate"]) == {"logreg", "logreg+density"}
    assert {f["model"] for f in cal.folds} == {"logreg+density"}


def test_sample_size_bounds_the_work_per_neighbourhood() -> None:
    from thrifty.cache.density import SAMPLE_FLOATS, SAMPLE_SIZE

    assert DensitySample(384).size == SAMPLE_SIZE  # MiniLM: the full sample
    lexical = DensitySample(1024).size
    assert lexical < SAMPLE_SIZE and lexical * 1024 <= SAMPLE_FLOATS
    assert DensitySample(8, size=3).size == 3


def test_a_lookup_leaves_the_young_generation_collected() -> None:
    """Each lookup ends with a young-generation collection, so the garbage collector never faces a
    young generation grown by many lookups' memo churn in the middle of one (docs/caching.md)."""
    import gc

    from thrifty.cache.backends.memory import MemoryBackend
    from thrifty.cache.semantic import SemanticCache
    from thrifty.cache.verifier import RuleVerifier
    from thrifty.embeddings import build_embedder

    emb = build_embedder("lexical")
    texts = [f"How do I cook dish number {i}?" for i in range(20)]
    index = VectorIndex(emb.dim, ann="none")
    index.add([f"k{i}" for i in range(len(texts))], texts, emb.embed(texts), [1e12] * len(texts))
    cache = SemanticCache(MemoryBackend(), emb, top_k=3)
    qvec = emb.embed(["How do I cook dish number 7?"])[0]
    gc.collect()
    survivors = [[i] for i in range(300)]  # young (tracked) objects that outlive the lookup
    ids = {id(o) for o in survivors}

    def young_survivors() -> int:
        return sum(id(o) in ids for o in gc.get_objects(0))

    assert young_survivors() == 300
    _, found, _, _ = cache.candidates(index, "How do I cook dish number 7?", qvec, RuleVerifier())
    assert found and young_survivors() == 0
