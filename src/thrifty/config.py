"""Typed configuration, read from one YAML file (or a dict) at the edge of the program.

``${VAR}`` and ``${VAR:-default}`` (default also when VAR is empty) in any string value are
replaced from the environment when the file is loaded; a malformed ``${`` is refused.
Validation errors become one ``ConfigError`` whose message lists each problem as
``key.path: what is wrong (expected ...)``. Sections that later capabilities own
(routes, cache, compression, batching, auth) are typed here too so that a typo anywhere is
caught by ``thrifty config check``. Reading the YAML and ``${VAR}`` interpolation live in
``thrifty.config_source`` (re-exported here).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thrifty.batching.config import BatchingConfig
from thrifty.cache.config import CacheConfig
from thrifty.capture.config import CaptureConfig
from thrifty.catalog import (
    DEFAULT_REASONING_BUDGET,
    Catalog,
    ModelInfo,
    genai_provider_for_url,
    genai_provider_ids,
    resolve_price,
)
from thrifty.compress.config import CompressionConfig
from thrifty.config_nulls import empty_subsections
from thrifty.config_source import interpolate_env, missing_env_vars, read_raw, yaml_problem
from thrifty.errors import ConfigError, printable
from thrifty.ops.config import AuthConfig
from thrifty.providers.compat import CompatConfig
from thrifty.redact import mask_credentials
from thrifty.routing.config import RoutingConfig

# Optional secrets and service URLs: an empty value (``${THRIFTY_KEY_SALT}`` with the variable
# unset becomes "") means "not set", never an empty salt, admin key or URL.
# (section, key); section "" is the top level; providers' api_key is handled for each provider.
_OPTIONAL_SECRETS = (("", "redis_url"), ("ledger", "dsn"), ("cache", "redis_url"), ("auth", "admin_key"),
                     ("auth", "key_salt"))
# Sections where an empty value (``server:`` with nothing under it) means "all defaults", as ``{}``.


class KeyProblems(ValueError):
    """Problems found by a validator, each at a key path relative to the model it validates.

    Pydantic keeps the exception on the error (``ctx.error``), so ``format_validation_error``
    prints each as ``<where the model is>.<path>: <message>``: a cross-key check on ``routing``
    can then name ``routing.routes.faq.scorer.judge_model`` rather than just ``routing``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))


def _unset_blank(section: Any, key: str) -> Any:
    """``section`` with ``key`` set to None when it is an empty (or all-space) string."""
    if isinstance(section, dict) and isinstance(section.get(key), str) and not section[key].strip():
        return {**section, key: None}
    return section


def url_has_credentials(url: str) -> bool:
    """``user:password@`` in ``url``: then it is the provider's credential (``thrifty init``
    writes no api_key beside it, and a config with both is refused)."""
    return "@" in urlsplit(url).netloc


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL redis-py would refuse, or None. Why at load: redis-py
    reads it only when a client is made, so a bad port passed ``config check`` with a
    traceback and made every limited request of ``serve`` fail. The URL (and its password)
    is never quoted."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - parsing it is the check (a non-number or out of 0-65535 raises)
    except ValueError:
        return ("not a valid URL: its port is not a number from 0 to 65535 or its host is malformed "
                "(percent-encode / ? # @ : in the password)")
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must start with redis://, rediss:// or unix://"
    try:  # the rest (``?db=``, ``?socket_timeout=``) as redis-py reads it, when it is installed
        from redis.connection import parse_url
    except ImportError:
        return None
    try:
        parse_url(url.strip())
    except ValueError as exc:  # redis-py's messages name the parameter, not its value
        return f"not a valid Redis URL: {mask_credentials(str(exc))}"
    return None


