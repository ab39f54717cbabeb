"""Saying so when a fitted policy spends more than its budget (``max_cost_share``).

The fitter keeps a budget only where it has data to learn from: a prompt family with fewer than
``routing.fit.min_family_prompts`` training prompts (30 by default) is sent to the baseline
whatever the budget, and when even the cheapest fitted cascades cost more than the budget the
cheapest is kept. On a small data set that can spend several times the budget; the evaluation
is still correct, but the flag looked ignored. ``budget_warning`` turns that into one line.
"""

from __future__ import annotations

from typing import Any

from thrifty.evaluation.metrics import Row

# Over the budget by less than this (relative) is rounding, not a broken promise.
_TOLERANCE = 1e-6
DEFAULT_MIN_FAMILY_PROMPTS = 30  # routing.fit's default, repeated to keep this module import-light


def budget_warning(sections: list[dict[str, Any]], policy: Row, cause: str | None = None) -> str | None:
    """One line when the policy's held-out cost share (``policy``) or its training cost share (in
    the fitted ``sections``, one per fit: per fold, or one with --train) exceeds the budget it was
    fitted for, with why (``cause`` when the caller knows it better); None when within budget or
    nothing was fitted with a budget."""
    budgets = [b for s in sections if isinstance(b := s.get("max_cost_share"), int | float)
               and not isinstance(b, bool)]
    if not budgets or len(budgets) < len(sections):
        return None
    budget = float(min(budgets))  # the same budget in every fit
    fitted = [s.get("fitted") or {} for s in sections]
    train = max((float(f.get("train_cost_share", 0.0) or 0.0) for f in fitted), default=0.0)
    held = policy.overall.cost_share
    over_held = held is not None and held > budget * (1 + _TOLERANCE)
    over_train = train > budget * (1 + _TOLERANCE)
    if not (over_held or over_train):
        return None
    spent = (f"held-out cost share {held:.1%}" if over_held and held is not None
             else f"training cost share {train:.1%}")
    return f"{spent} is over the budget max_cost_share={budget:g} ({budget:.1%}): {cause or _why(sections, over_train)}"


def _why(sections: list[dict[str, Any]], over_train: bool) -> str:
    small = sorted({fam for s in sections for fam, kind in ((s.get("fitted") or {}).get("families") or {}).items()
                    if kind == "baseline"})
    minimum = next((int(s["fit"]["min_family_prompts"]) for s in sections
                    if isinstance(s.get("fit"), dict) and "min_family_prompts" in s["fit"]),
                   DEFAULT_MIN_FAMILY_PROMPTS)
    if small:
        return (f"prompt families with fewer than routing.fit.min_family_prompts ({minimum}) training prompts "
                f"always go to the baseline ({', '.join(small)}); use more data, or lower min_family_prompts "
                "in the policy's routing.fit")
    if over_train:
        return "even the cheapest fitted cascade costs more than that on the training prompts; raise the budget"
    return "the costs estimated on the training prompts did not hold on the held-out ones"
