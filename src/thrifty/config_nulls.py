"""Config sections left empty in YAML: a null where the schema wants a mapping or a list.

YAML reads a key with everything under it commented out (``semantic:``, ``routes:``) as null;
docs/configuration.md says an empty section means its defaults, so such nulls are dropped before
validation (``empty_subsections``), at any depth, guided by the pydantic models themselves.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def _container_models(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """What a field holds, for ``empty_subsections``: (the model, how) where how is "model"
    (``X``), "dict" (``dict[str, X]``), "list" (``list[X]``) or "" (anything else); the model is
    None for a plain dict or list, or one of scalars."""
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if _accepts_none(annotation) and len(members) == 1:  # ``X | None``: what X holds
        annotation = members[0]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "model"
    if origin in (dict, list):
        inner = args[-1] if args else None
        held = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
        return held, "dict" if origin is dict else "list"
    return None, ""


def _accepts_none(annotation: Any) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


def empty_subsections(data: Any, model: type[BaseModel]) -> Any:
    """``data`` with every key that is null but must be a mapping or a list removed, at any depth,
    so that it takes its default (a required one is then reported missing).

    Why: YAML reads a key with everything under it commented out (``semantic:``, ``routes:``,
    ``aliases:``) as null, which pydantic refused with "Input should be a valid dictionary or
    instance of SemanticConfig"; docs/configuration.md says an empty section is its defaults. A
    key where null means something (``routing.fit: null``, ``cache.semantic.threshold``) is kept."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in out:
            continue
        held, how = _container_models(field.annotation)
        if out[key] is None:
            if how and not _accepts_none(field.annotation):
                del out[key]
        elif held is not None and how == "model":
            out[key] = empty_subsections(out[key], held)
        elif held is not None and how == "dict" and isinstance(out[key], dict):
            # ``models: {m: }``: an entry with nothing under it is one with no keys, so the error
            # names the key it lacks (``models.m.provider``) rather than a Python class.
            out[key] = {k: empty_subsections({} if v is None else v, held) for k, v in out[key].items()}
        elif held is not None and how == "list" and isinstance(out[key], list):
            out[key] = [empty_subsections({} if v is None else v, held) for v in out[key]]
    return out
