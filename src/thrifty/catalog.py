"""The model catalog: which models exist, who serves them, and what they cost.

Prices are resolved in this order, first hit wins:
1. the user's config (``models.<name>.price``), which can add or override anything;
2. the bundled seed table below (the default model hierarchy, from ~$0.01 to $10 per million
   output tokens; illustrative list prices, override them in config);
3. the maintained ``genai-prices`` database, looked up by the upstream model name, under the
   provider the model's provider ``price_provider`` or ``base_url`` names first
   (``genai_provider_for_url``), then by name alone;
4. unknown: the model still serves requests; its cost is recorded as unknown and warned.

Prices are flat per token, except those from genai-prices for models it prices by prompt size
(e.g. Gemini 2.5 Pro above 200k input tokens): such a price keeps its ``genai_ref`` and
cost.py asks genai-prices for each call's exact price. A config override makes a price flat.

Audio tokens (OpenAI audio and realtime models) have their own rates, ``input_audio``,
``output_audio`` and ``cached_audio_input``, read from genai-prices when it lists them or set in
config; without one, cost.py prices the audio at the text rate and marks the cost estimated.

OpenAI's ``service_tier`` rates: ``priority_input`` / ``priority_output`` from config or from
genai-prices' priority price variant (base tier, read at start-up), ``flex_input`` /
``flex_output`` from config only (flex otherwise pays the batch price, cost.py).

A partial ``price`` block (say only ``cached_input``) overrides those fields of the price found
in 2 or 3; for a model neither knows it must give both ``input`` and ``output``, else the price
stays unknown (warned at start-up, like 4). A block of ``input: 0`` and ``output: 0`` (a free
model: one's own hardware) takes nothing from 2 or 3: every rate it does not give is 0 too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

log = logging.getLogger("thrifty.catalog")


_AUDIO_FIELDS = ("input_audio", "output_audio", "cached_audio_input")
# Tokens of room for reasoning added to the limit of thrifty's own calls to a reasoning model
# (``models.NAME.reasoning_budget``; internal_calls.py).
DEFAULT_REASONING_BUDGET = 1024


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``None`` cached/batch prices fall back as documented in cost.py."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None
    # Audio rates; None: unknown (not "same as text"), see cost.py.
    input_audio: float | None = None
    output_audio: float | None = None
    cached_audio_input: float | None = None
    # OpenAI's ``service_tier`` rates (cost.py ``call_cost``): flex without its own rates pays the
    # batch price; priority without one is unknown (priced at the standard rate, as a floor).
    flex_input: float | None = None
    flex_output: float | None = None
    priority_input: float | None = None
    priority_output: float | None = None
    # Whether the provider bills the ``service_tier`` a request asks for when its response does
    # not say which one served it (OpenAI does; most OpenAI-compatible servers ignore the field).
    honours_service_tier: bool = False
    # A provider known to bill its own tiers otherwise (Groq reports "flex" and "on_demand" and bills
    # flex at the on-demand price): a tier its answer names is recorded but priced at the standard
    # rate, unless this model's flex_*/priority_* rates are configured. Unknown providers (a custom
    # base_url, an OpenAI-compatible proxy) are read as OpenAI's wire protocol says.
    foreign_tiers: bool = False
    source: str = "config"
    # (model_ref, provider_id) in genai-prices when the price there depends on the prompt's size.
    genai_ref: tuple[str, str | None] | None = None

    def with_overrides(self, values: dict[str, Any]) -> ModelPrice:
        changes = {k: v for k, v in values.items() if v is not None}
        if changes.keys() & {"input", "output", "cached_input", "cache_write", *_AUDIO_FIELDS}:
            changes["genai_ref"] = None  # the configured per-token prices apply to every size
        return replace(self, **changes)


@dataclass(frozen=True)
class ModelInfo:
    """One servable model: its public name, provider, upstream name, prices and tier."""

    name: str
    provider: str
    upstream_model: str
    price: ModelPrice | None
    context_window: int | None = None
    tier: str | None = None
    aliases: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    supports_json_mode: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # How thrifty's own calls (judge, classifier, compression...) are sent to it (internal_calls.py):
    # reasoning None is "auto" (by upstream name, or learned at run time); effort "auto" is by family.
    reasoning: bool | None = None
    reasoning_budget: int = DEFAULT_REASONING_BUDGET
    reasoning_effort: str | None = "auto"

    @property
    def output_price(self) -> float:
        """Output price for ordering models cheapest-first; unknown sorts last."""
        return self.price.output if self.price else float("inf")


# The seed hierarchy. Keys are thrifty model names; the upstream model ids are the ones the
# providers' OpenAI-compatible endpoints use.
SEED_MODELS: dict[str, dict[str, Any]] = {
    "qwen3-8b": {
        "upstream_model": "qwen3-8b",
        "tier": "nano",
        "context_window": 32768,
        "price": {"input": 0.005, "output": 0.01, "cached_input": 0.002},
    },
    "deepseek-v4-flash": {
        "upstream_model": "deepseek-v4-flash",
        "tier": "small",
        "context_window": 128000,
        "price": {"input": 0.07, "output": 0.25, "cached_input": 0.007},
    },
    "qwen3-32b": {
        "upstream_model": "qwen3-32b",
        "tier": "medium",
        "context_window": 32768,
        "price": {"input": 0.10, "output": 0.28, "cached_input": 0.04},
    },
    "deepseek-reasoner": {
        "upstream_model": "deepseek-reasoner",
        "tier": "large",
        "context_window": 128000,
        "price": {"input": 0.55, "output": 2.50, "cached_input": 0.14},
    },
    "gpt-4o": {
        "upstream_model": "gpt-4o",
        "tier": "premium",
        "context_window": 128000,
        "price": {"input": 2.50, "output": 10.00, "cached_input": 1.25, "batch_input": 1.25, "batch_output": 5.00},
    },
}


def seed_price(name: str) -> ModelPrice | None:
    entry = SEED_MODELS.get(name)
    if not entry:
        return None
    return ModelPrice(**entry["price"], source="seed")


@lru_cache(maxsize=512)
def lookup_genai_price(model_ref: str, provider_id: str | None = None) -> ModelPrice | None:
    """Per-million prices from genai-prices, or None when the database does not know the model.

    Prices are read by pricing 1,000 tokens of each kind (a small request, so tiered models
    give their base tier) and scaling; any failure of the library means "unknown", never an error.
    """
    try:
        from genai_prices import Usage, calc_price

        def per_million(**tokens: int) -> float:
            calc = calc_price(Usage(**tokens), model_ref=model_ref, provider_id=provider_id)
            return float(calc.total_price) * 1000.0

        input_p = per_million(input_tokens=1000)
        output_p = per_million(output_tokens=1000)
        # genai-prices counts cache reads and writes inside input_tokens, as these calls assume.
        try:
            cached_p: float | None = per_million(input_tokens=1000, cache_read_tokens=1000)
        except Exception:
            cached_p = None
        try:  # Anthropic bills cache writes at 1.25x input: without it they were priced as input
            write_p: float | None = per_million(input_tokens=1000, cache_write_tokens=1000)
        except Exception:
            write_p = None
        # Tiered by prompt size: a 2M-token prompt does not cost what the base tier says.
        flat = 2000 * input_p + output_p
        tiered = abs(per_million(input_tokens=2_000_000, output_tokens=1000) - flat) > 1e-9 * max(flat, 1.0)
        # Priced by the hour (DeepSeek's peak hours cost twice its off-peak ones) or changing on a
        # date to come: a figure read once at start-up would price every later call at that hour's
        # rate, so such a price is asked of genai-prices per call, at the call's time, as a tiered one.
        tiered = tiered or _varies_in_time(model_ref, provider_id)
        audio = _genai_audio_prices(model_ref, provider_id, per_million)
        service_tiers = _genai_service_tier_prices(model_ref, provider_id)
    except Exception as exc:  # LookupError for unknown models; anything else is a library fault
        log.debug("genai-prices has no price for %s: %s", model_ref, exc)
        return None
    return ModelPrice(input=input_p, output=output_p, cached_input=cached_p, cache_write=write_p,
                      input_audio=audio.get("input_audio"), output_audio=audio.get("output_audio"),
                      cached_audio_input=audio.get("cached_audio_input"),
                      priority_input=service_tiers.get("priority_input"),
                      priority_output=service_tiers.get("priority_output"),
                      source="genai-prices", genai_ref=(model_ref, provider_id) if tiered else None)


def _genai_service_tier_prices(model_ref: str, provider_id: str | None) -> dict[str, float]:
    """The priority rates genai-prices lists for the model (OpenAI's ``service_tier`` price
    variants), as ``priority_input`` and ``priority_output`` (none when it lists none). Pricing
    with a ``service_tier`` it does not list silently gives the standard price, so which tiers
    exist is read from the model's price record, as for audio. Flex is not read: it pays the
    batch price (cost.py), which is what OpenAI documents it at and genai-prices lists too."""
    try:
        from genai_prices import Usage, calc_price
        from genai_prices.data_snapshot import get_snapshot

        _, model = get_snapshot().find_provider_model(model_ref, None, provider_id, None)
        listed = {v.when.get("service_tier") for v in model.price_variants or () if v.prices.input_mtok is not None}
        out: dict[str, float] = {}
        if "priority" in listed:
            for kind, tokens in (("input", Usage(input_tokens=1000)), ("output", Usage(output_tokens=1000))):
                calc = calc_price(tokens, model_ref=model_ref, provider_id=provider_id,
                                  price_context={"service_tier": "priority"})
                out[f"priority_{kind}"] = float(calc.total_price) * 1000.0
    except Exception:  # an internal API of the library: without it, no tier rate is known
        return {}
    return out


def _varies_in_time(model_ref: str, provider_id: str | None) -> bool:
    """Whether genai-prices prices ``model_ref`` differently at another hour of the day or on a
    later date (within a year): sampled, as the library's constraints are its own business."""
    from genai_prices import Usage, calc_price

    now = datetime.now(UTC)
    day = now.replace(minute=30, second=0, microsecond=0)
    times = [day.replace(hour=h) for h in range(24)] + [now + timedelta(days=d) for d in (7, 30, 90, 180, 365)]
    try:
        tokens = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
        return len({calc_price(tokens, model_ref=model_ref, provider_id=provider_id,
                               genai_request_timestamp=t).total_price for t in times}) > 1
    except Exception:  # a library fault: the price stays the start-up figure, never unknown
        return False


