"""Question-grouped folds for the semantic-cache evaluation (cache/folds.py, bench/cache_eval.py) and the
overlap rule of `thrifty cache eval --calibrate-on` (cache/evaluation.py, evaluation/overlap.py):
no question is judged that calibration saw, even when it came in another pair."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.bench_module import load_bench
from thrifty.cache.calibrate import calibrate
from thrifty.cache.evaluation import keep_out_of_sample
from thrifty.cache.folds import group_split, grouped_folds, question_groups, question_key
from thrifty.cache.pairs import Pair
from thrifty.cache.wordmodel import oof_word_scores
from thrifty.embeddings.lexical import LexicalEmbedder
from thrifty.errors import DataError
from thrifty.evaluation.dataset import Item, OutcomeSet
from thrifty.evaluation.hygiene import drop_train_overlap
from thrifty.evaluation.overlap import drop_overlap


def _pairs() -> list[Pair]:
    """40 pairs of their own questions, then a chain of 6 pairs linked by shared questions (one
    of them written with other case and spacing), each link in a different pair."""
    pairs = [Pair(f"how do I learn topic {i}?", f"what is a good way to learn topic {i}?", i % 2) for i in range(40)]
    pairs += [Pair("Where is Paris?", "where is paris located?", 1), Pair("where is  paris?", "Is Paris big?", 0),
              Pair("is paris big?", "how big is Paris?", 1), Pair("How big is Paris?", "what is paris?", 0),
              Pair("what is Paris?", "why visit paris?", 0), Pair("why visit paris?", "why go to paris?", 1)]
    return pairs


def _fold_keys(pairs: list[Pair], idx: np.ndarray) -> set[str]:
    return {question_key(t) for i in idx for t in (pairs[i].text_a, pairs[i].text_b)}


def _old_folds_of(pairs: list[Pair], k: int, seed: int) -> list[np.ndarray]:
    """The pair-by-pair split this replaced (for the regression check below)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [np.sort(order[i::k]) for i in range(k)]


def _split_questions(pairs: list[Pair], folds: list[np.ndarray]) -> int:
    """How many (fold, question) pairs have the question also in another fold."""
    keys = [_fold_keys(pairs, f) for f in folds]
    return sum(len(k & set().union(*(o for j, o in enumerate(keys) if j != i))) for i, k in enumerate(keys))


def test_question_key_ignores_case_and_spacing_only() -> None:
    assert question_key("  Where is\tParis? ") == question_key("where is paris?") == "where is paris?"
    assert question_key("where is paris") != question_key("where is paris?")


def test_pairs_sharing_a_question_form_one_group_transitively() -> None:
    pairs = _pairs()
    groups = question_groups(pairs)
    assert len(set(groups[40:].tolist())) == 1
    assert len(set(groups.tolist())) == 41


def test_no_question_is_in_two_folds_where_the_pair_split_put_one_there() -> None:
    pairs = _pairs()
    assert any(_split_questions(pairs, _old_folds_of(pairs, 5, seed)) for seed in range(5))
    for seed in range(5):
        folds = grouped_folds(pairs, 5, seed)
        assert _split_questions(pairs, folds) == 0
        assert sorted(np.concatenate(folds).tolist()) == list(range(len(pairs)))


def test_folds_are_deterministic_by_seed_and_stratified() -> None:
    pairs = [Pair(f"q{i}", f"r{i}", int(i % 4 == 0)) for i in range(100)] + _pairs()
    a, b = grouped_folds(pairs, 5, 3), grouped_folds(pairs, 5, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, grouped_folds(pairs, 5, 4), strict=True))
    y = np.array([p.label for p in pairs])
    # The chain of 6 is one group: folds differ in size and duplicates by at most that much.
    assert max(len(f) for f in a) - min(len(f) for f in a) <= 6
    assert np.ptp([y[f].sum() for f in a]) <= 3


def test_too_few_groups_for_the_folds_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        grouped_folds(_pairs()[40:], 5, 0)


def test_bench_cache_eval_folds_are_grouped_by_question() -> None:
    bench = load_bench("cache_eval")
    pairs = _pairs()
    for seed in range(5):
        assert _split_questions(pairs, bench.folds_of(pairs, 5, seed)) == 0


def test_bench_cache_eval_section_says_how_folds_are_drawn() -> None:
    row = {"fold": 0, "verifier": "lgbm", "threshold": 0.9, "duplicate_hit_rate": 0.15, "false_hit_rate": 0.004,
           "duplicate_served_any_rate": 0.2, "non_duplicate_served_any_rate_excluding_identical": 0.01,
           "lookup_p50_ms": 1.0, "lookup_p99_ms": 2.0, "embed_p50_ms": 0.3}
    body = load_bench("cache_eval").render([{"embedder": "lexical", "rows": [row]}], 10, 5, "auto")
    assert "folds grouped by question" in body and "`--model auto`" in body
    assert "{" not in body  # every placeholder filled


