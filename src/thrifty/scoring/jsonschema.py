"""A small JSON-schema checker (type, enum, const, required, properties, items, min/max):
enough to tell a well-formed structured answer from a broken one without a dependency."""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,), "number": (int, float),
    "boolean": (bool,), "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES.get(name, (object,)))


def schema_problems(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty when it fits)."""
    problems: list[str] = []
    typ = schema.get("type")
    if isinstance(typ, str) and not _is_type(value, typ):
        return [f"{path}: expected {typ}"]
    if isinstance(typ, list) and not any(_is_type(value, t) for t in typ):
        return [f"{path}: expected one of {typ}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        problems.append(f"{path}: expected {schema['const']!r}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}: missing {key!r}")
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key in value and isinstance(sub, dict):
                problems += schema_problems(value[key], sub, f"{path}.{key}")
        if schema.get("additionalProperties") is False:
            problems += [f"{path}: unexpected {k!r}" for k in value if k not in props]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, str) and "minLength" in schema and len(value) < schema["minLength"]:
        problems.append(f"{path}: shorter than {schema['minLength']}")
    return problems
