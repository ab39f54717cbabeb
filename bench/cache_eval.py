"""Semantic-cache quality on the QQP dev pairs, cross-validated: the lexical-only path and MiniLM.

    .venv/bin/python bench/cache_eval.py --embedders lexical,minilm --folds 2 --write

Each fold runs what `thrifty cache eval --pairs FOLD.jsonl --calibrate-on REST.jsonl` runs: the
verifier and its threshold are fitted on the other folds (target false-hit rate 0.5%, margin 0.6),
then every text_a of the held-out fold is cached and every text_b looked up. Rates as in
`thrifty cache eval`: duplicate hit rate = duplicates served / duplicates; false-hit rate =
non-duplicates served / non-duplicates (also shown without the ones whose question is identical
to a cached question, which the exact cache answers anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdreport import write_section  # noqa: E402
from thrifty.cache.calibrate import calibrate  # noqa: E402
from thrifty.cache.evaluation import decide_all, report  # noqa: E402
from thrifty.cache.pairs import Pair, read_pairs  # noqa: E402
from thrifty.embeddings import build_embedder  # noqa: E402


class Memo:
    """Same vectors as the wrapped embedder, each text embedded once per run (MiniLM is slow)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.memo: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def embed(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if todo:
            for t, v in zip(todo, self.inner.embed(todo), strict=True):
                self.memo[t] = v
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def folds_of(pairs: list[Pair], k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    return [np.sort(order[i::k]) for i in range(k)]


def run(embedder_spec: str, pairs: list[Pair], k: int, seed: int, model: str) -> dict[str, Any]:
    emb = Memo(build_embedder(embedder_spec))
    rows = []
    t0 = time.perf_counter()
    for f, test_idx in enumerate(folds_of(pairs, k, seed)):
        mask = np.ones(len(pairs), dtype=bool)
        mask[test_idx] = False
        train = [p for p, m in zip(pairs, mask, strict=True) if m]
        test = [pairs[i] for i in test_idx]
        cal = calibrate(train, emb, max_false_hit_rate=0.005, model=model)
        lookups, latency = decide_all(test, emb, cal.verifier)
        rep = report(test, lookups, latency, cal.verifier, cal.verifier.threshold, emb)
        op = rep["operating_point"]
        rows.append({"fold": f, **op, "lookup_p50_ms": latency["lookup_p50_ms"],
                     "lookup_p99_ms": latency["lookup_p99_ms"], "embed_p50_ms": latency["embed_p50_ms"],
                     "cv_train_dhr": cal.summary()["cv_duplicate_hit_rate"]})
        print(embedder_spec, json.dumps(rows[-1]), flush=True)
    return {"embedder": emb.name, "rows": rows, "seconds": time.perf_counter() - t0}


def render(results: list[dict[str, Any]], n: int, k: int, model: str) -> str:
    lines = [f"{n:,} QQP dev pairs, {k}-fold: verifier ({model}) and threshold fitted on the other folds "
             "for a 0.5% false-hit target (calibrated to 0.3%), judged on the held-out fold.", "",
             "| path | fold | threshold | duplicate hit rate | own-answer hits | false-hit rate | "
             "false-hit rate, identical questions excluded | lookup p50 / p99 ms | query embed p50 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for res in results:
        for r in res["rows"]:
            lines.append(
                f"| {res['embedder']} | {r['fold']} | {r['threshold']:.4f} | {r['duplicate_hit_rate']:.2%} | "
                f"{r['duplicate_own_hit_rate']:.2%} | {r['false_hit_rate']:.3%} | "
                f"{r['false_hit_rate_excluding_identical']:.3%} | {r['lookup_p50_ms']:.1f} / {r['lookup_p99_ms']:.1f} | "
                f"{r['embed_p50_ms']:.2f} |")
        mean = {key: float(np.mean([r[key] for r in res["rows"]])) for key in
                ("duplicate_hit_rate", "duplicate_own_hit_rate", "false_hit_rate", "false_hit_rate_excluding_identical")}
        lines.append(f"| **{res['embedder']} mean** | | | **{mean['duplicate_hit_rate']:.2%}** | "
                     f"{mean['duplicate_own_hit_rate']:.2%} | **{mean['false_hit_rate']:.3%}** | "
                     f"{mean['false_hit_rate_excluding_identical']:.3%} | | |")
    lines += ["", "Target (held-out pairs): duplicate hit rate >= 15% at false-hit rate <= 0.5%. "
              "Reference from the issue: MiniLM cosine threshold 10.0%, gradient-boosted MiniLM + lexical 12.4%, "
              "lexical only 7.1%.",
              "", "Same measurement for one split with the CLI: `thrifty cache eval --pairs HELDOUT.jsonl "
              "--calibrate-on TRAIN.jsonl [--embedder minilm] --json`.",
              "", f"Machine: {os.cpu_count()} CPUs; lookups timed one at a time (verifier included)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedders", default="lexical,minilm")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N pairs (quick runs)")
    ap.add_argument("--model", default="lgbm", choices=["lgbm", "logreg"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="write the results to docs/benchmarks.md")
    args = ap.parse_args()
    data = Path(os.environ.get("THRIFTY_DATA_DIR") or ROOT.parent / "shared" / "data")
    pairs = read_pairs(data / "qqp" / "pairs_dev.jsonl")
    if args.limit:
        pairs = pairs[: args.limit]
    results = [run(spec, pairs, args.folds, args.seed, args.model) for spec in args.embedders.split(",")]
    body = render(results, len(pairs), args.folds, args.model)
    print(body)
    if args.write:
        write_section("cache_eval", "Semantic cache: duplicate and false hits (issue 5)",
                      " ".join(["python", "bench/cache_eval.py", *sys.argv[1:]]), body)


if __name__ == "__main__":
    main()
