"""Fixed-structure agreement cascades, the hand-made baselines a learned policy must beat.

Each is a state table over an order of 1-3 cheap models that is not fitted at all, so its
training accuracy is an honest estimate (only the choice of models is learned):
- one model: serve its answer (``single``), or ask the strong model when it gives none;
- two models: serve the first's (or the second's) answer when they agree, else the strong model;
- three models: 2-of-3 majority, or all three agreeing, else the strong model.
"Yi-34B and Mixtral answer; serve Yi when their letters agree, else GPT-4" is one of these.
"""

from __future__ import annotations

from thrifty.routing.policies import vote_table

FIXED_TABLES: dict[int, dict[str, dict[str, str]]] = {
    1: {
        "single": {"": "next", "0": "stop:0", "x": "stop:0"},
        "single, strong when unusable": {"": "next", "0": "stop:0"},
    },
    2: {
        "agree: serve 1st": {"": "next", "0": "next", "x": "next", "0,0": "stop:0"},
        "agree: serve 2nd": {"": "next", "0": "next", "x": "next", "0,0": "stop:1"},
        "agree: serve 1st, the usable one if only one": {"": "next", "0": "next", "x": "next", "0,0": "stop:0",
                                                          "0,x": "stop:0", "x,0": "stop:1"},
    },
    3: {"2 of 3 agree": vote_table(3, 2), "3 of 3 agree": vote_table(3, 3)},
}
