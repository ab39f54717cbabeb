"""The one check of a key's ``routes`` patterns, shared by ``thrifty keys create --routes`` and
``POST /admin/keys``: each pattern must match a name a request can use on the config (a model,
an alias, ``auto``, ``route:NAME``). A misspelt pattern would make a key that can call nothing
it names, and the mistake would only show as 403s once the key is handed out.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from thrifty.errors import InvalidRequestError

if TYPE_CHECKING:
    from thrifty.config import Config


def request_names(cfg: Config) -> list[str]:
    """Every name a request's ``model`` (or ``x-thrifty-route`` as ``route:NAME``) can carry."""
    return [*cfg.models, *(a for m in cfg.models.values() for a in m.aliases),
            *(["auto"] if cfg.routing.routes or cfg.default_model else []),
            *(f"route:{r}" for r in cfg.routing.routes)]


def check_route_patterns(patterns: list[str], names: list[str], where: str) -> None:
    """``InvalidRequestError`` (param ``routes``) naming every pattern that matches none of
    ``names``. With no names at all (a config naming only the ledger, for key administration of
    gateways configured elsewhere) there is nothing to check against."""
    if not names:
        return
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unknown:
        raise InvalidRequestError(f"{', '.join(repr(p) for p in unknown)} matches no model, alias or route of "
                                  f"{where} (known: {', '.join(names)})", param="routes")
