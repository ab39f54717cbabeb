"""thrifty's one error hierarchy.

Every failure thrifty raises on purpose is a ``ThriftyError``. Each class carries the
HTTP status and the OpenAI error ``type``/``code`` it maps to, so the HTTP edge turns any of
them into an OpenAI-format error body in one place (``to_openai``), and the CLI prints
``str(err)`` as one line. Foreign exceptions (aiohttp, sqlite3, yaml, ...) are translated into
this tree at the boundary where they occur, never matched by substring elsewhere.

    ThriftyError
    +-- ConfigError                 bad configuration file or value (CLI/startup, not HTTP)
    |   +-- UsageError              a command-line flag or argument is out of range or unusable
    +-- RequestError (4xx)          the client's request is wrong
    |   +-- InvalidRequestError     400: malformed JSON, wrong types, empty messages
    |   +-- AuthenticationError     401: missing or invalid API key
    |   +-- PermissionDeniedError   403: key not allowed on this route/model
    |   +-- NotFoundError           404: unknown model / route / resource
    |   +-- MethodNotAllowedError   405: a known path with the wrong HTTP method (Allow header)
    |   +-- PayloadTooLargeError    413: body over the configured limit
    |   +-- RateLimitError          429: thrifty's own rate limit for a key
    |   +-- BudgetExceededError     429: a key's budget for the period is spent
    +-- UpstreamError (5xx)         the provider failed after retries and fallbacks
    |   +-- UpstreamTimeoutError    504: the provider did not answer in time
    |   |   +-- RequestTimeoutError 504: the request as a whole ran past server.request_timeout_s
    |   +-- UpstreamRateLimitError  429: the provider kept rate-limiting us
    |   +-- UpstreamStatusError     the provider answered an error status: client 4xx kept, else 502
    |   +-- UpstreamProtocolError   502: the provider answered something unreadable
    +-- StorageError                ledger / cache backend failure (never fails a response)
    |   +-- ServiceUnavailableError 503: a backing service (key database, budget store) is down
    +-- DataError                   an evaluation/outcome/pairs file cannot be read
    +-- GatewayStateError           503: the gateway was closed, or close() ran inside an event loop
"""

from __future__ import annotations

from typing import Any


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...): a message that echoes a
    config key, a file name or a flag value stays one line, and cannot move a terminal's cursor."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class ThriftyError(Exception):
    """Base of every error thrifty raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI clients expect: ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for this error (Retry-After on 429s)."""
        return {}


class ConfigError(ThriftyError):
    """The configuration is invalid; ``message`` names the key path and what was expected."""

    status = 500
    type = "config_error"


class UsageError(ConfigError):
    """A command-line flag or argument is invalid (out of range, not finite, an output path that
    cannot be written); ``message`` names the flag. Checked before any work is done."""

    type = "usage_error"


class RequestError(ThriftyError):
    status = 400
    type = "invalid_request_error"


class InvalidRequestError(RequestError):
    status = 400


class AuthenticationError(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(RequestError):
    status = 403
    type = "permission_error"


class NotFoundError(RequestError):
    status = 404
    code = "model_not_found"


class MethodNotAllowedError(RequestError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str = "") -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        # RFC 9110: a 405 lists the methods the resource supports.
        return {"allow": self.allow} if self.allow else {}


class PayloadTooLargeError(RequestError):
    status = 413
    code = "payload_too_large"


class _RetryAfterMixin:
    retry_after: float | None = None

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after)))}


