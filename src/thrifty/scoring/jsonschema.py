"""Does a JSON value match a JSON schema, and if not, where and why.

The ``jsonschema`` package checks the whole language (``$ref``/``$defs``, ``anyOf``/``oneOf``/
``allOf``: what Pydantic emits for nested models and ``Optional`` fields), so a cheap answer wrong
inside a nested model is not accepted and then rejected by the client's
``chat.completions.parse``. A hand-written subset ignored those keywords and accepted it.

A schema's ``pattern`` and ``patternProperties`` regexes are the client's too, run against a
model's answer on the event loop: one catastrophic pattern (``^(a+)+$``) against a long enough
string stalled the gateway for every tenant. They are matched with the ``regex`` package under a
time budget per check (``PATTERN_BUDGET_S`` for all of one answer's patterns): past it, the
answer is not known to fit, which is a problem (the cascade escalates), never a stall.

Each distinct schema is compiled once (keyed by its canonical JSON) and reused. References are
resolved only inside the schema: the package's default registry would fetch a remote ``$ref``
over HTTP, and a request's schema comes from the client, so an unresolvable reference is a
problem (the answer cannot be shown to fit), never a fetch. Problems name the place and the
schema's rule, not the answer's values (they end up in the ledger's score reasons).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import referencing
import referencing.exceptions
import regex
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.validators import extend, validator_for

_NO_REMOTE = referencing.Registry()  # no ``retrieve``: a reference outside the schema fails
_REQUIRED_RE = re.compile(r"^(.*) is a required property$")
# Seconds all the regexes of one answer's check may take together (see the module doc).
PATTERN_BUDGET_S = 0.05
_deadline: ContextVar[float] = ContextVar("schema_pattern_deadline", default=0.0)


def _search(pattern: str, text: str) -> bool | None:
    """Whether ``pattern`` is found in ``text``; None when that cannot be told within the
    answer's remaining budget (or the pattern is not one ``regex`` reads)."""
    left = _deadline.get() - time.monotonic()
    if left <= 0:
        return None
    try:
        return regex.search(pattern, text, timeout=left) is not None
    except (TimeoutError, regex.error):
        return None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string"):
        found = _search(pattern, instance)
        if not found:
            yield ValidationError("too costly to check" if found is None else "does not match",
                                  validator="pattern", validator_value=pattern)


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            found = _search(pattern, key)
            if found is None:
                yield ValidationError("a property name too costly to check", validator="patternProperties",
                                      validator_value=pattern)
            elif found:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


@lru_cache(maxsize=8)
def _bounded(cls: Any) -> Any:
    """``cls`` with its regex keywords matched under the time budget (one class per draft)."""
    return extend(cls, {"pattern": _pattern, "patternProperties": _pattern_properties})


@lru_cache(maxsize=256)
def _compiled(key: str) -> Any:
    """The validator of the schema whose canonical JSON is ``key``, or why it has none (a str)."""
    schema = json.loads(key)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        # No format checks on the schema itself: they validate ``pattern`` with Python's ``re``,
        # which reads no ``\p{L}`` (valid for Pydantic and ``regex``); patterns are matched by
        # ``_search`` under the time budget, and one ``regex`` does not read is "too costly".
        cls.check_schema(schema, format_checker=None)
    except SchemaError as exc:
        return f"invalid schema: {exc.message[:120]}"
    return _bounded(cls)(schema, registry=_NO_REMOTE)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(error: ValidationError) -> str:
    """One rule an answer breaks, in the words of the schema (not the answer's value)."""
    kw, want = error.validator, error.validator_value
    if kw in ("pattern", "patternProperties"):
        return f"{error.message} ({kw} {_short(want)})"  # our own words (_pattern): no answer value
    if kw == "type":
        return f"expected {want}" if isinstance(want, str) else f"expected one of {want}"
    if kw == "required":
        m = _REQUIRED_RE.match(error.message)
        return f"missing {m.group(1)}" if m else "missing a required property"
    if kw == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties") or {} if isinstance(error.schema, dict) else {}
        extra = [k for k in error.instance if k not in known]
        return f"unexpected {extra[0]!r}" if extra else "unexpected property"
    words = {"enum": "not one of", "const": "expected", "minimum": "below", "maximum": "above",
             "exclusiveMinimum": "not above", "exclusiveMaximum": "not below",
             "minLength": "shorter than", "maxLength": "longer than",
             "minItems": "fewer items than", "maxItems": "more items than"}
    if kw in words:
        return f"{words[kw]} {_short(want)}"
    return f"does not satisfy {kw}"


def schema_problems(value: Any, schema: dict[str, Any], path: str = "$", limit: int = 3) -> list[str]:
    """The ways ``value`` breaks ``schema`` (empty when it fits; at most ``limit``: callers show
    the first, and an answer with a thousand bad items is not checked a thousand times over),
    each as ``place: rule``, the place starting with ``path``. A schema that cannot be used
    (invalid, a reference it cannot resolve, recursion without end) is a problem too: the value
    is not known to fit."""
    try:
        # json, not orjson: a schema may hold integers past 64 bits (``"maximum": 10**20``).
        compiled = _compiled(json.dumps(schema, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError):
        return [f"{path}: the schema is not JSON"]
    if isinstance(compiled, str):
        return [f"{path}: {compiled}"]
    token = _deadline.set(time.monotonic() + PATTERN_BUDGET_S)
    try:
        errors = list(itertools.islice(compiled.iter_errors(value), limit))
    except referencing.exceptions.Unresolvable as exc:
        return [f"{path}: the schema's reference {str(exc.ref)[:80]!r} cannot be resolved"]
    except RecursionError:
        return [f"{path}: the schema recurses without end"]
    finally:
        _deadline.reset(token)
    problems = []
    for error in errors:
        # anyOf/oneOf: name the branch that came closest (the nested field that is wrong).
        shown = best_match([error]) or error
        place = path + shown.json_path[1:]
        problems.append(f"{place}: {_describe(shown)}")
    return problems
