"""Policies under evaluation: loading them, fitting their learned parts, and the replay gateway.

A policy is the part of a thrifty config that decides what a request costs: the ``routing:``
section (routers, cascades, scorers, thresholds), plus optionally ``cache:`` and
``default_model:``. A ``--policy`` YAML file is either a whole thrifty config (those sections
are taken from it; its providers and models are replaced by the replay's) or just the content of
a ``routing:`` section. Without ``--policy`` the bundled default (``thrifty/data/default_policy.yaml``,
owned by the routing package) is used.

Fitting goes through ``thrifty.routing.fit.fit_policy(train, *, max_cost_share, baseline, spec)``,
which returns a fitted ``routing:`` section.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from thrifty.config import yaml_problem
from thrifty.errors import ConfigError
from thrifty.evaluation.dataset import OutcomeSet

if TYPE_CHECKING:
    from thrifty.gateway import Gateway
    from thrifty.providers.base import Provider

POLICY_SECTIONS = ("routing", "cache", "default_model")
REPLAY_PROVIDER = "replay"


class FitFn(Protocol):
    def __call__(self, train: OutcomeSet, *, max_cost_share: float | None, baseline: str,
                 spec: dict[str, Any]) -> dict[str, Any]: ...


GatewayFactory = Callable[[dict[str, Any], "dict[str, Provider] | None"], "Gateway"]


def default_policy_path() -> Path | None:
    ref = resources.files("thrifty") / "data" / "default_policy.yaml"
    path = Path(str(ref))
    return path if path.is_file() else None


def load_policy(path: str | Path | None) -> dict[str, Any]:
    """``{"routing": {...}, ...}`` from a policy file, or the bundled default when ``path`` is None."""
    if path is None:
        found = default_policy_path()
        if found is None:
            raise ConfigError("no bundled default policy (thrifty/data/default_policy.yaml is missing); "
                              "pass --policy FILE")
        path = found
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a policy must be a mapping (a routing section or a thrifty config)")
    return normalise_policy(raw)


def normalise_policy(raw: dict[str, Any]) -> dict[str, Any]:
    if any(k in raw for k in (*POLICY_SECTIONS, "providers", "models")):
        return {k: copy.deepcopy(raw[k]) for k in POLICY_SECTIONS if k in raw}
    return {"routing": copy.deepcopy(raw)}


def default_fit() -> FitFn | None:
    """The routing package's fitter, or None while it is not installed.

    When ``thrifty.routing.fit`` also offers ``fit_many(train, *, max_cost_shares, baseline,
    spec) -> [section, ...]`` it is used to fit every budget of a sweep in one go.
    """
    try:
        from thrifty.routing import fit as fit_module
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("thrifty.routing"):
            return None
        raise
    many = getattr(fit_module, "fit_many", None)
    return _Fitter(fit_module.fit_policy, many) if many is not None else fit_module.fit_policy  # type: ignore[no-any-return]


class _Fitter:
    def __init__(self, one: Callable[..., dict[str, Any]], many: Callable[..., list[dict[str, Any]]]) -> None:
        self._one = one
        self.fit_many = many

    def __call__(self, train: OutcomeSet, *, max_cost_share: float | None, baseline: str,
                 spec: dict[str, Any]) -> dict[str, Any]:
        return self._one(train, max_cost_share=max_cost_share, baseline=baseline, spec=spec)


def spec_max_cost_share(policy: dict[str, Any]) -> float | None:
    """The policy's ``routing.max_cost_share``, None when unset; ``ConfigError`` when it is not a
    positive finite number (checked before fitting, which would otherwise fail mid-run)."""
    from thrifty.routing.fit import check_share  # lazily: routing.fit imports this package

    routing = policy.get("routing") or {}
    value = routing.get("max_cost_share") if isinstance(routing, dict) else None
    return None if value is None else check_share(value, "routing.max_cost_share")


def replay_config(
    models: list[str],
    prices: dict[str, dict[str, float]],
    baseline: str,
    policy: dict[str, Any],
    *,
    base_url: str = "http://replay.invalid/v1",
    ledger_path: str | None = None,
) -> dict[str, Any]:
    """A full thrifty config whose only provider is the replay and whose models are the data's."""
    config: dict[str, Any] = {
        "providers": {REPLAY_PROVIDER: {"base_url": base_url, "max_retries": 0, "timeout_s": 60}},
        "models": {
            m: {"provider": REPLAY_PROVIDER, **({"price": prices[m]} if m in prices else {})} for m in models
        },
        "baseline": baseline,
        "default_model": policy.get("default_model") or baseline,
        "ledger": {"path": ledger_path, "enabled": True} if ledger_path else {"enabled": False},
    }
    for key in ("routing", "cache"):
        if policy.get(key):
            config[key] = copy.deepcopy(policy[key])
    return config


def standard_gateway(config: dict[str, Any], providers: dict[str, Provider] | None) -> Gateway:
    from thrifty.gateway import Gateway

    return Gateway.from_config(config, providers=providers)