def _genai_audio_prices(model_ref: str, provider_id: str | None,
                        per_million: Callable[..., float]) -> dict[str, float | None]:
    """The audio rates genai-prices lists for the model (None for each it does not list).

    Pricing audio tokens alone cannot tell "no audio rate" from "the audio rate equals the text
    rate" (genai-prices prices unlisted audio as text), so which rates exist is read from the
    model's price record; their values still come from pricing 1,000 tokens (base tier)."""
    try:
        from genai_prices.data_snapshot import get_snapshot

        _, model = get_snapshot().find_provider_model(model_ref, None, provider_id, None)
        listed = model.get_prices(datetime.now(tz=UTC))
        has = {key: getattr(listed, key, None) is not None
               for key in ("input_audio_mtok", "output_audio_mtok", "cache_audio_read_mtok")}
        out: dict[str, float | None] = {}
        if has["input_audio_mtok"]:
            out["input_audio"] = per_million(input_tokens=1000, input_audio_tokens=1000)
        if has["output_audio_mtok"]:
            out["output_audio"] = per_million(output_tokens=1000, output_audio_tokens=1000)
        if has["cache_audio_read_mtok"]:
            out["cached_audio_input"] = per_million(input_tokens=1000, cache_read_tokens=1000,
                                                    input_audio_tokens=1000, cache_audio_read_tokens=1000)
    except Exception:  # an internal API of the library: without it, no audio rate is known (text prices stand)
        return {}
    return out