_SECRET_KEY_RE = re.compile(r"(api_key|dsn|redis_url|secret|password|token|admin_key)", re.I)
# A key that is itself a secret (``providers.main.api_key``), not one that merely names one
# (``auth.default_completion_tokens``).
_SECRET_LEAF_RE = re.compile(r"(api_key|admin_key|secret|password|token|salt)$", re.I)
# A provider's headers carry its credential as often as api_key does (Azure's ``api-key``,
# ``x-api-key``), under any name and in any shape (``headers: "api-key: PLAINKEY"``): a value
# there is hidden whole here (a config error may quote any of them; the gateway itself masks the
# values of credential-named headers and scheme tokens: redact.provider_secrets).
_HEADERS_RE = re.compile(r"(^|\.)headers(\.|$)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ProviderConfig(_Strict):
    """An OpenAI-compatible endpoint."""

    base_url: str
    api_key: str | None = Field(default=None, repr=False)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_base_s: float = Field(default=0.25, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    max_connections: int = Field(default=256, ge=1)
    kind: Literal["openai"] = "openai"
    # What this server does not accept of OpenAI's current protocol (providers/compat.py).
    compat: CompatConfig = Field(default_factory=CompatConfig)
    # The genai-prices provider id its models are priced under (``groq``), for a base_url that
    # does not name the provider (a proxy, a gateway, the mock upstream): many open-weights names
    # are listed under their provider only, so without it they would have no known price.
    # None: the provider the base_url's host names, if any (catalog.genai_provider_for_url).
    price_provider: str | None = Field(default=None, min_length=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> ProviderConfig:
        # aiohttp refuses a request carrying both (a ValueError on every call, a 500 for the
        # client): said here, at load, instead. Credentials in the URL alone are basic auth.
        if url_has_credentials(self.base_url) and (
                self.api_key or any(h.lower() == "authorization" for h in self.headers)):
            raise ValueError("base_url carries credentials (user:password@) and api_key or an Authorization "
                             "header is set too; a request can carry only one: keep one of them")
        return self

    @field_validator("price_provider")
    @classmethod
    def _price_provider(cls, v: str | None) -> str | None:
        # A misspelt id would leave every model it is meant to price silently unpriced.
        known = genai_provider_ids()
        if v is not None and known and v not in known:
            close = difflib.get_close_matches(v, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"one of {', '.join(sorted(known))}"
            raise ValueError(f"unknown genai-prices provider {v!r} ({hint})")
        return v


class PriceConfig(_Strict):
    """USD per million tokens."""

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)
    batch_input: float | None = Field(default=None, ge=0)
    batch_output: float | None = Field(default=None, ge=0)
    # Audio tokens (OpenAI audio/realtime models); default: genai-prices', else the text price, estimated.
    input_audio: float | None = Field(default=None, ge=0)
    output_audio: float | None = Field(default=None, ge=0)
    cached_audio_input: float | None = Field(default=None, ge=0)
    # OpenAI ``service_tier`` rates; default: flex pays the batch price, priority genai-prices'
    # (else the standard price, recorded as an estimate: a floor).
    flex_input: float | None = Field(default=None, ge=0)
    flex_output: float | None = Field(default=None, ge=0)
    priority_input: float | None = Field(default=None, ge=0)
    priority_output: float | None = Field(default=None, ge=0)


class ModelConfig(_Strict):
    provider: str
    upstream_model: str | None = None
    tier: str | None = None
    price: PriceConfig | None = None
    context_window: int | None = Field(default=None, gt=0)
    aliases: list[str] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)
    supports_json_mode: bool = True
    # thrifty's own calls to this model (judge, classifier, compression...): auto recognises
    # reasoning models by upstream name and learns the rest at run time (internal_calls.py).
    reasoning: bool | Literal["auto"] = "auto"
    reasoning_budget: int = Field(default=DEFAULT_REASONING_BUDGET, ge=0, le=100_000)
    # OpenAI's values; "auto": by family (low, or none sent); null: never sent.
    reasoning_effort: Literal["auto", "none", "minimal", "low", "medium", "high", "xhigh"] | None = "auto"

    @field_validator("reasoning", mode="before")
    @classmethod
    def _reasoning(cls, v: Any) -> Any:
        # One plain message instead of pydantic's one per member of the union.
        if v is True or v is False or v == "auto":
            return v
        raise ValueError(f"expected auto, true or false (got {v!r})")


class LedgerConfig(_Strict):
    path: str = "thrifty-ledger.db"
    dsn: str | None = Field(default=None, repr=False)
    enabled: bool = True
    # Writes are batched off the response path; a failed batch is retried this many times
    # before it is spilled to ``<path>.failed.jsonl`` and reported.
    write_retries: int = Field(default=5, ge=0)
    flush_interval_s: float = Field(default=0.05, gt=0)
    # Rows held in memory while the database fails; past this, failing batches are spilled at once
    # instead of waiting out their retries (a long outage under load must not exhaust memory).
    max_queued_rows: int = Field(default=100_000, ge=1)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4_000_000, gt=0)
    request_timeout_s: float = Field(default=300.0, gt=0)
    # The whole request body must arrive within this many seconds of the headers, else a 408
    # (server/body.py): uvicorn has no body timeout, so a trickled body held a connection forever.
    body_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    # uvicorn's limit_concurrency: past this many open connections (or requests in progress),
    # new requests get a 503 at once instead of the process running out of file descriptors.
    # None (the default): no limit.
    max_connections: int | None = Field(default=None, ge=1)
    log_prompts: bool = False
    # Browser origins allowed to call the gateway directly (CORS), e.g. ["https://app.example.com"];
    # ["*"] allows any. Empty (the default): no CORS headers, so browsers refuse cross-origin calls.
    cors_origins: list[str] = Field(default_factory=list)
    # GET /metrics needs the admin key (auth.admin_key) when true; false (the default) keeps it
    # open so Prometheus scrapes need no credentials.
    metrics_key_required: bool = False
    # Background Responses API requests nobody retrieves through thrifty: every this many seconds
    # the gateway asks their provider and writes the real usage over the create's estimate
    # (server/reconcile.py). 0 turns the loop off (`thrifty ledger reconcile` does it on demand).
    reconcile_background_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    # Only entries at least this old: a client that polls its own response settles it first,
    # and the pass does not ask the provider about a response created a moment ago.
    reconcile_background_min_age_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)


