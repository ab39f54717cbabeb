"""What ``thrifty init`` writes: provider presets, the model hierarchy and its prices.

A preset (``data/init_presets.yaml``) names a provider's base URL, key variable and a
cheap-to-premium hierarchy of models it serves. The hierarchy written is the presets' models
together, cheapest output price first; the baseline is the most expensive premium model; the
default model the cheapest small one. Each price is read at init time from the catalog built
from the config about to be written, the same way `serve` will price it (the catalog reads a
model's price under the provider its ``base_url`` names: genai-prices lists Groq's, Together's
and most of OpenRouter's models under that provider only; a preset whose URL ``--upstream-url``
replaced by another host gets ``price_provider:`` to keep them). No price is written into the file.

A local preset (``ollama``, ``vllm``, ``local``: init_local.py) is a ``Preset`` built at init time
from the models its server lists, ``free``: each is written with a price of 0, so it sorts first
and its requests cost 0.0 rather than unknown. A URL whose host is no preset's, given without a
preset, keeps thrifty's seed hierarchy under one provider ``main``, as before presets existed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import yaml

from thrifty.catalog import SEED_MODELS, ModelPrice
from thrifty.config import load_config, url_has_credentials

# How each preset's provider serves POST /v1/responses: `chat` is written as `compat: {responses:
# chat}` (the gateway translates such a request to a chat completion), for a provider whose API has
# no /responses, or has it for only some models or builds: chat works wherever chat does. What the
# providers' own documentation said (late 2026):
RESPONSES_MODE: dict[str, str] = {
    "openai": "native",  # the Responses API's own home
    "deepseek": "chat",  # deepseek-v4-flash only, since 2026-07 (api-docs.deepseek.com guides/responses_api)
    "openrouter": "native",  # POST /api/v1/responses, stateless (openrouter.ai/docs, SDK `responses.send`)
    "together": "chat",  # beta, listed models only (docs.together.ai/docs/inference/responses-api)
    "groq": "native",  # "fully compatible", beta, stateless (console.groq.com/docs/responses-api)
    "mistral": "chat",  # none: chat/completions, embeddings, agents, conversations (docs.mistral.ai/api)
    "ollama": "chat",  # only from v0.13.3, stateless (docs.ollama.com/openai): older builds 404
    "vllm": "chat",  # /v1/responses since v0.10 (docs.vllm.ai serving_responses), not every build/model
    "local": "chat",  # llama.cpp's llama-server has none (ggml-org/llama.cpp#19138, open)
}


@dataclass(frozen=True)
class Preset:
    name: str
    base_url: str
    api_key_env: str
    hosts: tuple[str, ...]
    genai_provider: str | None
    models: tuple[tuple[str, str], ...]  # (name as the provider's API names it, tier)
    free: bool = False  # a server on the user's own hardware: every model written with price 0
    placeholder: bool = False  # its models are a stand-in (the server could not be asked)
    hint: str = ""  # how the user lists the server's models, for the placeholder's comment


@dataclass
class Entry:
    """One model line of the written config."""

    name: str
    upstream: str
    provider: str
    tier: str
    price: ModelPrice | None = None
    free: bool = False
    placeholder: str = ""  # the hint of a placeholder model, else ""


@cache
def presets() -> dict[str, Preset]:
    raw = yaml.safe_load(resources.files("thrifty").joinpath("data/init_presets.yaml").read_text(encoding="utf-8"))
    return {name: Preset(name=name, base_url=p["base_url"], api_key_env=p["api_key_env"],
                         hosts=tuple(p.get("hosts", ())), genai_provider=p.get("genai_provider"),
                         models=tuple((m["name"], m["tier"]) for m in p["models"]))
            for name, p in raw.items()}


def preset_for_url(url: str) -> Preset | None:
    """The preset whose API lives at ``url``'s host, if any."""
    host = (urlsplit(url).hostname or "").lower()
    return next((p for p in presets().values() if host in p.hosts), None)


