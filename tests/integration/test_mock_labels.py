"""The mock upstream answers a one-item labelled request (`thrifty batch run --labels` with
`--pack 1`, the per-item fallback, or `--deferred`) with one of the labels, the same one it gives
that item inside a pack: before, it answered free text, so every such item failed as invalid."""

from __future__ import annotations

import json

import openai

from thrifty.batching.items import Item
from thrifty.batching.packing import packed_messages, packed_params, single_messages
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread

LABELS = ["positive", "negative", "mixed"]
ITEMS = [Item(str(i), text) for i, text in enumerate(
    ["Loved it.", "Broke after a day.", "Fine, I guess.", "Great value!", "Never again.", "It works.", "Meh."])]


def test_a_single_labelled_request_gets_the_label_the_item_gets_in_a_pack() -> None:
    with run_in_thread(create_mock(MockConfig.from_dict({"models": {"cheap": {}}}))) as upstream:
        client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-mock", max_retries=0)
        alone = {}
        for item in ITEMS:
            reply = client.chat.completions.create(
                model="cheap", messages=single_messages("Classify the sentiment.", item, LABELS))  # type: ignore[arg-type]
            alone[item.id] = reply.choices[0].message.content
        packed = client.chat.completions.create(
            model="cheap", messages=packed_messages("Classify the sentiment.", ITEMS, LABELS),  # type: ignore[arg-type]
            **packed_params(LABELS, True, 500))
        # A pack numbers its items 1..K (packing.packed_messages): back to the items' own ids.
        results = json.loads(packed.choices[0].message.content or "")["results"]
        together = {ITEMS[int(r["id"]) - 1].id: r["output"] for r in results}
        unlabelled = client.chat.completions.create(
            model="cheap", messages=single_messages("Summarise.", ITEMS[0], None))  # type: ignore[arg-type]
    assert set(alone.values()) <= set(LABELS) and len(set(alone.values())) > 1, alone
    assert alone == together
    assert unlabelled.choices[0].message.content not in LABELS  # no labels asked: the usual free text
