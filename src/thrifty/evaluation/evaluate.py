"""``thrifty eval`` as a function: fit, replay through the pipeline, score, compare, sweep.

How the policy's learned parts are fitted (so it is never judged on prompts it was fitted on):

- ``train`` given: fitted once on ``train``, judged on all of ``data``;
- otherwise (the default): k-fold cross-validation on ``data``: each fold's prompts are
  answered by a policy fitted on the other folds;
- ``fit=False``, or no fitter installed: the policy runs exactly as written.

The budget sweep re-fits the policy with ``max_cost_share`` set to each value and replays again;
its points, with the policy's own, trace the cost-quality frontier.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thrifty.errors import DataError
from thrifty.evaluation import frontier
from thrifty.evaluation.budget_check import budget_warning
from thrifty.evaluation.cv import kfold
from thrifty.evaluation.dataset import Item, OutcomeSet
from thrifty.evaluation.hygiene import (
    check_baseline,
    drop_train_overlap,
    fill_missing_costs,
    missing_models_note,
    unseen_tasks_note,
)
from thrifty.evaluation.metrics import Decision, Row, aggregate, score_decisions
from thrifty.evaluation.policy import (
    FitFn,
    GatewayFactory,
    replay_config,
    spec_max_cost_share,
    standard_gateway,
)
from thrifty.evaluation.prices import derive_prices
from thrifty.evaluation.reference import baseline_costs, oracle_curve, reference_rows
from thrifty.evaluation.runner import run_inprocess, run_via_http
from thrifty.providers.replay import ReplayIndex

DEFAULT_BASELINE = "gpt-4-1106-preview"
DEFAULT_SWEEP = (0.02, 0.05, 0.1, 0.2, 0.35, 0.6)


@dataclass
class EvalOptions:
    baseline: str = DEFAULT_BASELINE
    max_cost_share: float | None = None
    fit: bool = True
    folds: int = 5
    seed: int = 0
    sweep: tuple[float, ...] = DEFAULT_SWEEP
    concurrency: int = 32
    via_http: bool = False
    progress: bool = True


@dataclass
class EvalResult:
    baseline: str
    prompts: int
    fitting: str
    rows: list[Row]  # the policy first, then its sweep points, then the references
    decisions: list[Decision]
    figures: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    # One line each, for people (the CLI prints them on stderr as "warning: ...").
    warnings: list[str] = field(default_factory=list)

    @property
    def policy(self) -> Row:
        return self.rows[0]

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "prompts": self.prompts, "fitting": self.fitting,
                "rows": [r.to_json() for r in self.rows], "figures": self.figures, "timings_s": self.timings,
                "warnings": self.warnings}


class _Bar:
    """A tqdm progress bar on stderr (silent when not a terminal or disabled)."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="prompt", leave=False, disable=None)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Evaluator:
    def __init__(self, data: OutcomeSet, policy: dict[str, Any], options: EvalOptions, *,
                 train: OutcomeSet | None = None, fit_fn: FitFn | None = None,
                 gateway_factory: GatewayFactory = standard_gateway) -> None:
        if options.baseline not in data.models:
            raise DataError(f"baseline model {options.baseline!r} is not in the data "
                            f"(models: {', '.join(data.models)}); pass --baseline")
        check_baseline(data, options.baseline)
        self.fit_fn = fit_fn if options.fit else None
        # One line each, for people (EvalResult.warnings).
        self.notes: list[str] = []
        self.missing_models = False  # models the policy was fitted to call are absent from --data
        self.unseen_tasks = False  # task labels of --data that --train never had
        if train is not None and self.fit_fn is not None:
            check_baseline(train, options.baseline)
            data, overlap = drop_train_overlap(data, train)
            gaps = missing_models_note(data, train)
            unseen = unseen_tasks_note(data, train)
            self.notes += [n for n in (overlap, gaps, unseen) if n]
            self.missing_models = gaps is not None
            self.unseen_tasks = unseen is not None
        self.data, self.train, self.policy, self.options = data, train, policy, options
        self.factory = gateway_factory
        models = data.models + [m for m in (train.models if train else []) if m not in data.models]
        self.models = models
        # Prices only inform routers' estimates; billed cost is the recorded usage.cost.
        self.prices = derive_prices(data if train is None else train.merged(data))
        # Before anything reads a cost: a missing one would read as $0 (hygiene.py).
        filled = sum(fill_missing_costs(s, self.prices) for s in (data, train if self.fit_fn else None) if s is not None)
        if filled:
            self.notes.append(f"{filled} outcomes had no recorded cost: estimated from their tokens at the "
                              "model's price (fitted on the recorded costs, else its list price)")
        # The replay only ever sees the items with their scores stripped.
        self.blind = [i.blind() for i in data.items]
        self.index = ReplayIndex(OutcomeSet(self.blind, data.models))
        # The routing section fitted for the policy's own budget, once per fit (fold), so the
        # run can say when the result spent over that budget (budget_check.py).
        self.policy_sections: list[dict[str, Any]] = []

    @property
    def fitting(self) -> str:
        if self.fit_fn is None:
            return "none (policy used as written)"
        if self.train is not None:
            return f"fitted once on --train ({len(self.train)} prompts)"
        return f"{self.options.folds}-fold cross-validation on --data (seed {self.options.seed})"

    def _fit(self, train: OutcomeSet, shares: list[float | None]) -> list[dict[str, Any]]:
        """One policy per budget in ``shares``, fitted on ``train`` (one fit for all when the
        fitter offers ``fit_many``: the budgets only pick different points of one frontier)."""
        if self.fit_fn is None:
            return [self.policy for _ in shares]
        spec = dict(self.policy.get("routing") or {})
        many = getattr(self.fit_fn, "fit_many", None)
        if many is not None:
            sections = list(many(train, max_cost_shares=shares, baseline=self.options.baseline, spec=spec))
        else:
            sections = [self.fit_fn(train, max_cost_share=s, baseline=self.options.baseline, spec=spec)
                        for s in shares]
        if sections:
            self.policy_sections.append(sections[0])
        return [{**self.policy, "routing": section} for section in sections]

    def _config(self, policy: dict[str, Any], base_url: str | None = None,
                ledger_path: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ledger_path": ledger_path}
        if base_url:
            kwargs["base_url"] = base_url
        return replay_config(self.models, self.prices, self.options.baseline, policy, **kwargs)

    def _run(self, policy: dict[str, Any], items: list[Item], bar: _Bar) -> list[Decision]:
        if self.options.via_http:
            return run_via_http(lambda url, ledger: self._config(policy, url, ledger), self.index, items,
                                self.factory, concurrency=min(self.options.concurrency, 16), progress=bar)
        return asyncio.run(run_inprocess(self._config(policy), self.index, items, self.factory,
                                         concurrency=self.options.concurrency, progress=bar))

    def decide(self, shares: list[float | None]) -> list[list[Decision]]:
        """For each budget in ``shares``, decisions for every prompt of ``data`` by its policy."""
        bar = _Bar(len(self.data) * len(shares), self.options.progress, "thrifty eval")
        try:
            if self.fit_fn is None or self.train is not None:
                policies = self._fit(self.train, shares) if self.train is not None else self._fit(self.data, shares)
                return [self._run(policy, self.blind, bar) for policy in policies]
            found: list[dict[tuple[str, int], Decision]] = [{} for _ in shares]
            for train_idx, test_idx in kfold(self.data, self.options.folds, self.options.seed):
                # Fitted on the other folds only: this fold's prompts are never seen in fitting.
                policies = self._fit(self.data.subset(train_idx), shares)
                test = [self.blind[i] for i in test_idx]
                for by_key, policy in zip(found, policies, strict=True):
                    for d in self._run(policy, test, bar):
                        by_key[(d.file, d.row)] = d
            return [[by_key[i.key] for i in self.blind] for by_key in found]
        finally:
            bar.close()

    def run(self) -> EvalResult:
        opts = self.options
        base = baseline_costs(self.data, opts.baseline)
        share = opts.max_cost_share if opts.max_cost_share is not None else spec_max_cost_share(self.policy)
        sweep = [s for s in opts.sweep if share is None or abs(s - share) > 1e-12] if self.fit_fn else []
        t0 = time.perf_counter()
        decisions, *swept = self.decide([share, *sweep])
        timings = {"fit_and_replay": time.perf_counter() - t0}
        # Scores are read from here on, after every decision above is final.
        rows = [aggregate("thrifty", "policy", score_decisions(decisions, self.data), base, self.fitting)]
        for s, ds in zip(sweep, swept, strict=True):
            rows.append(aggregate(f"thrifty ≤{s:g}x", "sweep", score_decisions(ds, self.data), base,
                                  f"max_cost_share={s:g}"))
        # Calls to models --data lacks fall back to the baseline, and tasks --train lacks were never
        # fitted: that, not the fit's cost estimates, is what overspends.
        causes = [("models of --train are missing from --data (warned above): where the policy calls one it falls "
                   "back to the baseline") if self.missing_models else "",
                  ("tasks of --data have no --train prompt (warned above): the fit never saw them, nor what they "
                   "cost") if self.unseen_tasks else ""]
        cause = "; ".join(c for c in causes if c) or None
        warning = budget_warning(self.policy_sections, rows[0], cause)
        rows.extend(reference_rows(self.data, opts.baseline))
        return EvalResult(opts.baseline, len(self.data), self.fitting, rows, decisions,
                          figures(rows, opts.baseline, oracle_curve(self.data, opts.baseline)), timings, [*self.notes, *([warning] if warning else [])])


def figures(rows: list[Row], baseline: str, oracle_points: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Frontier points, AIQ of thrifty / of the models alone / of the oracle (its curve when
    given, ``reference.oracle_curve``, else its one point), and costs to reach."""
    # A model recorded on only some prompts is not a point on these prompts' frontier.
    every = max(r.overall.prompts for r in rows)
    models = [r for r in rows if r.kind == "model" and r.overall.prompts == every]
    pt: Callable[[Row], tuple[float, float]] = lambda r: (r.overall.cost_share or 0.0, r.overall.accuracy)  # noqa: E731
    cheapest = min(models, key=lambda r: r.overall.cost)
    c_min = min(pt(r)[0] for r in models)
    c_max = max(pt(r)[0] for r in models)
    ours = [pt(r) for r in rows if r.kind in ("policy", "sweep")]
    oracle = [pt(r) for r in rows if r.name == "oracle"] + list(oracle_points or [])
    base = next(r for r in models if r.name == f"always {baseline}")
    target = base.overall.accuracy
    return {
        "points": sorted(ours),
        "frontier": frontier.upper_hull([*ours, pt(cheapest)]),
        "cost_range": [c_min, c_max],
        "aiq": frontier.aiq([*ours, pt(cheapest)], c_min, c_max),
        "aiq_models_only": frontier.aiq([pt(r) for r in models], c_min, c_max),
        "aiq_oracle": frontier.aiq([*oracle, pt(cheapest)], c_min, c_max),
        "baseline_accuracy": target,
        "cost_share_to_baseline_accuracy": frontier.cost_to_reach(ours, target),
        "cost_share_to_95pct_baseline_accuracy": frontier.cost_to_reach(ours, 0.95 * target),
    }
