"""Security audit: secrets of the config never leave in messages or logs, and a budget
reservation is not fooled by sending two completion limits."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest

from thrifty.config import Config
from thrifty.errors import StorageError
from thrifty.gateway import Gateway
from thrifty.ledger.postgres import PostgresStore
from thrifty.logs import JsonFormatter
from thrifty.ops.budgets import BudgetStage
from thrifty.ops.keys import KeyStore
from thrifty.ops.ratelimit import MemoryLimiter
from thrifty.redact import url_passwords
from thrifty.types import ChatRequest

PW = "S3cret Pw99"  # a space: libpq quotes the password alone, with no URL around it


@pytest.mark.parametrize("dsn", [
    f"postgresql://thrifty:{PW}@127.0.0.1:1/ledger",  # unexpected spaces found in "S3cret Pw99"
    "postgresql://thrifty:S3cretPw99@[127.0.0.1/ledger",  # libpq quotes the whole URI
    "host=127.0.0.1 port=1 password=S3cretPw99 dbname",  # missing "=" after "dbname"
])
def test_postgres_connection_errors_never_quote_the_password(dsn: str) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StorageError) as caught:
        PostgresStore(dsn)._connect()
    message = caught.value.message
    assert message.startswith("cannot connect to the PostgreSQL ledger:")
    assert "S3cret" not in message
    assert "\n" not in message and "\t" not in message  # libpq's continuation lines, joined


def test_url_passwords_finds_every_form() -> None:
    assert url_passwords("postgresql://u:p%40ss-word1@h/db", "redis://:RedisPw-1@h:6379/0", "redis://h:6379",
                         "host=h password='a b c'", None) == ["p%40ss-word1", "p@ss-word1", "RedisPw-1", "a b c"]


def test_the_gateway_masks_admin_key_salt_and_service_passwords_in_logs() -> None:
    secrets = {"admin": "AdminPlainWords", "salt": "SaltPlainWords", "pg": "PgPlainWords", "redis": "RedisPlainWords"}
    cfg: dict[str, Any] = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "ProviderPlainWords"}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
        # Connected lazily: nothing listens on port 1, and building the gateway needs nothing.
        "ledger": {"dsn": f"postgresql://thrifty:{secrets['pg']}@127.0.0.1:1/ledger"},
        "redis_url": f"redis://:{secrets['redis']}@127.0.0.1:1/0",
        "auth": {"admin_key": secrets["admin"], "key_salt": secrets["salt"]},
    }
    gw = Gateway.from_config(cfg)
    try:
        formatter = JsonFormatter()
        formatter.add_redactor(gw.redactor)
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        log = logging.getLogger("thrifty.test_security_audit")
        log.addHandler(handler)
        log.propagate = False
        try:
            log.warning("readiness: redis unavailable: AUTH %s failed; admin %s salt %s pg %s",
                        secrets["redis"], secrets["admin"], secrets["salt"], secrets["pg"])
        finally:
            log.removeHandler(handler)
        line = out.getvalue()
        assert line.count("[REDACTED]") == 4
        assert not any(s in line for s in secrets.values())
        # And in an error body sent to a client (handler_error runs the same redactor).
        assert gw.redactor(f"bad admin key {secrets['admin']}") == "bad admin key [REDACTED]"
    finally:
        gw.close()


async def test_a_budget_reserves_the_larger_of_two_completion_limits(tmp_path: Path) -> None:
    catalog = Config.model_validate({"models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
                                     "providers": {"p": {"base_url": "http://x"}}}).build_catalog()
    stage = BudgetStage(KeyStore.__new__(KeyStore), MemoryLimiter(_no_spend), catalog, default_completion_tokens=512)
    messages = [{"role": "user", "content": "hi"}]

    def tokens(**params: Any) -> int:
        return stage.estimate(ChatRequest.from_body({"model": "m", "messages": messages, **params}))[0]

    base = tokens(max_tokens=1)
    # A provider that honours max_tokens (or a compat block dropping max_completion_tokens for an
    # older server) answers up to 100k tokens: the reservation must cover them, not 1.
    assert tokens(max_completion_tokens=1, max_tokens=100_000) == base - 1 + 100_000
    assert tokens(max_completion_tokens=100_000, max_tokens=1) == base - 1 + 100_000
    assert tokens() == base - 1 + 512


async def _no_spend(key_id: str, since: float) -> float:
    return 0.0


@pytest.mark.parametrize("echo", ["sk-proj-********************abcd", "sk-abc12***************************xyz1",
                                  "sk-****wxyz"])
def test_a_key_a_provider_echoes_masked_is_masked_whole(echo: str) -> None:
    """OpenAI's 401 says "Incorrect API key provided: <the key, masked but for its ends>"; those
    ends are the gateway operator's, not the client's, to see."""
    from thrifty.redact import redact

    said = redact(f"Incorrect API key provided: {echo}. You can find your API key at ...")
    assert said == "Incorrect API key provided: [REDACTED]. You can find your API key at ..."


def test_a_provider_refusing_flagged_input_is_the_clients_400_not_a_key_problem() -> None:
    """OpenRouter answers 403 when its moderation flags the input; it was reported as "check this
    provider's api_key", sending the operator after a key that works."""
    from thrifty.providers.error_body import read_error, upstream_error
    from thrifty.redact import redact

    raw = (b'{"error": {"code": 403, "message": "openai/gpt-4o requires moderation on OpenRouter. Your input '
           b'was flagged for \\"harassment\\".", "metadata": {"reasons": ["harassment"], "flagged_input": "..."}}}')
    err = upstream_error("openrouter", 403, read_error(raw), redact)
    assert (err.status, err.code, err.type) == (400, "content_flagged", "invalid_request_error")
    assert "flagged" in err.message and "api_key" not in err.message
    denied = upstream_error("openrouter", 403, read_error(b'{"error": {"message": "Key lacks access"}}'), redact)
    assert (denied.status, denied.code) == (502, "upstream_auth_failed")
    # The moderation metadata alone says it too: it survives the parse the provider's body goes through.
    quiet = upstream_error("openrouter", 403, read_error(
        b'{"error": {"code": 403, "message": "Access denied", "metadata": {"reasons": ["violence"]}}}'), redact)
    assert (quiet.status, quiet.code) == (400, "content_flagged")
