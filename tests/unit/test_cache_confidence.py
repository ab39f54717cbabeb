"""`cache calibrate --confidence`: the threshold bounds the false-hit rate instead of matching it
on the calibration sample (cache/verifier.allowed_false_hits, threshold_at)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from fixtures.cli_run import assert_one_line, run_main
from thrifty.cache.verifier import allowed_false_hits, threshold_at


@pytest.mark.parametrize("n", [500, 2_500, 12_487, 100_000])
def test_allowed_false_hits_is_the_largest_count_the_target_explains(n: int) -> None:
    """Checked against the binomial itself (not the beta quantile the code uses): were the true
    rate the target, seeing at most k acceptances would have probability <= 1 - confidence (so
    seeing k says the rate is below the target with that confidence), and k + 1 would not."""
    k = allowed_false_hits(n, 0.005, 0.9)
    assert k < 0.005 * n
    if k >= 0:
        assert binom.cdf(k, n, 0.005) <= 0.1
    assert binom.cdf(k + 1, n, 0.005) > 0.1


def test_threshold_at_with_confidence_sits_higher_and_never_below_every_score() -> None:
    scores = np.linspace(0, 1, 10_001)
    plain, bounded = threshold_at(scores, 0.005), threshold_at(scores, 0.005, 0.9)
    assert bounded > plain
    assert np.mean(scores >= bounded) == pytest.approx((allowed_false_hits(10_001, 0.005, 0.9)) / 10_001, abs=1e-4)
    tiny = np.array([0.1, 0.5, 0.9])  # no acceptance can be afforded: nothing passes
    assert threshold_at(tiny, 0.005, 0.9) > 0.9


def test_a_bounded_threshold_rarely_exceeds_the_target_on_new_data() -> None:
    """The point of it: matched on a sample, the threshold serves more than the target on new
    data about half the time; bounded at 90%, about one time in ten at most."""
    rng = np.random.default_rng(7)
    over_plain = over_bounded = 0
    trials = 300
    for _ in range(trials):
        calibration, fresh = rng.normal(size=5_000), rng.normal(size=200_000)
        over_plain += np.mean(fresh >= threshold_at(calibration, 0.005)) > 0.005
        over_bounded += np.mean(fresh >= threshold_at(calibration, 0.005, 0.9)) > 0.005
    assert over_plain / trials > 0.35
    assert over_bounded / trials < 0.15


def test_the_cli_refuses_a_confidence_that_is_not_a_probability_below_one(capsys: pytest.CaptureFixture[str],
                                                                          tmp_path: object) -> None:
    for bad in ("1", "1.5", "-0.1"):
        code, _, err = run_main(capsys, "cache", "calibrate", "--pairs", "missing.jsonl", "--confidence", bad)
        assert_one_line(code, err, "--confidence")


def test_calibration_on_too_few_pairs_says_why_nothing_similar_is_served() -> None:
    from thrifty.cache.calibrate import calibrate
    from thrifty.cache.pairs import Pair
    from thrifty.embeddings.lexical import LexicalEmbedder

    pairs = [Pair(f"how do I learn topic {i}?", f"what is the best way to learn topic {i}?", i % 2) for i in range(60)]
    said: list[str] = []
    cal = calibrate(pairs, LexicalEmbedder(), model="cosine", progress=said.append)
    assert any("30 non-duplicates cannot show a false-hit rate of 0.500% with confidence 0.9" in m for m in said), said
    assert cal.verifier.info["confidence"] == 0.9