def resolve_price(
    name: str, upstream_model: str, configured: dict[str, Any] | None, provider_hint: str | None = None
) -> ModelPrice | None:
    """The price of a model following the module's resolution order (config fields override)."""
    # The provider's own price first: a model several providers serve (an open-weights model on
    # Groq, Together, OpenRouter...) costs what the provider serving it charges, many such names
    # are listed under their provider only (a name-only look-up finds nothing), and a provider's
    # price beats the seed table's illustrative one (its deepseek-v4-flash is not DeepSeek's).
    # Free (a model on one's own hardware): no rate of a price found for the same name (Ollama's
    # deepseek-r1:7b is DeepSeek's R1 in genai-prices) may survive to charge its cached,
    # cache-write, batch or audio tokens; any of those the block gives still applies. So nothing
    # is looked up for it (genai-prices look-ups cost milliseconds at start-up).
    price = _resolved_price(name, upstream_model, configured, provider_hint)
    if price is None or provider_hint is None:
        return price
    if provider_hint in SERVICE_TIER_PROVIDERS:
        return replace(price, honours_service_tier=True)
    return replace(price, foreign_tiers=True)


# genai-prices provider ids whose API bills the ``service_tier`` a request asks for (OpenAI's flex,
# priority), so a response that does not say which tier served it is priced at the requested one.
SERVICE_TIER_PROVIDERS = frozenset({"openai"})


