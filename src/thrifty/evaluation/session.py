"""One evaluation from paths and names to a result (shared by ``thrifty eval``, demo and bench)."""

from __future__ import annotations

from pathlib import Path

from thrifty.evaluation.dataset import load_outcomes
from thrifty.evaluation.datasets import resolve_data
from thrifty.evaluation.evaluate import EvalOptions, EvalResult, Evaluator
from thrifty.evaluation.policy import FitFn, GatewayFactory, default_fit, load_policy, standard_gateway


def run_eval(
    data: str | Path,
    *,
    train: str | Path | None = None,
    policy: str | Path | None = None,
    options: EvalOptions | None = None,
    fit_fn: FitFn | None = None,
    gateway_factory: GatewayFactory = standard_gateway,
) -> EvalResult:
    """Load ``data`` (and ``train``), load the policy, fit as ``options`` say, replay, score."""
    options = options or EvalOptions()
    # The policy first: a typo in it must not wait for the data to load (or download).
    loaded_policy = load_policy(policy)
    outcomes = load_outcomes(resolve_data(str(data)))
    train_set = load_outcomes(resolve_data(str(train))) if train is not None else None
    evaluator = Evaluator(outcomes, loaded_policy, options, train=train_set,
                          fit_fn=fit_fn or default_fit(), gateway_factory=gateway_factory)
    return evaluator.run()
