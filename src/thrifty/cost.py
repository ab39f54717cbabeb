"""Exact cost of a call from the usage the provider returned.

Rules (the part of gateways most often wrong):
- ``Usage`` is already normalised (see types.Usage.from_openai): prompt_tokens includes cached
  tokens, completion_tokens includes reasoning tokens.
- cost = uncached input * input price + cached input * cached price (input price when the
  model has no cache discount) + cache writes * cache-write price (input price when unknown)
  + completion * output price.
- Batch calls use the batch prices, or half the normal prices when only those are known
  (OpenAI's and Anthropic's Batch APIs both discount 50%): for a ``genai_ref`` price, half of
  genai-prices' price at the call's time. Cache reads and writes get the input's batch discount
  too (a write still costs more than an uncached input token).
- A price tiered by prompt size or varying in time (``ModelPrice.genai_ref``, from genai-prices:
  DeepSeek's peak and off-peak hours, a price change on a date) is asked of genai-prices with the
  call's real token counts at the time it is priced (the call's end; ``priced_at`` for a call
  priced later than it ran, a background response); the per-million figures are
  its base tier at start-up, for estimates and ordering only.
- Audio tokens (``Usage.audio_prompt_tokens`` / ``cached_audio_tokens`` /
  ``audio_completion_tokens``, all inside the totals) are priced at the audio rates and only the
  rest at the text rates. Cached audio without a ``cached_audio_input`` rate pays ``input_audio``
  (no discount, as for text). Audio with no audio rate known is priced at the text rate, which
  is too low (audio rates in genai-prices are 2x to 50x+ the text ones, OpenAI's 4x-17x), so
  such a cost is ``estimated``, not ``computed``: a figure flagged as a floor rather than none
  (budgets and reports still count it; ``unknown`` would drop the text part too).
- OpenAI's ``service_tier`` (``call_cost``'s ``service_tier``: the tier that served the call,
  pipeline/accounting.py ``served_service_tier``): "flex" pays the model's ``flex_input`` /
  ``flex_output`` when configured, else its batch price (OpenAI bills flex at Batch API rates);
  "priority" pays ``priority_input`` / ``priority_output`` (config, else genai-prices' priority
  variant). Cache reads and writes and audio keep their ratio to the input (output) price, as
  for batches. A tier whose price is unknown (priority for a model with no priority rate,
  "scale" or any other value) is priced at the standard rate and marked ``estimated``: a floor
  for priority, flagged as a guess for the rest. "default" / "auto" / none: the standard price.
- A provider-reported ``usage.cost`` wins over any computation.
- Pricing never fails a request: an unknown price gives ``None`` (recorded as unknown).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from thrifty.catalog import ModelPrice
from thrifty.types import Usage

BATCH_DISCOUNT = 0.5
_M = 1_000_000.0


@dataclass(frozen=True)
class Cost:
    """A call's cost and where the figure came from (``provider``, ``computed``, ``estimated``
    (some tokens counted offline or priced at a guessed rate) or ``unknown``), and the
    ``service_tier`` it was priced at (None: standard, none reported)."""

    usd: float | None
    source: str
    service_tier: str | None = None

    @property
    def known(self) -> bool:
        return self.usd is not None


def price_tokens(usage: Usage, price: ModelPrice | None, *, batch: bool = False) -> float | None:
    """What ``usage`` costs at ``price`` (ignores any provider-reported cost)."""
    return _priced(usage, price, batch)[0]


def _batch_rates(price: ModelPrice) -> tuple[float, float]:
    """(input, output) per-token rates of a Batch API call: the configured ones, else the
    standard ones at ``BATCH_DISCOUNT``."""
    return (price.batch_input if price.batch_input is not None else price.input * BATCH_DISCOUNT,
            price.batch_output if price.batch_output is not None else price.output * BATCH_DISCOUNT)


def _priced(usage: Usage, price: ModelPrice | None, batch: bool) -> tuple[float | None, bool]:
    """``usage``'s cost at ``price``, and whether part of it used a stand-in rate (audio as text)."""
    if price is None:
        return None, False
    audio_in = usage.audio_prompt_tokens - usage.cached_audio_tokens
    guessed = bool((audio_in and price.input_audio is None)
                   or (usage.cached_audio_tokens and price.cached_audio_input is None and price.input_audio is None)
                   or (usage.audio_completion_tokens and price.output_audio is None))
    # A batch call with batch rates of its own (configured) pays them; without, the Batch API
    # discount of the genai-prices price at the call's time (a job started at DeepSeek's peak
    # hour and answered off-peak pays the off-peak rate, not the start-up figure's).
    own_batch_rates = batch and (price.batch_input is not None or price.batch_output is not None)
    if price.genai_ref is not None and not own_batch_rates:
        tiered = _genai_price(usage, *price.genai_ref)
        if tiered is not None:
            return (tiered * BATCH_DISCOUNT if batch else tiered), guessed
    in_p, out_p = price.input, price.output
    cached_p = price.cached_input if price.cached_input is not None else in_p
    write_p = price.cache_write if price.cache_write is not None else in_p
    audio_in_p = price.input_audio if price.input_audio is not None else in_p
    audio_cached_p = price.cached_audio_input if price.cached_audio_input is not None else (
        price.input_audio if price.input_audio is not None else cached_p)
    audio_out_p = price.output_audio if price.output_audio is not None else out_p
    if batch:
        normal_in = in_p
        in_p, out_p = _batch_rates(price)
        # The batch discount applies to cache reads and writes too: Anthropic's Message Batches
        # charge "50% of the standard price on all usage: input, output, cache writes and cache
        # reads" (https://dev.to/neverpaytwice/claude-batch-api-half-price-if-you-can-wait-ecg),
        # and OpenAI's batch and cache discounts stack (cached input / 2,
        # https://aipromptshub.co/calc/openai-api-cost); so each gets the input's own batch ratio.
        # Capped at the batch input price instead, reads paid their full price (0.3 for 0.15 at
        # $3/M input) and writes, which cost more than input, less than theirs (1.5 for 1.875).
        ratio = in_p / normal_in if normal_in else BATCH_DISCOUNT
        cached_p = min(cached_p * ratio, in_p)
        write_p = write_p * ratio
        # No provider publishes batch audio rates: the Batch APIs' 50% off, as for text.
        audio_in_p, audio_out_p = audio_in_p * BATCH_DISCOUNT, audio_out_p * BATCH_DISCOUNT
        audio_cached_p = min(audio_cached_p * BATCH_DISCOUNT, audio_in_p)
    text_in = max(0, usage.uncached_prompt_tokens - audio_in)
    text_cached = max(0, usage.cached_tokens - usage.cached_audio_tokens)
    text_out = max(0, usage.completion_tokens - usage.audio_completion_tokens)
    usd = (
        text_in * in_p
        + text_cached * cached_p
        + usage.cache_write_tokens * write_p
        + audio_in * audio_in_p
        + usage.cached_audio_tokens * audio_cached_p
        + text_out * out_p
        + usage.audio_completion_tokens * audio_out_p
    ) / _M
    return usd, guessed


