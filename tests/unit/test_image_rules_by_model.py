"""Images are counted with the rule of the model that reads them, and history trimming counts
with the model the request names (its tokenizer and image rule), not always gpt-4o's.

OpenAI documents two rules (the vision guide's "Calculating costs"): 512px tiles at a per-family
(base, tile) rate, and, for gpt-4.1-mini/nano, gpt-5-mini/nano and o4-mini, 32px patches capped
at 1,536 times a per-model multiplier. The guide's worked example: a 1800 x 2400 image is scaled
to 1056 x 1408, 33 x 44 = 1,452 patches.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from thrifty.compress.history import messages_tokens, trim
from thrifty.gateway import Gateway
from thrifty.media_tokens import _patches, image_tokens, part_tokens
from thrifty.model_names import base_model
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.tokens import count_messages, count_text, encoding_name
from thrifty.types import ChatRequest


def data_url(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_patch_count_follows_the_guides_worked_example() -> None:
    assert _patches(1800, 2400) == 1452  # scaled to 1056 x 1408: 33 x 44 patches
    assert _patches(1024, 1024) == 1024  # under the cap: not scaled
    assert _patches(10000, 100) == 313 * 4
    assert _patches(None, None) == 1536  # unreadable size: the cap


@pytest.mark.parametrize("model,multiplier", [
    ("gpt-4.1-mini", 1.62), ("openai/gpt-4.1-nano-2025-04-14", 2.46), ("o4-mini", 1.72),
    ("gpt-5-mini", 1.62), ("gpt-5-nano", 2.46),
])
def test_patch_models_bill_patches_times_their_multiplier(model: str, multiplier: float) -> None:
    assert image_tokens(1024, 1024, model=model) == math.ceil(1024 * multiplier)
    # "detail" does not change the patch rule (the tile rule's 85-token "low" would undercount 20x)
    assert image_tokens(1024, 1024, "low", model=model) == math.ceil(1024 * multiplier)
    assert image_tokens(None, None, model=model) == math.ceil(1536 * multiplier)


@pytest.mark.parametrize("model,base,tile", [
    ("gpt-4o", 85, 170), ("gpt-4.1", 85, 170), ("gpt-4o-mini-2024-07-18", 2833, 5667),
    ("gpt-5", 70, 140), ("gpt-5-chat-latest", 70, 140), ("o1", 75, 150), ("o3-pro", 75, 150),
    ("computer-use-preview", 65, 129), ("some-local-model", 85, 170), (None, 85, 170),
])
def test_tile_models_bill_their_familys_rate(model: str | None, base: int, tile: int) -> None:
    assert image_tokens(1024, 1024, model=model) == base + 4 * tile  # 768 x 768: 2 x 2 tiles
    assert image_tokens(1024, 1024, "low", model=model) == base


def _conversation(turns: int) -> list[dict[str, Any]]:
    image = {"type": "image_url", "image_url": {"url": data_url(1024, 1024)}}
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You describe photos."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": [{"type": "text", "text": f"photo {i}"}, image]})
        msgs.append({"role": "assistant", "content": f"A red square, number {i}."})
    msgs.append({"role": "user", "content": "Which was the reddest?"})
    return msgs


async def test_trimming_counts_images_with_the_named_models_rule() -> None:
    msgs = _conversation(6)
    budget = 4000
    for_4o = await trim(msgs, budget)
    for_nano = await trim(msgs, budget, model="gpt-4.1-nano")
    # gpt-4o: 765 tokens a photo, so five fit; gpt-4.1-nano: 2,520 a photo, so only one does
    assert messages_tokens(for_nano.messages, "gpt-4.1-nano") <= budget
    assert messages_tokens(for_4o.messages) <= budget
    assert for_nano.dropped > for_4o.dropped
    # under gpt-4o's rule the nano trim looks far under budget: it was not counted that way
    assert messages_tokens(for_nano.messages) < budget // 2
    assert for_nano.saved_tokens == messages_tokens(msgs, "gpt-4.1-nano") - messages_tokens(for_nano.messages,
                                                                                             "gpt-4.1-nano")


async def test_trimming_counts_text_with_the_named_models_tokenizer() -> None:
    # Greek text counts about half the tokens in o200k (gpt-4o) that it does in cl100k
    turn = "Καλημέρα, θα ήθελα να αλλάξω τη διεύθυνση παράδοσης της παραγγελίας μου. " * 8
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for _ in range(10):
        msgs += [{"role": "user", "content": turn}, {"role": "assistant", "content": turn}]
    msgs.append({"role": "user", "content": "Ευχαριστώ"})
    assert count_text(turn, model="gpt-4o") < 0.8 * count_text(turn)
    budget = count_messages(msgs, model="gpt-4o") - 1
    out = await trim(msgs, budget, model="gpt-4o")
    assert 0 < out.dropped <= 4  # one or two turns, not the half cl100k counting would cut
    assert messages_tokens(out.messages, "gpt-4o") <= budget


async def test_the_gateway_trims_with_the_catalogs_upstream_model(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []

    async def upstream(body: dict[str, Any]) -> dict[str, Any]:
        sent.append(body)
        return chat_response(body["model"], "ok", {"prompt_tokens": 10, "completion_tokens": 1})

    cfg = {
        "providers": {"p": {"base_url": "http://unused.invalid"}},
        # clients say "vision"; the provider's model is gpt-4.1-nano (patch rule, 2,520 a photo)
        "models": {"vision": {"provider": "p", "upstream_model": "gpt-4.1-nano",
                              "price": {"input": 0.1, "output": 0.4}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "compression": {"model": "vision", "store": {"path": str(tmp_path / "compress.db")},
                        "routes": {"vision": {"history_max_tokens": 4000}}},
    }
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(upstream)})
    try:
        ctx = await gw.handle(ChatRequest.from_body({"model": "vision", "messages": _conversation(6)}))
        assert ctx.status == "ok"
        kept = sent[-1]["messages"]
        assert messages_tokens(kept, "gpt-4.1-nano") <= 4000
        photos = sum(1 for m in kept if isinstance(m["content"], list))
        assert photos == 1  # gpt-4o's rule (765 a photo) would have kept five
        assert ctx.compression_saved_tokens == (messages_tokens(_conversation(6), "gpt-4.1-nano")
                                                - messages_tokens(kept, "gpt-4.1-nano"))
    finally:
        await gw.aclose()


def test_a_low_detail_image_on_a_patch_model_is_counted_from_its_size() -> None:
    # the tile rule's "low" is a flat base, so its header is not read; the patch rule ignores the
    # detail, and an unread size would count the 1,536-patch cap (2,642 tokens for 64 x 64)
    part = {"type": "image_url", "image_url": {"url": data_url(64, 64), "detail": "low"}}
    assert part_tokens(part, "o4-mini") == math.ceil(4 * 1.72)
    assert part_tokens(part, "gpt-4o") == 85


@pytest.mark.parametrize("model,expected", [
    ("openai/gpt-4o-mini:nitro", 2833 + 4 * 5667),  # OpenRouter variants
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", 2833 + 4 * 5667),  # an OpenAI fine-tune
    ("gpt-5:online", 70 + 4 * 140),
    ("openrouter/openai/gpt-4.1-nano:floor", math.ceil(1024 * 2.46)),
])
def test_wrapped_model_ids_get_their_base_models_rule(model: str, expected: int) -> None:
    assert image_tokens(1024, 1024, model=model) == expected
    assert base_model(model) in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-5", "gpt-4.1-nano")


def test_wrapped_model_ids_count_with_their_base_models_tokenizer() -> None:
    assert encoding_name("openai/gpt-4o:nitro") == encoding_name("gpt-4o") == "o200k_base"
    assert encoding_name("ft:gpt-4o-mini-2024-07-18:acme::abc123") == "o200k_base"
    assert encoding_name("gpt-4:extended") == "cl100k_base"
