"""The cost calculator behind ``thrifty estimate``: monthly cost per model for a workload."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thrifty.catalog import Catalog, ModelInfo, ModelPrice, resolve_price
from thrifty.errors import ConfigError, InvalidRequestError


@dataclass(frozen=True)
class Workload:
    name: str
    requests_per_month: float
    input_tokens: float
    output_tokens: float
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class EstimateRow:
    workload: str
    model: str
    monthly_usd: float | None
    baseline_usd: float | None
    saved_usd: float | None
    saved_pct: float | None


def price_of(name: str, catalog: Catalog | None) -> ModelPrice | None:
    info: ModelInfo | None = catalog.get(name) if catalog else None
    if info is not None:
        return info.price
    return resolve_price(name, name, None)


def monthly_cost(w: Workload, price: ModelPrice | None) -> float | None:
    if price is None:
        return None
    # Averages may be fractional, so this prices them directly rather than via whole-token usage.
    return w.requests_per_month * (w.input_tokens * price.input + w.output_tokens * price.output) / 1_000_000


def estimate(workloads: list[Workload], models: list[str], baseline: str, catalog: Catalog | None) -> list[EstimateRow]:
    rows = []
    base_price = price_of(baseline, catalog)
    for w in workloads:
        base = monthly_cost(w, base_price)
        for m in w.models or tuple(models):
            cost = monthly_cost(w, price_of(m, catalog))
            saved = None if cost is None or base is None else base - cost
            pct = None if saved is None or not base else 100.0 * saved / base
            rows.append(EstimateRow(w.name, m, cost, base, saved, pct))
    return rows


def load_workloads(path: Path) -> list[Workload]:
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read workloads file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"workloads file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        from thrifty.config import yaml_problem  # one line, not yaml's 8-line excerpt

        raise ConfigError(f"workloads file {path}: {yaml_problem(exc)}") from None
    items = raw.get("workloads") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a list of workloads (or a 'workloads:' key holding one)")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: workloads[{i}] must be a mapping")
        try:
            out.append(
                Workload(
                    name=str(item.get("name", f"workload-{i + 1}")),
                    requests_per_month=float(item["requests_per_month"]),
                    input_tokens=float(item.get("input_tokens", 0)),
                    output_tokens=float(item.get("output_tokens", 0)),
                    models=_model_names(item.get("models"), f"{path}: workloads[{i}].models"),
                )
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: workloads[{i}].{exc.args[0]}: required key is missing") from None
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: workloads[{i}]: token counts and volume must be numbers") from None
        check_workload(out[-1], f"{path}: workloads[{i}]")
    return out


def _model_names(value: Any, where: str) -> tuple[str, ...]:
    """A workload's ``models``: a list of names, or one name (``models: gpt-4o``), which
    ``tuple()`` would otherwise split into one "model" per character."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(m, str) and m.strip() for m in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a model name or a list of model names, got {value!r}")


def check_workload(w: Workload, where: str | None = None) -> None:
    """Volume and token counts must be finite and >= 0: NaN or inf would print as NaN in JSON
    (which strict parsers reject) and as nan/inf in the table."""
    for name in ("requests_per_month", "input_tokens", "output_tokens"):
        value = getattr(w, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidRequestError(f"{where or 'workload ' + w.name}: {name} must be a finite number >= 0, "
                                      f"got {value}")
