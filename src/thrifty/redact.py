"""Keeping secrets out of logs, errors, the ledger and cached data.

Known secrets (configured provider keys) are registered once at start-up; any text leaving
thrifty through an error message or log line goes through ``redact``, which also masks
anything shaped like a bearer key even when it was never registered.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

# ``*`` too: a provider's 401 echoes the key masked (OpenAI: "sk-proj-****...abcd"), and the part
# it shows (the last 4 characters, often the first few) is still not the client's to see.
_KEY_SHAPES = re.compile(r"\b(sk|tk|rk|pk|thr)-[A-Za-z0-9_\-*]{6,}|\bBearer\s+[A-Za-z0-9_\-.=]{8,}", re.I)


class Redactor:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: set[str] = set()
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        # Very short values would mask ordinary words; they are not real keys anyway.
        if secret and len(secret) >= 6:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
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


def scrub(text: str, *urls: str | None) -> str:
    """``text`` (a driver's error about ``urls``) without their passwords or key shapes, on one
    line: libpq continues its messages on indented lines ("...failed\n\tIs the server running"),
    which a one-line CLI message or log field showed as a literal ``\n\t``."""
    for pw in sorted(url_passwords(*urls), key=len, reverse=True):
        if len(pw) >= 4:  # shorter ones would mangle the message's words (and guess in seconds anyway)
            text = text.replace(pw, "[REDACTED]")
    return mask_credentials(re.sub(r"\s*\n\s*", " ", text).strip())
