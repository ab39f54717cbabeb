"""Does a JSON value match a JSON schema, and if not, where and why.

The ``jsonschema`` package checks the whole language (``$ref``/``$defs``, ``anyOf``/``oneOf``/
``allOf``: what Pydantic emits for nested models and ``Optional`` fields), so a cheap answer wrong
inside a nested model is not accepted and then rejected by the client's
``chat.completions.parse``. A hand-written subset ignored those keywords and accepted it.

Each distinct schema is compiled once (keyed by its canonical JSON) and reused. References are
resolved only inside the schema: the package's default registry would fetch a remote ``$ref``
over HTTP, and a request's schema comes from the client, so an unresolvable reference is a
problem (the answer cannot be shown to fit), never a fetch. Problems name the place and the
schema's rule, not the answer's values (they end up in the ledger's score reasons).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.validators import validator_for

_NO_REMOTE = referencing.Registry()  # no ``retrieve``: a reference outside the schema fails
_REQUIRED_RE = re.compile(r"^(.*) is a required property$")


@lru_cache(maxsize=256)
def _compiled(key: bytes) -> Any:
    """The validator of the schema whose canonical JSON is ``key``, or why it has none (a str)."""
    schema = orjson.loads(key)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        return f"invalid schema: {exc.message[:120]}"
    return cls(schema, registry=_NO_REMOTE)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(error: ValidationError) -> str:
    """One rule an answer breaks, in the words of the schema (not the answer's value)."""
    kw, want = error.validator, error.validator_value
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


def schema_problems(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty when it fits), each as ``place: rule``, the
    place starting with ``path``. A schema that cannot be used (invalid, a reference it cannot
    resolve, recursion without end) is a problem too: the value is not known to fit."""
    try:
        compiled = _compiled(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return [f"{path}: the schema is not JSON"]
    if isinstance(compiled, str):
        return [f"{path}: {compiled}"]
    try:
        errors = list(compiled.iter_errors(value))
    except referencing.exceptions.Unresolvable as exc:
        return [f"{path}: the schema's reference {str(exc.ref)[:80]!r} cannot be resolved"]
    except RecursionError:
        return [f"{path}: the schema recurses without end"]
    problems = []
    for error in errors:
        # anyOf/oneOf: name the branch that came closest (the nested field that is wrong).
        shown = best_match([error]) or error
        place = path + shown.json_path[1:]
        problems.append(f"{place}: {_describe(shown)}")
    return problems