class Config(_Strict):
    """The whole configuration file."""

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    baseline: str | None = None
    default_model: str | None = None
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    # Sections owned by later capabilities; each module validates its own part.
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    # Absent (or null in a dict built in Python): no cache stage. Present, even empty (`cache:`
    # or `cache: {}`): the cache with its defaults; `cache.enabled: false` turns it off. docs/caching.md.
    cache: CacheConfig | None = None
    # Absent: nothing captured. Present, even empty: a sample of traffic written as `thrifty outcomes
    # collect` prompts (capture/, docs/configuration.md). Opt-in: prompts are stored in plain text.
    capture: CaptureConfig | None = None
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    redis_url: str | None = Field(default=None, repr=False)
    # Where relative paths (ledger, cache files) are resolved from: the config file's folder.
    base_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_values(cls, data: Any) -> Any:
        """An empty section is its defaults; an empty optional secret or URL is unset (None).

        Why: YAML reads ``server:`` with nothing under it as null, and ``${VAR}`` with VAR unset
        as "" (so a starter file still loads); an empty ``auth.key_salt`` would otherwise key
        every hash with an empty secret, and an empty URL would be tried as one."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # The other empty sections take their defaults in ``empty_subsections`` below; `cache`
        # may be null by type, but an empty `cache:` still means its defaults, not "off".
        if "cache" in data and data["cache"] is None:
            data["cache"] = {}
        if "capture" in data and data["capture"] is None:  # as `cache:` above
            data["capture"] = {}
        for section, key in _OPTIONAL_SECRETS:
            if not section:
                data = _unset_blank(data, key)
            elif section in data:
                data[section] = _unset_blank(data[section], key)
        if isinstance(data.get("providers"), dict):
            data["providers"] = {name: _unset_blank(p, "api_key") for name, p in data["providers"].items()}
        return empty_subsections(data, cls)

    def _alias_problems(self) -> list[tuple[str, str]]:
        """An alias must name one model and nothing else: a request for it would otherwise reach
        whichever model was listed last, or shadow a model or a route selector."""
        problems: list[tuple[str, str]] = []
        owner: dict[str, str] = {}
        for name, m in self.models.items():
            for alias in m.aliases:
                key = f"models.{name}.aliases"
                if alias in self.models and alias != name:
                    problems.append((key, f"{alias!r} is the name of another model"))
                elif alias == "auto" or alias.startswith("route:"):
                    problems.append((key, f"{alias!r} is reserved for routing"))
                elif alias in owner and owner[alias] != name:
                    problems.append((key, f"{alias!r} is also an alias of {owner[alias]!r}"))
                owner.setdefault(alias, name)
        return problems

    def _servable(self, name: str) -> bool:
        """A model name or alias of this config (what the catalog will know)."""
        return name in self.models or any(name in m.aliases for m in self.models.values())

    def _override_problems(self) -> list[tuple[str, str]]:
        """``cache.routes`` / ``compression.routes`` keys that no request can match: the lookups
        (cache/policy.py ``route_config``, compress/config.py ``for_request``) try the request's
        route name, then the model name it asked for (a model, an alias, ``auto`` or
        ``route:NAME``), then (compression only) ``*``. A typo there was silently never applied."""
        routes = self.routing.routes
        problems: list[tuple[str, str]] = []
        sections: list[tuple[str, list[str], bool]] = [("compression", list(self.compression.routes), True)]
        if self.cache is not None:
            sections.insert(0, ("cache", list(self.cache.routes), False))
        for section, names, star in sections:
            for name in names:
                if name == "*" and not star:
                    problems.append((f"{section}.routes.*", "'*' is not a route or model name (the keys of "
                                     "`cache` itself are the defaults every route inherits)"))
                elif not (name in routes or self._servable(name) or name == "auto" or (star and name == "*")
                          or (name.startswith("route:") and name[len("route:"):] in routes)):
                    known = ", ".join([*sorted(routes), *sorted(self.models)]) or "none"
                    problems.append((f"{section}.routes.{name}", f"no routing route, model or alias is called "
                                     f"{name!r} (this config has: {known}; or auto{', *' if star else ''})"))
        return problems

    def _model_ref_problems(self) -> list[tuple[str, str]]:
        """Model and route names other sections use only later (a batch run, a compression)."""
        problems: list[tuple[str, str]] = []
        refs = {"compression.model": self.compression.model,
                "compression.system_prompt.ab_check.judge_model":
                    self.compression.system_prompt.ab_check.judge_model if self.compression.system_prompt.ab_check
                    else None}
        for key, name in refs.items():
            if name is not None and not self._servable(name):
                problems.append((key, f"unknown model {name!r} (expected one of {sorted(self.models)})"))
        b = self.batching
        if b.model is not None:
            route = b.model[len("route:"):] if b.model.startswith("route:") else None
            auto_ok = b.model == "auto" and (self.routing.routes or self.default_model)
            if not (self._servable(b.model) or auto_ok or (route is not None and route in self.routing.routes)):
                problems.append(("batching.model", f"unknown model {b.model!r} (expected one of {sorted(self.models)})"))
        if b.route is not None and b.route not in self.routing.routes:
            problems.append(("batching.route", f"unknown route {b.route!r} (routing.routes has: "
                             f"{', '.join(sorted(self.routing.routes)) or 'none'})"))
        return problems

    @model_validator(mode="after")
    def _references(self) -> Config:
        problems: list[tuple[str, str]] = []
        for name, m in self.models.items():
            if m.provider not in self.providers:
                problems.append((f"models.{name}.provider",
                                 f"unknown provider {m.provider!r} (expected one of {sorted(self.providers)})"))
            for fb in m.fallbacks:
                if fb not in self.models:
                    problems.append((f"models.{name}.fallbacks", f"unknown model {fb!r}"))
        problems += self._alias_problems()
        if self.baseline is not None and self.baseline not in self.models:
            problems.append(("baseline", f"unknown model {self.baseline!r} (expected one of {sorted(self.models)})"))
        if self.default_model is not None and self.default_model not in self.models:
            problems.append(("default_model", f"unknown model {self.default_model!r}"))
        problems += self._override_problems() + self._model_ref_problems()
        problems += [(key, problem) for key, url in (("redis_url", self.redis_url),
                                                   ("cache.redis_url", self.cache.redis_url if self.cache else None))
                     if url and (problem := redis_url_problem(url))]
        if self.server.metrics_key_required and not self.auth.admin_key:
            problems.append(("server.metrics_key_required", "needs auth.admin_key: /metrics is then read with it"))
        if problems:
            raise KeyProblems(problems)
        return self

    def resolve_path(self, path: str) -> str:
        if path == ":memory:" or os.path.isabs(path) or not self.base_dir:
            return path
        return os.path.join(self.base_dir, path)

    def _genai_provider(self, provider: str) -> str | None:
        """genai-prices' id of the provider a model is served by: its ``price_provider``, else the
        one its ``base_url`` names."""
        entry = self.providers.get(provider)
        if entry is None:
            return None
        return entry.price_provider or genai_provider_for_url(entry.base_url)

    def build_catalog(self) -> Catalog:
        infos = []
        for name, m in self.models.items():
            upstream = m.upstream_model or name
            configured = m.price.model_dump(exclude_none=True) if m.price else None
            infos.append(
                ModelInfo(
                    name=name,
                    provider=m.provider,
                    upstream_model=upstream,
                    price=resolve_price(name, upstream, configured, self._genai_provider(m.provider)),
                    context_window=m.context_window,
                    tier=m.tier,
                    aliases=tuple(m.aliases),
                    fallbacks=tuple(m.fallbacks),
                    supports_json_mode=m.supports_json_mode,
                    reasoning=None if m.reasoning == "auto" else m.reasoning,
                    reasoning_budget=m.reasoning_budget,
                    reasoning_effort=m.reasoning_effort,
                )
            )
        return Catalog(infos, baseline=self.baseline)


def load_config(source: str | Path | dict[str, Any], env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config; raise ``ConfigError`` listing every problem."""
    raw, base_dir = read_raw(source)
    data = interpolate_env(raw, env)
    written = data.get("base_dir")
    if base_dir and not written:
        data["base_dir"] = base_dir
    elif base_dir and isinstance(written, str) and not os.path.isabs(written):
        # A relative ``base_dir: data`` in a file means beside the file, like every other relative
        # path in it: taken from the working directory, ``thrifty serve`` started from two folders
        # wrote two ledgers.
        data["base_dir"] = os.path.join(base_dir, written)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    lines: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, KeyProblems):
            lines.extend(f"{'.'.join(p for p in (loc, path) if p) or '(top level)'}: {msg}"
                         for path, msg in cause.problems)
            continue
        loc = loc or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/configuration.md)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            # Never echo a secret back, even a mistyped one: a value under a secret-named key is
            # hidden whole, any other has URL passwords and key shapes masked. Numbers are shown
            # (``default_completion_tokens: -5``) unless the key itself is a secret: an all-digit
            # key written unquoted in YAML is a number.
            value = err["input"]
            if _HEADERS_RE.search(loc):
                shown = "[REDACTED]"
            elif isinstance(value, bool | int | float) or value is None:
                shown = "<redacted>" if _SECRET_LEAF_RE.search(loc) else repr(value)
            elif _SECRET_KEY_RE.search(loc):
                shown = "<redacted>"
            else:
                shown = mask_credentials(repr(value))[:80]
            msg = f"{msg} (got {shown})"
        lines.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    # Keys and values come from the file: escaped, so the message stays the one line the CLI prints.
    return "invalid configuration: " + printable("; ".join(lines))


__all__ = ["Config", "ConfigError", "KeyProblems", "interpolate_env", "load_config", "missing_env_vars", "read_raw",
           "yaml_problem"]