def test_calibration_overlap_drops_pairs_sharing_either_question() -> None:
    judged = [Pair("How old is the sun?", "is the sun hot?", 1), Pair("a b", "c d", 0),
              Pair("what is x?", "WHAT  is y?", 0), Pair("e f", "g h", 1)]
    calibration = [Pair("how old is the  sun?", "what is the age of the sun?", 1), Pair("what is y?", "z", 0)]
    kept, _, warning = keep_out_of_sample(judged, calibration)
    assert kept == [judged[1], judged[3]]
    assert warning == ("2 of the 4 --pairs share a question with the --calibrate-on pairs and were left out: "
                       "judged on the other 2")
    with pytest.raises(DataError, match="every one of the 1 --pairs shares a question"):
        keep_out_of_sample([judged[0]], calibration)
    assert keep_out_of_sample([judged[1]], calibration) == ([judged[1]], [0], None)


def test_drop_overlap_reads_every_key_of_both_sides() -> None:
    kept, warning = drop_overlap(["ab", "cd", "ef"], [("x", "d")], judged_keys=lambda s: tuple(s),
                                 fitted_keys=lambda t: t, warning="{dropped}/{total} out, {kept} kept",
                                 refusal="all {total}")
    assert (kept, warning) == (["ab", "ef"], "1/3 out, 2 kept")


def test_train_overlap_keeps_its_behaviour_and_message() -> None:
    def item(row: int, prompt: str) -> Item:
        return Item(file="t.csv", row=row, task="t", messages=[{"role": "user", "content": prompt}], outcomes={})

    data = OutcomeSet([item(0, "what is  1+1?"), item(1, "what is 2+2?")], ["m"])
    train = OutcomeSet([item(0, "what is 1+1?")], ["m"])
    kept, warning = drop_train_overlap(data, train)
    assert [i.row for i in kept.items] == [1] and kept.models == ["m"]
    assert warning == "1 of the 2 --data prompts are also --train prompts and were left out: judged on the other 1"
    untouched = OutcomeSet([item(1, "what is 2+2?")], ["m"])
    assert drop_train_overlap(untouched, train) == (untouched, None)
    with pytest.raises(DataError, match="every one of the 1 --data prompts is also a --train prompt"):
        drop_train_overlap(OutcomeSet([item(0, "what is 1+1?")], ["m"]), train)


def test_group_split_keeps_groups_whole_and_covers_every_row() -> None:
    groups = np.repeat(np.arange(30), 3)  # 30 groups of 3 rows
    labels = np.tile([0, 1, 1], 30)
    split = group_split(groups, labels, 5, seed=1)
    seen = np.concatenate([te for _, te in split])
    assert sorted(seen.tolist()) == list(range(90))
    for tr, te in split:
        assert not set(groups[tr]) & set(groups[te])
        assert len(tr) + len(te) == 90


def test_out_of_fold_word_scores_never_learn_from_a_sibling_pair() -> None:
    """Each group's pairs all carry a word of their own. Folds by pair would learn that word from a
    sibling in the training folds and score the pair by it; folds by group never see it, so every
    pair gets the score of a model that knows none of its words."""
    token_lists = [[f"d:w{g}", "d:common"] for g in range(40) for _ in range(3)]
    y = np.array([g % 2 for g in range(40) for _ in range(3)])
    groups = np.repeat(np.arange(40), 3)
    grouped = oof_word_scores(token_lists, y, groups=groups, seed=0)
    by_pair = oof_word_scores(token_lists, y, seed=0)
    # By pair the group words give the label away; by group no score separates the labels.
    assert by_pair[y == 1].mean() - by_pair[y == 0].mean() > 0.2
    assert abs(grouped[y == 1].mean() - grouped[y == 0].mean()) < 0.02


def test_calibration_refuses_folds_it_cannot_fill_with_distinct_questions() -> None:
    """Ten pairs, enough labels for 5 folds, but one shared question: one group, no honest split."""
    pairs = [Pair("where is paris?", f"where is paris, {suffix}?", label)
             for suffix, label in [("france", 1), ("texas", 0), ("really", 1), ("the city", 1), ("in france", 1),
                                   ("the capital", 0), ("kentucky", 0), ("ontario", 0), ("maine", 0),
                                   ("the french capital", 1)]]
    with pytest.raises(DataError, match="distinct questions"):
        calibrate(pairs, LexicalEmbedder(), folds=5, model="cosine")
