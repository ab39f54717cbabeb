"""Where a config's raw tree comes from: the YAML file, and ``${VAR}`` interpolation.

``${VAR}`` and ``${VAR:-default}`` (default also when VAR is empty) in any string value are
replaced from the environment; a malformed ``${`` is refused. Validation of the tree is
``thrifty.config``'s job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from thrifty.errors import ConfigError, printable

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _env_value(env: dict[str, str], name: str, default: str | None) -> str:
    """``${NAME}``: the variable or "". ``${NAME:-default}``: the default when the variable is
    unset or empty, as in the shell (an exported-but-empty variable is the usual mistake)."""
    value = env.get(name)
    if default is not None and not value:
        return default
    return value or ""


def _check_env_refs(text: str) -> None:
    """Refuse a ``${`` that is not a whole reference: ``api_key: ${OPENAI_API_KEY`` (no brace)
    would otherwise be sent upstream as that literal text. Nested defaults are not supported."""
    for m in _ENV_RE.finditer(text):
        if m.group(2) is not None and "${" in m.group(2):
            raise ConfigError(f"environment reference {m.group(0)!r}: nested references are not supported")
    leftover = _ENV_RE.sub("", text)
    if "${" in leftover:
        at = leftover.index("${")
        raise ConfigError(f"malformed environment reference near {leftover[at:at + 24]!r} "
                          "(expected ${NAME} or ${NAME:-default}, NAME of letters, digits and _)")


def interpolate_env(value: Any, env: dict[str, str] | None = None) -> Any:
    """Replace ``${VAR}``/``${VAR:-default}`` in every string of a YAML tree.

    A variable that is unset and has no default becomes "" (so a starter config with
    ``${OPENAI_API_KEY}`` still serves a local mock upstream); ``config check`` warns about it.
    """
    env = dict(os.environ) if env is None else env
    if isinstance(value, str):
        _check_env_refs(value)
        return _ENV_RE.sub(lambda m: _env_value(env, m.group(1), m.group(2)), value)
    if isinstance(value, dict):
        return {k: interpolate_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, env) for v in value]
    return value


def missing_env_vars(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    """Names of ``${VAR}`` references (without default) that the environment does not set."""
    env = dict(os.environ) if env is None else env
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            found.extend(m.group(1) for m in _ENV_RE.finditer(v) if m.group(2) is None and m.group(1) not in env)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(raw)
    return sorted(set(found))


def yaml_problem(exc: yaml.YAMLError) -> str:
    """``invalid YAML at line L, column C: <problem>`` on one line: ``str(exc)`` spans ~8 lines
    with a source excerpt, and the CLI prints errors as one. Shared by every YAML file thrifty
    reads (config, policy, workloads, mock behaviours)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"invalid YAML{where}: {' '.join(str(problem).split())}"


def read_raw(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The un-interpolated YAML tree and the folder relative paths resolve from."""
    if isinstance(source, dict):
        return source, None
    path = Path(source)
    # Escaped: a path read from a file or a variable often ends in "\n", which printed raw split
    # the message in two and hid the very character that made the file "not found".
    shown = printable(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # a UTF-16 file saved by an editor, a binary picked by mistake
        raise ConfigError(f"config file {shown} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: the top level must be a mapping of sections (providers, models, ...)")
    return raw, str(path.resolve().parent)
