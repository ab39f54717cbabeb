"""Keeping secrets out of logs, errors, the ledger and cached data.

Known secrets (configured provider keys) are registered once at start-up; any text leaving
thrifty through an error message or log line goes through ``redact``, which also masks
anything shaped like a bearer key even when it was never registered.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit

# ``*`` too: a provider's 401 echoes the key masked (OpenAI: "sk-proj-****...abcd"), and the part
# it shows (the last 4 characters, often the first few) is still not the client's to see.
_KEY_SHAPES = re.compile(r"\b(sk|tk|rk|pk|thr)-[A-Za-z0-9_\-*]{6,}|\bBearer\s+[A-Za-z0-9_\-.=]{8,}", re.I)


class Redactor:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        # Very short values would mask ordinary words; they are not real keys anyway.
        if secret and len(secret) >= 6 and secret not in self._secrets:
            self._secrets.add(secret)
            # Longest first: one secret may contain another (a header "Bearer X" and its X, a
            # password and a longer key); masking the shorter first would leave the rest showing.
            self._ordered = sorted(self._secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._ordered:
            if s in text:
                text = text.replace(s, "[REDACTED]")
        return _KEY_SHAPES.sub("[REDACTED]", text)


def redact(text: str) -> str:
    """Mask key-shaped substrings (for places with no configured Redactor at hand)."""
    return _KEY_SHAPES.sub("[REDACTED]", text)


# Credentials in a URL (postgresql://user:PASSWORD@host, redis://:PASSWORD@host).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://[^:/@\s'\"]*):[^@\s'\"]+@", re.I)
# Other providers' key prefixes (Groq gsk_, Google AIza, Hugging Face hf_, GitHub ghp_, xAI xai-),
# and any long token mixing letters and digits (no hyphens: model names such as
# claude-3-5-sonnet-20241022 stay readable): a mistyped value at an unexpected place in a config
# is as likely to be a key as anything else.
_MORE_SHAPES = re.compile(r"\b(gsk_|AIza|hf_|ghp_|xai-)[A-Za-z0-9_\-]{8,}|"
                          r"\b(?=[A-Za-z0-9_]*[0-9])(?=[A-Za-z0-9_]*[A-Za-z])[A-Za-z0-9_]{24,}\b")


def mask_credentials(text: str) -> str:
    """``redact`` plus URL passwords, more providers' key shapes and long letter-digit tokens: for
    echoing user-supplied values (a config value in an error message) whose key name says nothing."""
    text = _URL_PASSWORD.sub(lambda m: m.group("scheme") + ":[REDACTED]@", text)
    return _MORE_SHAPES.sub("[REDACTED]", redact(text))



# libpq key=value connection strings: password=secret or password='se cret'.
_KV_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.I)


def url_passwords(*urls: str | None) -> list[str]:
    """The passwords in connection URLs (``postgresql://u:PW@h``, ``redis://:PW@h``) and libpq
    ``password=PW`` strings, as written and percent-decoded: literal secrets for a ``Redactor``.

    Why literal: a driver error may quote a malformed DSN's password without the URL around it
    (libpq: ``unexpected spaces found in "PW"``), where no pattern would recognise it."""
    out: list[str] = []
    for url in urls:
        if not url:
            continue
        found: list[str] = []
        try:
            password = urlsplit(url.strip()).password
        except ValueError:  # a malformed URL (an unclosed IPv6 bracket, a bad port)
            password = None
        if password is None:
            m = re.search(r"://[^:/@\s]*:([^@\s]*)@", url)  # what urlsplit could not parse
            password = m.group(1) if m else None
        if password:
            found.append(password)
        found += [m.group(1).strip("'").replace("\\'", "'") for m in _KV_PASSWORD.finditer(url)]
        for pw in found:
            out += [pw, unquote(pw)] if unquote(pw) != pw else [pw]
    return [pw for pw in dict.fromkeys(out) if pw]


# Query parameters of a provider's base_url (``?token=``, ``?key=`` for Gemini, ``?sig=`` for
# Azure SAS, ``?api_key=``) and headers it sends (Azure's ``api-key``, ``x-api-key``,
# ``Helicone-Auth``, ``x-portkey-api-key``, ``Cookie``) whose names say their values are
# credentials. Others (``api-version``, ``x-portkey-provider: openai``, ``x-model: gpt-4o-mini``,
# OpenRouter's ``X-Title: myapp``) are not: masking them would blank that word in every log line
# and error of the gateway.
_SECRET_WORDS = r"token|key|sig|secret|passw|pwd|auth|credential|cookie"
_SECRET_PARAM = re.compile(_SECRET_WORDS, re.I)
# A header name is read word by word, each word starting with one of those (``apikey`` too):
# inside a word, "portkey" (``x-portkey-provider``) would name a credential.
_SECRET_HEADER_WORD = re.compile(rf"(?:api|access|x)?(?:{_SECRET_WORDS})", re.I)
# A header value naming its auth scheme: an upstream may echo the credential without the scheme.
_SCHEME_VALUE = re.compile(r"^\s*(?:Bearer|Basic|Token|Digest|ApiKey|Key)\s+(\S+)\s*$", re.I)


def provider_secrets(base_url: str, api_key: str | None, headers: Mapping[str, str]) -> list[str]:
    """Every credential a provider's configuration sends upstream, as an upstream may echo it:
    ``api_key``; the value of each configured header whose name says it is a credential
    (``_SECRET_HEADER_WORD``: ``api-key`` for Azure, ``x-api-key``, ``Helicone-Auth``...) and, in any
    header, the credential after an auth scheme (``Bearer X``, ``Basic X``); the base_url's
    password, percent-decoded too, and the ``Basic`` token aiohttp derives from
    ``user:password@`` (an upstream echoing the Authorization header shows only that); the
    values of secret-named query parameters of the base_url."""
    found: list[str] = [api_key] if api_key else []
    for name, value in headers.items():
        if any(_SECRET_HEADER_WORD.match(word) for word in re.split(r"[^A-Za-z0-9]+", name)):
            found.append(value.strip())
        scheme = _SCHEME_VALUE.match(value)
        if scheme:
            found.append(scheme.group(1))
    found += url_passwords(base_url)
    try:
        parts = urlsplit(base_url.strip())
        login, password = parts.username, parts.password
    except ValueError:  # a malformed URL: url_passwords above found what it could
        parts, login, password = None, None, None
    if password is not None:
        user_pw = f"{unquote(login or '')}:{unquote(password)}"
        # aiohttp's BasicAuth encodes latin-1 by default; utf-8 for a password that has no latin-1 form.
        for encoding in ("latin-1", "utf-8"):
            try:
                found.append(base64.b64encode(user_pw.encode(encoding)).decode("ascii"))
            except UnicodeEncodeError:
                continue
    if parts is not None:
        for name, value in parse_qsl(parts.query, keep_blank_values=False):
            if _SECRET_PARAM.search(name):
                found += [value, quote(value, safe="")]
    return [s for s in dict.fromkeys(found) if s]


def scrub(text: str, *urls: str | None) -> str:
    """``text`` (a driver's error about ``urls``) without their passwords or key shapes, on one
    line: libpq continues its messages on indented lines ("...failed\n\tIs the server running"),
    which a one-line CLI message or log field showed as a literal ``\n\t``."""
    for pw in sorted(url_passwords(*urls), key=len, reverse=True):
        if len(pw) >= 4:  # shorter ones would mangle the message's words (and guess in seconds anyway)
            text = text.replace(pw, "[REDACTED]")
    return mask_credentials(re.sub(r"\s*\n\s*", " ", text).strip())
