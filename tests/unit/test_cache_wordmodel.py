"""The difference-word model learns which word changes keep a question the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thrifty.cache.verifier import LearnedVerifier, fit_model
from thrifty.cache.wordmodel import diff_tokens, fit_word_model, oof_word_scores

TOPICS = ["dark mode", "a laptop", "my password", "the weather app", "a budget", "a garden", "chess", "guitar",
          "french", "swimming", "a resume", "a podcast", "taxes", "a bike", "yoga", "sql"]


def labelled() -> tuple[list[list[str]], np.ndarray]:
    """Rewordings ("do" -> "can", "best" -> "good") are duplicates; language swaps are not."""
    toks, y = [], []
    for t in TOPICS:
        for a, b, label in [(f"How do I learn {t}?", f"How can I learn {t}?", 1),
                            (f"What is the best way to start {t}?", f"What is a good way to start {t}?", 1),
                            (f"How do I learn {t} in python?", f"How do I learn {t} in java?", 0),
                            (f"Is {t} hard in 2015?", f"Is {t} hard in 2016?", 0)]:
            toks.append(diff_tokens(a, b))
            y.append(label)
    return toks, np.array(y)


def test_tokens_are_symmetric_and_never_empty() -> None:
    a, b = "How do I learn chess?", "How can I learn chess quickly?"
    assert diff_tokens(a, b) == diff_tokens(b, a)
    assert "s:can|do" in diff_tokens(a, b) and "d:quickly" in diff_tokens(a, b)
    assert diff_tokens(a, a) == ["d:<none>"]


def test_learns_harmless_and_harmful_substitutions_and_generalises_to_new_topics() -> None:
    toks, y = labelled()
    model = fit_word_model(toks, y, c=1.0)
    same = model.score("How do I learn knitting?", "How can I learn knitting?")
    other = model.score("How do I learn knitting in python?", "How do I learn knitting in java?")
    assert same > 0 > other
    # Out-of-fold scores rank duplicates above non-duplicates although no pair scored itself.
    oof = oof_word_scores(toks, y, folds=4)
    assert oof[y == 1].min() > oof[y == 0].max()


def test_verifier_with_word_model_round_trips(tmp_path: Path) -> None:
    from thrifty.cache.features import FEATURE_NAMES

    toks, y = labelled()
    words = fit_word_model(toks, y, c=1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(y), len(FEATURE_NAMES) + 2))
    x[:, -2] = words.scores(toks)  # the word-model column sits just before the similarity
    v = LearnedVerifier(fit_model(x, y, "logreg"), {"<unk>": 1.0}, 0.5, "lexical-test", {"model": "logreg"},
                        words=words)
    v.save(tmp_path / "v.json")
    back = LearnedVerifier.load(tmp_path / "v.json")
    assert back.words is not None and back.feature_names[-2:] == ["word_model", "cosine"]
    query, cands, sims = "How can I learn knitting?", ["How do I learn knitting?", "How do I learn knitting in java?"], \
        np.array([0.9, 0.9])
    assert np.allclose(v.score(query, cands, sims), back.score(query, cands, sims))