# The time a call ran, when it is priced later than that (``priced_at``); None: now.
_RAN_AT: ContextVar[datetime | None] = ContextVar("thrifty_cost_ran_at", default=None)


def now() -> datetime:
    """When a call is priced: the time ``priced_at`` set, else now (a function, so a test can
    move the clock)."""
    return _RAN_AT.get() or datetime.now(UTC)


@contextlib.contextmanager
def priced_at(when: datetime) -> Iterator[None]:
    """Price the calls of this block as of ``when``. A background response is priced when a
    retrieve or the reconciler settles it, possibly hours after it ran: a price that changes
    with the hour must be read at the hour it ran, not the settling one."""
    token = _RAN_AT.set(when)
    try:
        yield
    finally:
        _RAN_AT.reset(token)


def _genai_price(usage: Usage, model_ref: str, provider_id: str | None) -> float | None:
    """genai-prices' price of ``usage`` (its input_tokens include cache reads and writes)."""
    try:
        from genai_prices import Usage as GenaiUsage
        from genai_prices import calc_price

        tokens = GenaiUsage(input_tokens=usage.prompt_tokens, cache_read_tokens=usage.cached_tokens,
                            cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.completion_tokens,
                            input_audio_tokens=usage.audio_prompt_tokens,
                            cache_audio_read_tokens=usage.cached_audio_tokens,
                            output_audio_tokens=usage.audio_completion_tokens)
        return float(calc_price(tokens, model_ref=model_ref, provider_id=provider_id,
                                genai_request_timestamp=now()).total_price)
    except Exception:  # pricing never fails a request: fall back to the base tier
        return None