@contextlib.contextmanager
def _quiet_catalog() -> Iterator[None]:
    """The catalog warns about each unpriced model; the written comment says it instead."""
    logger = logging.getLogger("thrifty.catalog")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _entries(groups: list[tuple[str, Preset | None]]) -> list[Entry]:
    """The models of every (provider key, preset) pair; ``None``: the seed hierarchy."""
    entries = [Entry(name=m, upstream=m, provider=key, tier=tier, free=p.free,
                     placeholder=p.hint if p.placeholder else "")
               for key, p in groups if p is not None for m, tier in p.models]
    entries += [Entry(name=m, upstream=m, provider=key, tier=str(seed["tier"]))
                for key, p in groups if p is None for m, seed in SEED_MODELS.items()]
    # Names stay unique: a name two providers share gets its provider's key in front.
    counts = Counter(e.name for e in entries)
    for e in entries:
        if counts[e.name] > 1:
            e.name = f"{e.provider}/{e.upstream}"
    return entries


def price_entries(providers: dict[str, dict[str, Any]], entries: list[Entry]) -> None:
    """Set each entry's price as the catalog of the written config will have it."""
    models = {e.name: {"provider": e.provider, **({"upstream_model": e.upstream} if e.upstream != e.name else {}),
                       **({"price": {"input": 0, "output": 0}} if e.free else {})}
              for e in entries}
    with _quiet_catalog():
        catalog = load_config({"providers": providers, "models": models}, env={}).build_catalog()
    for e in entries:
        info = catalog.get(e.name)
        e.price = info.price if info else None


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@+\-]*")


def yaml_name(name: str) -> str:
    """``name`` as written in the YAML: plain when it reads back as itself in block and flow
    context (``llama3.2:3b``, ``Qwen/Qwen3.5-9B``), else a double-quoted string. A local server's
    names are the server's to choose: one like ``yes``, ``1.5`` or ``a, b`` must not become another
    value or another key."""
    if _PLAIN.fullmatch(name) and not name.endswith(":") and yaml.safe_load(f"[{name}]") == [name]:
        return name
    return json.dumps(name)  # JSON's string syntax is YAML's double-quoted scalar


def usd(value: float) -> str:
    """A price as written in the comments: two decimals at least, more when they matter."""
    text = f"{value:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _price_comment(e: Entry) -> str:
    if e.placeholder:
        return f"placeholder: replace with a model the server serves ({e.placeholder})"
    if e.free:
        return "free: runs on your own hardware (see the note above)"
    if e.price is None:
        return "no known price: add a price: block (input, output) or costs are recorded as unknown"
    text = f"${usd(e.price.input)} in / ${usd(e.price.output)} out per million tokens"
    if e.price.cached_input is not None:
        text += f" (cached in ${usd(e.price.cached_input)})"
    return text


def _price_provider(preset: Preset | None, url: str) -> str | None:
    """The ``price_provider`` to write: the preset's genai-prices id when ``url`` is not the
    preset's own API (``--upstream-url`` at a proxy or the mock upstream), whose host names no
    provider, so the catalog would not find the names genai-prices lists under it only."""
    if preset is None or preset.genai_provider is None or preset_for_url(url) is preset:
        return None
    return preset.genai_provider


