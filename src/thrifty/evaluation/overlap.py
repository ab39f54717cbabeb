"""One rule for judged data that overlaps the data a policy or verifier was fitted on.

An item judged while the fitted side holds it (a routing prompt also in ``--train``, a question
of a cached pair also in ``--calibrate-on``) is judged in-sample: a fitted model can memorise it.
Such items are left out of the judged set with a warning; when nothing is left the evaluation is
refused (``DataError``) rather than reported on no data. Callers say what an item's keys are and
how to word both messages; the rule and its arithmetic live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

from thrifty.errors import DataError

J = TypeVar("J")
F = TypeVar("F")


def drop_overlap(judged: Sequence[J], fitted: Iterable[F], *, judged_keys: Callable[[J], Iterable[Hashable]],
                 fitted_keys: Callable[[F], Iterable[Hashable]], warning: str,
                 refusal: str) -> tuple[list[J], str | None]:
    """``judged`` without the items any of whose keys is a key of a ``fitted`` item, and the
    ``warning`` (None when nothing was left out), formatted with ``dropped``, ``total`` and
    ``kept``. ``DataError(refusal)``, formatted with ``total``, when every item was left out."""
    seen = {key for item in fitted for key in fitted_keys(item)}
    keep = [item for item in judged if not any(key in seen for key in judged_keys(item))]
    dropped = len(judged) - len(keep)
    if not dropped:
        return list(judged), None
    if not keep:
        raise DataError(refusal.format(total=len(judged)))
    return keep, warning.format(dropped=dropped, total=len(judged), kept=len(keep))