def call_cost(usage: Usage, price: ModelPrice | None, *, batch: bool = False,
              service_tier: str | None = None) -> Cost:
    """The cost of one upstream call: the provider's own figure when reported, else computed at
    the price of the ``service_tier`` that served it (see the module doc)."""
    if usage.cost is not None:
        return Cost(usage.cost, "provider", service_tier)
    floor = False
    if price is not None and not batch:
        price, batch, floor = _tier_price(price, service_tier)
    usd, guessed = _priced(usage, price, batch)
    if usd is None:
        return Cost(None, "unknown", service_tier)
    return Cost(usd, "estimated" if guessed or floor else "computed", service_tier)


# Tiers billed at the standard price ("auto" only when a response echoes the request's value).
_STANDARD_TIERS = frozenset({"default", "standard", "auto"})


def _tier_price(price: ModelPrice, service_tier: str | None) -> tuple[ModelPrice, bool, bool]:
    """The price a call served at ``service_tier`` pays, whether that is ``price``'s batch price,
    and whether a rate of the tier was unknown (the standard one stands in: an estimate)."""
    if service_tier is None or service_tier in _STANDARD_TIERS:
        return price, False, False
    if price.foreign_tiers and all(rate is None for rate in (price.flex_input, price.flex_output,
                                                              price.priority_input, price.priority_output)):
        return price, False, False  # a provider whose tiers are not OpenAI's (catalog.ModelPrice)
    if service_tier == "flex":
        if price.flex_input is None and price.flex_output is None:
            return price, True, False  # the batch price, computed as for a Batch API call
        # A half-configured flex price: the other side pays the batch rate.
        batch_in, batch_out = _batch_rates(price)
        return _rescaled(price, price.flex_input if price.flex_input is not None else batch_in,
                         price.flex_output if price.flex_output is not None else batch_out), False, False
    if service_tier == "priority" and (price.priority_input is not None or price.priority_output is not None):
        # A half-configured priority price: the other side at the standard rate, a floor.
        priority_in = price.priority_input if price.priority_input is not None else price.input
        priority_out = price.priority_output if price.priority_output is not None else price.output
        floor = price.priority_input is None or price.priority_output is None
        return _rescaled(price, priority_in, priority_out), False, floor
    return price, False, True


def _rescaled(price: ModelPrice, input_p: float, output_p: float) -> ModelPrice:
    """``price`` with new input and output rates, its cached, cache-write and audio rates moved
    by the same ratio (OpenAI's tier tables keep cached input at the standard table's share of
    input), flat (a genai-prices per-call look-up would price the standard tier)."""
    in_ratio = input_p / price.input if price.input else 1.0
    out_ratio = output_p / price.output if price.output else 1.0

    def scaled(rate: float | None, ratio: float) -> float | None:
        return None if rate is None else rate * ratio

    return replace(price, input=input_p, output=output_p, cached_input=scaled(price.cached_input, in_ratio),
                   cache_write=scaled(price.cache_write, in_ratio), input_audio=scaled(price.input_audio, in_ratio),
                   cached_audio_input=scaled(price.cached_audio_input, in_ratio),
                   output_audio=scaled(price.output_audio, out_ratio), genai_ref=None)


def estimate_cost(prompt_tokens: int, completion_tokens: int, price: ModelPrice | None) -> float | None:
    """Cost of a hypothetical call (no cache hits), for estimates and budget guards."""
    return price_tokens(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens), price)


def usd_header(v: float) -> str:
    """A request's cost for the ``x-thrifty-cost-usd`` header: plain decimals a program parses,
    to 12 places with trailing zeros dropped. Fixed at 8 places, a call under $0.000000005 (a
    small model, a short prompt) read as "0.00000000", as if it had cost nothing."""
    text = f"{v + 0.0:.12f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text  # a tiny negative correction rounds to zero


def usd_text(v: float, places: int = 6) -> str:
    """A dollar figure to ``places`` decimals for people, except that a figure that is not zero
    never reads as zero: one that would round to 0 gets two significant digits (``3.2e-07``).
    A call to a cheap model costs well under a millionth of a dollar, and ``0.000000`` spend,
    saving or budget read as "nothing" (a budget refusal said "$0.000000 of $0.000000")."""
    if not math.isfinite(v):  # a sum of finite figures can still overflow
        return "overflow"
    text = f"{v + 0.0:.{places}f}"  # + 0.0: -0.0 (a failed request's loss of nothing) is 0
    return f"{v:.1e}" if v != 0 and float(text) == 0 else text