def render(groups: list[tuple[str, Preset | None]], urls: dict[str, str], key_envs: dict[str, str]) -> str:
    """The whole config text for the providers ``groups`` (key, preset or None for the seed)."""
    price_providers = {key: _price_provider(p, urls[key]) for key, p in groups}
    # A URL with user:password@ is its own credential: a request can carry only one (config.py).
    in_url = {key: url_has_credentials(urls[key]) for key, _ in groups}
    providers = {key: {"base_url": urls[key], **({} if in_url[key] else {"api_key": "x"}),
                       **({"price_provider": pp} if (pp := price_providers[key]) else {})}
                 for key, _ in groups}
    entries = _entries(groups)
    price_entries(providers, entries)
    # Cheapest output first; unknown prices last; ties keep the presets' order (a local preset's
    # models come smallest first, init_local.py).
    entries.sort(key=lambda e: e.price.output if e.price else float("inf"))
    premium = [e for e in entries if e.tier == "premium" and e.price] or [e for e in entries if e.price] or entries
    # Among equal prices the first wins, except free models (local ones only): the largest, last.
    baseline = max(premium, key=lambda e: (e.price.output if e.price else 0.0, entries.index(e) if e.free else 0))
    # A free model serves `auto` whenever there is one: that is what a local server is there for.
    pool = [e for e in entries if e.free] or entries
    default = next((e for tier in ("small", "nano", "medium") for e in pool if e.tier == tier), pool[0])
    below = entries.index(baseline) - 1

    prov_lines: list[str] = []
    for key, p in groups:
        prov_lines += [f"  {key}:", f"    base_url: {urls[key]}"]
        if in_url[key]:
            prov_lines.append("    # api_key: none: base_url carries the credentials (a request takes only one)")
        elif not key_envs[key]:
            prov_lines.append("    # api_key: ${MY_KEY}                # the server takes none; add one if yours does")
        elif p is not None and p.free:  # a local server often takes no key: unset is no warning
            prov_lines.append(f"    api_key: ${{{key_envs[key]}:-}}".ljust(37) + "# empty: no key sent (the server takes none)")
        else:
            prov_lines.append(f"    api_key: ${{{key_envs[key]}}}".ljust(37) + "# stays in the gateway; clients never see it")
        prov_lines += [
                       "    timeout_s: 120                   # a call (or a stream's gap between chunks) that takes longer fails",
                       "    max_retries: 2                   # retries on connection errors, 429 and 5xx (honours Retry-After)"]
        # A preset not in the table is one nobody checked: chat, the choice that works everywhere.
        if p is not None and RESPONSES_MODE.get(p.name, "chat") == "chat":
            prov_lines.append("    compat: {responses: chat}".ljust(37)
                              + "# Responses API served as chat: its /responses is missing or partial")
        if price_providers[key]:
            prov_lines.append(f"    price_provider: {price_providers[key]}".ljust(37)
                              + f"# priced as {price_providers[key]}'s models: base_url is not its API")
    model_lines: list[str] = []
    for e in entries:
        model_lines += [f"  {yaml_name(e.name)}:".ljust(37) + "# " + _price_comment(e), f"    provider: {e.provider}"]
        if e.upstream != e.name:
            model_lines.append(f"    upstream_model: {yaml_name(e.upstream)}      # the name {e.provider}'s API knows it by")
        model_lines.append(f"    tier: {e.tier}")
        if e.free:
            model_lines.append("    price: {input: 0, output: 0}")
        if e is baseline:
            model_lines.append("    aliases: [premium]")
            if below >= 0:
                model_lines.append(f"    fallbacks: [{yaml_name(entries[below].name)}]".ljust(37)
                                   + f"# used when {e.name}'s retries are exhausted")
    note = ""
    if any(e.free for e in entries):
        note += ("# `price: {input: 0, output: 0}`: a model on your own server costs no API fee, so its requests\n"
                 "# are recorded at $0 and the report counts the baseline's whole cost as saved. That counts no\n"
                 "# hardware or power cost: to count one, write what a million tokens costs you (the box's hourly\n"
                 "# cost over the millions of tokens it serves an hour), e.g. `price: {input: 0.02, output: 0.08}`.\n")
    if any(p is None for _, p in groups):
        note += ("# These are thrifty's seed model names: the server at base_url must serve each one under\n"
                "# this name (the mock upstream answers any name). For vLLM, Ollama or another server, rename\n"
                "# them to models it serves, or set `upstream_model:` to the name it knows (or run `thrifty init\n"
                "# --provider ollama`, `vllm` or `local`, which writes the models the server lists, free).\n")
    text = resources.files("thrifty").joinpath("data/starter.yaml").read_text(encoding="utf-8")
    for placeholder, value in (("__PROVIDERS__", "\n".join(prov_lines)), ("__MODELS_NOTE__", note),
                               ("__MODELS__", "\n".join(model_lines)), ("__BASELINE__", yaml_name(baseline.name)),
                               ("__DEFAULT_MODEL__", yaml_name(default.name))):
        text = text.replace(placeholder, value)
    return text
