"""Local presets of ``thrifty init``: a model server on the team's own hardware as the free tier.

Ollama, vLLM, LM Studio and llama.cpp's server all speak OpenAI's API and list what they serve at
``GET /v1/models``. No price table knows a model on one's own machine, and an unknown price is
left out of the report's spend and savings, which is backwards for the cheapest tier: so
``init`` asks the server which models it serves (``discover``) and writes each one with a price
of 0. The hierarchy then puts them first, and a cloud preset's premium model is the baseline.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from thrifty.cli.init_presets import Preset

# One look at the user's own server: it answers at once or is not running.
DISCOVERY_TIMEOUT_S = 3.0
# Written when the server cannot be asked; the comment on it says to replace it.
PLACEHOLDER = "my-local-model"


@dataclass(frozen=True)
class LocalPreset:
    name: str
    base_url: str | None  # None: no usual address, the URL must be given
    api_key_env: str | None  # None: the server takes no key (Ollama), no api_key line is written
    hint: str  # how the user lists the models the server has, for the placeholder's comment


LOCAL_PRESETS: dict[str, LocalPreset] = {
    "ollama": LocalPreset("ollama", "http://localhost:11434/v1", None, "`ollama list`"),
    # vLLM reads its own --api-key from VLLM_API_KEY: the same variable, empty when it takes none.
    "vllm": LocalPreset("vllm", "http://localhost:8000/v1", "VLLM_API_KEY", "GET /v1/models"),
    # Any other OpenAI-compatible server (LM Studio :1234, llama.cpp's llama-server :8080...):
    # its URL must be given, with --upstream-url or --provider local=URL.
    "local": LocalPreset("local", None, "LOCAL_API_KEY", "GET /v1/models"),
}

# Parameter counts in a model name: "llama3.2:3b", "Llama-3.1-8B-Instruct", "qwen2.5:0.5b",
# "mixtral:8x7b" (8 experts of 7B), "qwen3:30b-a3b" (30B, 3B active: the larger counts).
_SIZE = re.compile(r"(?<![\d.])(?:(\d+)x)?(\d+(?:\.\d+)?)b(?![a-z])", re.I)


def size_of(name: str) -> float | None:
    """The billions of parameters ``name`` says its model has, or None when it says none."""
    sizes = [float(n) * (int(x) if x else 1) for x, n in _SIZE.findall(name)]
    return max(sizes) if sizes else None


def tier_of(size: float | None) -> str:
    """A local model's tier by size: up to 4B nano, up to 9B small, larger medium; unsized small
    (a guess the user can edit: the default model is the first small one)."""
    if size is None:
        return "small"
    return "nano" if size <= 4 else "small" if size <= 9 else "medium"


_RANKS = {"nano": 0, "small": 1, "medium": 2}


def discover(base_url: str, api_key_env: str | None) -> tuple[list[str], str | None]:
    """The chat models the server at ``base_url`` lists, and why none when it lists none.

    Embedding models (Ollama lists ``nomic-embed-text`` beside chat models) are left out: they
    cannot answer a chat request."""
    request = urllib.request.Request(f"{base_url}/models", headers={"accept": "application/json"})
    key = os.environ.get(api_key_env, "") if api_key_env else ""
    if key:  # a vLLM started with --api-key refuses /v1/models without it
        request.add_header("authorization", f"Bearer {key}")
    # No proxy: the server is the user's own (localhost or their LAN), not the internet.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=DISCOVERY_TIMEOUT_S) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        refused = exc.code in (401, 403) and api_key_env
        return [], f"HTTP {exc.code}" + (f"; is {api_key_env} set to the server's key?" if refused else "")
    except (OSError, ValueError) as exc:  # refused, timed out, unresolvable, not JSON
        reason = getattr(exc, "reason", None) or exc
        return [], str(reason) or type(exc).__name__
    items = body.get("data") if isinstance(body, dict) else None
    names: list[str] = []
    for item in items if isinstance(items, list) else []:
        name = item.get("id") if isinstance(item, dict) else None
        # "auto" is thrifty's own name for "let the gateway choose": a model by it could not be asked for.
        if isinstance(name, str) and name.strip() and "embed" not in name.lower() and name != "auto" \
                and name not in names:
            names.append(name)
    return names, None if names else "it lists no chat model"


def local_preset(local: LocalPreset, url: str, key_env: str | None, models: list[str]) -> Preset:
    """The preset ``render`` writes for a local server serving ``models`` (a placeholder when
    none): smallest first, so the hierarchy goes up in size among the free models."""
    names = models or [PLACEHOLDER]
    # An unsized name is taken for a small model (tier_of): after the sized small ones.
    ordered = sorted(names, key=lambda m: (_RANKS[tier_of(size_of(m))], size_of(m) or 9.0))
    return Preset(name=local.name, base_url=url, api_key_env=key_env or "", hosts=(), genai_provider=None,
                  models=tuple((m, tier_of(size_of(m))) for m in ordered), free=True,
                  placeholder=not models, hint=local.hint)
