"""Request ids: unique, a fixed shape, and ordered by time so the ledger's indexes append."""

from __future__ import annotations

import re
import time

from thrifty.pipeline.context import new_request_id


def test_ids_have_the_documented_shape_and_are_unique() -> None:
    ids = [new_request_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)


def test_ids_sort_by_creation_time() -> None:
    first = new_request_id()
    time.sleep(0.002)  # ids share their time prefix within one millisecond
    second = new_request_id()
    assert first < second
    # The time prefix is the creation time in ms, so an id also says when its request came.
    assert abs(int(second[4:16], 16) / 1000 - time.time()) < 5