def _resolved_price(
    name: str, upstream_model: str, configured: dict[str, Any] | None, provider_hint: str | None
) -> ModelPrice | None:
    free = configured is not None and configured.get("input") == 0 and configured.get("output") == 0
    base = None if free else (
        (lookup_genai_price(upstream_model, provider_hint) if provider_hint else None)
        or seed_price(name) or seed_price(upstream_model)
        or lookup_genai_price(upstream_model, None))
    if configured:
        if base is None:
            if "input" not in configured or "output" not in configured:
                log.warning("model %s: partial price in config and no known base price; cost unknown", name)
                return None
            return ModelPrice(source="config", **{k: v for k, v in configured.items() if v is not None})
        return replace(base.with_overrides(configured), source="config")
    if base is None:
        log.warning("model %s (%s): no known price; its cost will be recorded as unknown", name, upstream_model)
    return base


@lru_cache(maxsize=64)
def genai_provider_for_url(base_url: str) -> str | None:
    """The genai-prices provider id whose API address ``base_url`` is (``https://api.groq.com/...``
    -> ``groq``), or None for an address it does not know (vLLM, Ollama, a mock, a proxy)."""
    try:
        from genai_prices.data_snapshot import get_snapshot

        return str(get_snapshot().find_provider(None, None, base_url).id)
    except Exception:  # LookupError for an unknown address; anything else is a library fault
        return None


@lru_cache(maxsize=1)
def genai_provider_ids() -> frozenset[str]:
    """Every provider id genai-prices prices under (``groq``, ``together``...); empty when the
    library cannot list them (then nothing is checked against it)."""
    try:
        from genai_prices.data_snapshot import get_snapshot

        return frozenset(str(p.id) for p in get_snapshot().providers)
    except Exception:  # an internal API of the library: without it, ids are not checked
        return frozenset()


class Catalog:
    """Lookup of models by name or alias, plus the baseline used to report savings."""

    def __init__(self, models: list[ModelInfo], baseline: str | None = None) -> None:
        self._models: dict[str, ModelInfo] = {}
        self._aliases: dict[str, str] = {}
        for m in models:
            self._models[m.name] = m
            for alias in m.aliases:
                self._aliases[alias] = m.name
        if baseline is None:
            priced = [m for m in models if m.price is not None]
            baseline = max(priced, key=lambda m: m.price.output if m.price else 0).name if priced else None
        self.baseline_name = baseline
        # What this process learned of its providers' refusals (providers/refusals.py): lesson
        # ("refuses:logprobs", ...) -> the model or route names it holds for. In memory only and
        # per catalog, so a reloaded config or a second gateway in one process starts afresh.
        self.lessons: dict[str, set[str]] = {}
        # How internal calls to each model are sent, as learned from its answers
        # (internal_calls.Shape by model name); the same lifetime as ``lessons``.
        self.learned_shapes: dict[str, Any] = {}
        # The shape config and name give each model (internal_calls.configured_shape), memoised.
        self.configured_shapes: dict[str, Any] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._models or name in self._aliases

    def __iter__(self) -> Any:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, name: str) -> ModelInfo | None:
        return self._models.get(name) or self._models.get(self._aliases.get(name, ""))

    @property
    def baseline(self) -> ModelInfo | None:
        return self.get(self.baseline_name) if self.baseline_name else None

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def by_price(self) -> list[ModelInfo]:
        """Models cheapest output price first (the hierarchy)."""
        return sorted(self._models.values(), key=lambda m: m.output_price)