class RateLimitError(_RetryAfterMixin, RequestError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class BudgetExceededError(RateLimitError):
    type = "insufficient_quota"
    code = "budget_exceeded"


class UpstreamError(ThriftyError):
    """The provider failed. ``attempts`` keeps every failed attempt's short description."""

    status = 502
    type = "upstream_error"
    # Seconds the provider asked us to wait (Retry-After), when it said.
    retry_after: float | None = None
    # The provider accepted the call (a 200) and failed only in sending its answer back (a body
    # cut short, not JSON): it ran the model, so it bills the call. Priced at its prompt.
    billed: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        attempts: list[str] | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        if status is not None:
            self.status = status
        self.attempts = list(attempts or [])
        # Whether trying the same provider again can help (connection drops, 429, 5xx).
        self.retryable = retryable


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class RequestTimeoutError(UpstreamTimeoutError):
    """The whole request (every retry, fallback and cascade tier) ran past
    ``server.request_timeout_s``; each call may have been within its own timeout."""

    code = "request_timeout"


class UpstreamRateLimitError(_RetryAfterMixin, UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, attempts: list[str] | None = None) -> None:
        super().__init__(message, attempts=attempts, retryable=True)
        self.retry_after = retry_after


# Provider 4xx statuses that are about the gateway's own setup, not the client's request: the
# client gets a 502 saying so. Passed on as-is, a 401 made OpenAI SDKs raise AuthenticationError
# about the client's (valid) key. (code, what the client is told)
_GATEWAY_SIDE_STATUSES: dict[int, tuple[str, str]] = {
    401: ("upstream_auth_failed", "the provider rejected the gateway's credentials; check this provider's "
          "api_key in the gateway configuration (the client's own key is never sent upstream)"),
    402: ("upstream_payment_required", "the provider refused the gateway's account (billing or credits)"),
    403: ("upstream_auth_failed", "the provider refused the gateway's credentials for this request; check "
          "this provider's api_key and its permissions in the gateway configuration"),
    404: ("upstream_not_found", "the provider does not know this model (or endpoint); check the model's "
          "upstream name and the provider's base_url in the gateway configuration"),
}


class UpstreamStatusError(UpstreamError):
    """The provider answered with an HTTP error status (``upstream_status``).

    - 429 is raised as ``UpstreamRateLimitError`` by providers, not as this class;
    - 401, 402, 403 and 404 concern the gateway's configuration (its provider key, account,
      model names): a 502 whose message says so, code ``upstream_auth_failed`` etc.;
    - any other 4xx (400, 413, 422...) is the client's request: passed on with its status;
    - a 5xx becomes a retryable 502.
    """

    def __init__(self, message: str, *, status: int, body: dict[str, Any] | None = None) -> None:
        flagged = status == 403 and _flagged_by_moderation(body)
        gateway_side = None if flagged else _GATEWAY_SIDE_STATUSES.get(status)
        client_fault = 400 <= status < 500 and gateway_side is None
        if gateway_side is not None:
            message = f"{message} ({gateway_side[1]})"
        # A flagged input is the client's content, not the gateway's key: a 400 as OpenAI gives
        # for content it refuses, with the provider's words (not "check this provider's api_key").
        client_status = 400 if flagged else status
        super().__init__(message, status=client_status if client_fault else 502, retryable=status >= 500)
        self.upstream_status = status
        self.body = body
        if client_fault:
            self.type = "invalid_request_error"
        err = (body or {}).get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and gateway_side is None:
            self.param = err.get("param") if isinstance(err.get("param"), str) else None
            if isinstance(err.get("code"), str):
                self.code = err["code"]
        if gateway_side is not None:
            self.code = gateway_side[0]
        elif flagged and not isinstance((err or {}).get("code"), str):
            self.code = "content_flagged"


def _flagged_by_moderation(body: dict[str, Any] | None) -> bool:
    """True when a provider's 403 says its moderation refused the input (OpenRouter: "... input
    was flagged ...", with ``metadata.reasons``), not that the gateway's credentials lack a right."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return False
    meta = err.get("metadata")
    if isinstance(meta, dict) and ("reasons" in meta or "flagged_input" in meta):
        return True
    text = err.get("message")
    return isinstance(text, str) and ("flagged" in text.lower() or "moderation" in text.lower())


class UpstreamProtocolError(UpstreamError):
    status = 502
    code = "bad_upstream_response"


class StorageError(ThriftyError):
    status = 500
    type = "storage_error"


class ServiceUnavailableError(StorageError):
    """A service a request needs (the key database, the budget store) cannot be reached now:
    a 503, which clients and load balancers treat as "try again". The message names the service
    only; hosts, ports and driver text stay in the server log."""

    status = 503
    code = "service_unavailable"


class DataError(ThriftyError):
    status = 400
    type = "data_error"


class GatewayStateError(ThriftyError, RuntimeError):
    """The gateway cannot do this now: it was closed, or a blocking method (``close()``) was
    called inside a running event loop. Also a ``RuntimeError``, which ``close()`` raised before;
    over HTTP (``app()`` after close) a 503."""

    status = 503
    code = "gateway_closed"
