"""Building the configured providers (and accepting in-process ones for tests and evaluation)."""

from __future__ import annotations

from thrifty.config import Config
from thrifty.providers.base import Provider
from thrifty.providers.openai_compat import OpenAICompatProvider
from thrifty.redact import Redactor


def build_providers(config: Config, redactor: Redactor, overrides: dict[str, Provider] | None = None) -> dict[str, Provider]:
    """One provider per config entry; ``overrides`` replaces or adds providers by name."""
    providers: dict[str, Provider] = {}
    for name, pcfg in config.providers.items():
        providers[name] = OpenAICompatProvider(name, pcfg, redactor)
    providers.update(overrides or {})
    return providers
