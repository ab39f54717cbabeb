"""What route splits buy: the budget's choice with and without ``fit.mix``, under cross-validation.

    .venv/bin/python bench/routing_mix.py --write     # ~2 min on 2 cores

On ../shared/data/routerbench, for each of 10 splits (5 folds x seeds 0 and 1) it fits the
frontier on the training folds (the bundled default policy's ``fit:`` recipe) and replays the
held-out fold with ``routing.simulate`` at X = 0.10 and 0.25, three ways: the most accurate single
policy within X (``mix: false``), the hull mix at the whole budget (``budget_margin: 1.0``), and
the default (mix, ``budget_margin: 0.97``). Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from mdreport import write_section

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "gpt-4-1106-preview"
VARIANTS = {"best policy within X (mix: false, margin 1.0)": {"mix": False, "budget_margin": 1.0},
            "hull mix, margin 1.0": {"mix": True, "budget_margin": 1.0},
            "hull mix, margin 0.97 (default)": {"mix": True, "budget_margin": 0.97}}
BUDGETS = (0.10, 0.25)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    from thrifty.evaluation.cv import kfold
    from thrifty.evaluation.dataset import load_outcomes
    from thrifty.evaluation.datasets import resolve_data
    from thrifty.routing.fit import fit_frontier
    from thrifty.routing.simulate import simulate

    recipe = yaml.safe_load((ROOT / "src" / "thrifty" / "data" / "default_policy.yaml").read_text())["routing"]["fit"]
    data = load_outcomes(resolve_data("routerbench", allow_download=False))
    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        # The folds `thrifty eval` and `thrifty calibrate` use (stratified by task).
        for train, test in kfold(data, 5, seed):
            # The variants differ only in how the budget picks from the frontier (Frontier.select
            # reads mix and budget_margin), so the frontier is fitted once per split.
            fitted = fit_frontier(data.subset(train), baseline=BASELINE, spec={"fit": recipe})
            for name, opts in VARIANTS.items():
                front = dataclasses.replace(fitted, opts={**fitted.opts, **opts})
                for x in BUDGETS:
                    r = simulate(front.section(x), data.subset(test), BASELINE)
                    results.setdefault((name, x), []).append((r.accuracy, r.cost_share))
    took = time.perf_counter() - started
    lines = ["| fitting | " + " | ".join(f"X={x:g}: accuracy / cost" for x in BUDGETS) + " |",
             "|---|" + "---:|" * len(BUDGETS)]
    for name in VARIANTS:
        cells = []
        for x in BUDGETS:
            acc, cost = np.mean(results[(name, x)], axis=0)
            cells.append(f"{acc:.4f} / {cost:.1%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    body = (f"{args.seeds * 5} splits (5-fold CV x seeds 0-{args.seeds - 1}) of routerbench ({len(data)} prompts); "
            f"each fitted on its training folds with the bundled default policy's `fit:` recipe and replayed on the "
            f"held-out fold by `routing.simulate` (decisions from recorded answers only); mean held-out accuracy and "
            f"cost as a share of always-{BASELINE}'s. {took:.0f} s.\n\n" + "\n".join(lines) + "\n")
    print(body)
    if args.write:
        write_section("routing-mix", "Route splits: spending the whole budget (issue 4)",
                      "python bench/routing_mix.py --write", body)


if __name__ == "__main__":
    sys.exit(main())
