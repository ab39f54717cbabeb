"""Per-token prices implied by recorded costs, for the replay catalog.

Evaluated calls are billed with the recorded dollars (``usage.cost``), so prices never change a
result's cost. The catalog still needs prices for what routers and cascades *estimate* before
calling (cheapest-first ordering, budget guards), so each model gets the input and output
prices (USD per million tokens) that best explain its recorded costs: a non-negative least
squares fit of cost against counted prompt and completion tokens, on a fixed sample of rows.
"""

from __future__ import annotations

import numpy as np

from thrifty.evaluation.dataset import OutcomeSet
from thrifty.tokens import count_messages, count_text

_M = 1_000_000.0


def derive_prices(data: OutcomeSet, sample: int = 100) -> dict[str, dict[str, float]]:
    """``{model: {"input": usd_per_m, "output": usd_per_m}}`` for every model with recorded costs."""
    prompt_tokens: dict[int, int] = {}  # counted once per row, shared by the models sampling it
    prices: dict[str, dict[str, float]] = {}
    for model in data.models:
        # Sampled among the rows where this model HAS a recorded cost: one fixed sample of all
        # rows can miss every one of them (costs logged only on some rows, or only in later
        # rows), and the model then had "no known price" although most of its costs were there.
        costed = [(n, item) for n, item in enumerate(data.items)
                  if (o := item.outcomes.get(model)) is not None and o.cost is not None]
        xs, ys = [], []
        for n, item in costed[:: max(1, len(costed) // sample)][:sample]:
            out = item.outcomes[model]
            assert out.cost is not None
            usage = out.usage or {}
            p = int(usage.get("prompt_tokens") or 0)
            if not p:
                if n not in prompt_tokens:
                    prompt_tokens[n] = count_messages(item.messages)
                p = prompt_tokens[n]
            c = int(usage.get("completion_tokens") or count_text(out.response))
            xs.append((p, c))
            ys.append(out.cost)
        if not xs or sum(ys) <= 0:
            continue
        prices[model] = _fit(np.array(xs, dtype=float), np.array(ys, dtype=float))
    return prices


def _fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Non-negative least squares for two coefficients: the unconstrained fit, else the best
    one-coefficient fit (numpy only: importing scipy would cost seconds per run)."""
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    if (coef < 0).any():
        candidates = []
        for j in (0, 1):
            col = x[:, j]
            denom = float(col @ col)
            c = max(0.0, float(col @ y) / denom) if denom > 0 else 0.0
            one = np.zeros(2)
            one[j] = c
            candidates.append((float(((x @ one - y) ** 2).sum()), one))
        coef = min(candidates, key=lambda t: t[0])[1]
    if coef.sum() <= 0:
        blended = float(y.sum() / max(1.0, x.sum()))
        coef = np.array([blended, blended])
    inp, outp = float(coef[0]) * _M, float(coef[1]) * _M
    # A model whose fit gives one side zero (e.g. flat per-call pricing) still gets a usable figure.
    floor = max(inp, outp) * 1e-3
    return {"input": round(max(inp, floor), 6), "output": round(max(outp, floor), 6)}
