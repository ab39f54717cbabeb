"""Learned router (issue 4): prediction latency and how much the prompt tells it.

Trains ``thrifty router train``'s router on 80% of the outcome data (shuffled, seed 0) and, on the
other 20%, times ``LearnedRouter.choose`` one prompt at a time (embed the final question, one
dot product per model, pick the model) against a baseline in the same run: the format detection
a rule route makes anyway. Also reports, per model, the held-out ROC AUC of the predicted
P(success) (how well the prompt alone ranks prompts a model gets right).

    .venv/bin/python bench/router_predict.py [--data routerbench] [--embedders lexical,minilm] [--write]

The MiniLM row needs the ``embeddings`` extra; it is skipped (and said so) without it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from mdreport import write_section
from thrifty.errors import ThriftyError
from thrifty.evaluation.dataset import OutcomeSet, load_outcomes
from thrifty.evaluation.datasets import resolve_data
from thrifty.routing.formats import detect_family
from thrifty.routing.learned import LearnedRouter, train_router

EMBEDDERS: dict[str, str | dict[str, object]] = {"lexical": {"kind": "lexical", "dim": 512}, "minilm": "minilm"}


def split(data: OutcomeSet, seed: int = 0) -> tuple[OutcomeSet, OutcomeSet]:
    idx = list(range(len(data)))
    random.Random(seed).shuffle(idx)
    cut = int(len(idx) * 0.8)
    return data.subset(idx[:cut]), data.subset(idx[cut:])


def timings(fn: Callable[[str], object], prompts: list[str], repeats: int) -> tuple[float, float]:
    """p50 and p99 in ms of fn over the prompts, one call at a time, after one warm-up pass."""
    for p in prompts[:20]:
        fn(p)
    ms: list[float] = []
    for _ in range(repeats):
        for p in prompts:
            t0 = time.perf_counter()
            fn(p)
            ms.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(ms, n=100)
    return statistics.median(ms), q[98]


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula (ties averaged); None when one class is absent."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):  # average ranks over ties
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def held_out_auc(router: LearnedRouter, test: OutcomeSet) -> tuple[dict[str, float | None], float]:
    """Per model, the AUC over all held-out prompts (which the format family alone lifts: some
    families are easier), and the mean AUC within one family (what the prompt's wording adds)."""
    preds = [router.predict(i.prompt) for i in test]
    fams = np.array([detect_family(i.prompt) for i in test])
    out: dict[str, float | None] = {}
    within: list[float] = []
    for m in router.models:
        y = np.array([1 if i.scores.get(m, 0.0) >= 0.5 else 0 for i in test])
        p = np.array([pr[m][0] for pr in preds])
        out[m] = auc(y, p)
        for f in set(fams.tolist()):
            a = auc(y[fams == f], p[fams == f])
            if a is not None and (fams == f).sum() >= 30:
                within.append(a)
    return out, (statistics.mean(within) if within else float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="routerbench")
    ap.add_argument("--embedders", default="lexical,minilm")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the held-out prompts")
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = ap.parse_args(argv)
    try:
        data = load_outcomes(resolve_data(args.data))
    except ThriftyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train, test = split(data)
    prompts = [i.prompt for i in test]
    base50, base99 = timings(detect_family, prompts, args.repeats)
    rows = [f"| rule route's format detection (baseline) | - | {base50:.3f} | {base99:.3f} | 1.0x | - | - |"]
    notes: list[str] = []
    auc_rows: list[str] = []
    targets: list[tuple[str, float]] = []
    for name in [e.strip() for e in args.embedders.split(",") if e.strip()]:
        try:
            router = train_router(train, embedder=EMBEDDERS[name])
            router.choose(prompts[0], lam=0.0)  # loads the model before timing
        except (ThriftyError, ImportError) as exc:
            notes.append(f"- {name}: skipped ({str(exc).splitlines()[0]})")
            continue
        p50, p99 = timings(partial(router.choose, lam=0.0), prompts, args.repeats)
        targets.append((name, p99))
        aucs, within_auc = held_out_auc(router, test)
        known = [a for a in aucs.values() if a is not None]
        mean_auc = statistics.mean(known) if known else float("nan")
        rows.append(f"| `choose` with the {name} embedder | {len(router.models)} | {p50:.3f} | {p99:.3f} | "
                    f"{p50 / base50:.0f}x | {mean_auc:.3f} | {within_auc:.3f} |")
        auc_rows.append(f"| {name} | " + " | ".join("-" if a is None else f"{a:.2f}" for a in aucs.values()) + " |")
        models = list(aucs)
    body = (f"{len(train)} prompts to train, {len(test)} held out (seed 0); latencies over {args.repeats} passes of the "
            "held-out prompts, one prompt at a time, on one process.\n\n"
            "| prediction | models | p50 ms | p99 ms | p50 vs baseline | mean held-out AUC | mean AUC within a family |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    if auc_rows:
        body += ("\nHeld-out ROC AUC of each model's predicted P(success) over all held-out prompts (0.5 = the "
                 "prompt tells nothing; knowing the format family alone lifts it, since some families are "
                 "easier: the within-family column above is what the wording adds):\n\n"
                 "| embedder | " + " | ".join(models) + " |\n|---|" + "---:|" * len(models) + "\n"
                 + "\n".join(auc_rows) + "\n")
    for name, p99 in targets:
        default = " (the default)" if name == "lexical" else ""
        body += (f"\nTarget (predictions under 5 ms) with the {name} embedder{default}: "
                 f"**{'met' if p99 < 5 else 'not met'}** (p99 {p99:.2f} ms).\n")
    if notes:
        body += "\n" + "\n".join(notes) + "\n"
    command = ".venv/bin/python bench/router_predict.py" + (
        "" if args.data == "routerbench" else f" --data {args.data}") + (
        "" if args.embedders == "lexical,minilm" else f" --embedders {args.embedders}") + " --write"
    if args.write:
        write_section("router-predict", "Learned router: prediction latency and held-out AUC (issue 4)", command, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
