"""Images, audio and files in prompt-token counts: budgets, routing estimates, trimming and the
usage of a provider that reports none all count them (they counted 0 tokens but in trimming)."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tests.fixtures.one_model import one_model_config
from tests.fixtures.served import attempt_rows, serving

from thrifty import media_tokens
from thrifty.compress.history import IMAGE_TOKENS, messages_tokens, trim
from thrifty.media_tokens import image_size, image_tokens
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread
from thrifty.tokens import count_messages

Message = dict[str, Any]


def data_url(width: int, height: int, fmt: str = "PNG", **save: Any) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, fmt, **save)
    mime = {"PNG": "png", "JPEG": "jpeg", "GIF": "gif", "WEBP": "webp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def ask(*parts: dict[str, Any]) -> list[Message]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this?"}, *parts]}]


def image_part(url: str, detail: str | None = None) -> dict[str, Any]:
    image: dict[str, Any] = {"url": url}
    if detail:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


TEXT_ONLY = count_messages(ask())


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    media_tokens._cache.clear()
    yield
    media_tokens._cache.clear()


@pytest.mark.parametrize("size,tokens", [
    ((1024, 1024), 765),   # OpenAI's worked example: scaled to 768 x 768, 4 tiles
    ((2048, 4096), 1105),  # OpenAI's worked example: 1024 x 2048, then 768 x 1536, 6 tiles
    ((512, 512), 255),     # one tile: never scaled up
    ((128, 64), 255),      # small images are billed one tile, not scaled to 768
    ((1920, 1080), 1105),  # a screenshot: 1365 x 768, 3 x 2 tiles
    ((768, 2048), 1445),   # the most one image costs: 2 x 4 tiles
    ((10000, 100), 765),   # a thin strip: 2048 x 20, 4 x 1 tiles
])
def test_tile_arithmetic_follows_openais_rule(size: tuple[int, int], tokens: int) -> None:
    assert image_tokens(*size) == tokens
    assert image_tokens(*size, detail="auto") == tokens
    assert image_tokens(*size, detail="low") == 85


def test_gpt_4o_mini_counts_its_documented_image_tokens() -> None:
    assert image_tokens(1024, 1024, model="gpt-4o-mini") == 2833 + 4 * 5667
    assert image_tokens(1024, 1024, "low", model="openai/gpt-4o-mini-2024-07-18") == 2833
    assert image_tokens(1024, 1024, model="gpt-4o") == 765


@pytest.mark.parametrize("fmt,save", [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {}),
                                      ("WEBP", {"lossless": True}), ("JPEG", {"progressive": True})])
def test_the_size_is_read_from_a_data_urls_header(fmt: str, save: dict[str, Any]) -> None:
    assert image_size(data_url(1000, 300, fmt, **save)) == (1000, 300)
    # The whole request is counted with the image's real tiles: 768 x 230 is 2 x 1 tiles.
    assert count_messages(ask(image_part(data_url(1000, 300, fmt, **save)))) == TEXT_ONLY + 85 + 2 * 170


def test_a_jpeg_with_a_large_exif_block_is_read_without_decoding_it() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(buf, "JPEG", exif=b"Exif\x00\x00" + b"\x00" * 60_000)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    assert image_size(url) == (3000, 2000)


def test_images_by_url_and_unknown_data_get_the_stated_default() -> None:
    most = 85 + media_tokens.IMAGE_TILES_MAX * 170
    assert count_messages(ask(image_part("https://example.com/cat.png"))) == TEXT_ONLY + most
    assert count_messages(ask(image_part("https://example.com/cat.png", "low"))) == TEXT_ONLY + 85
    assert count_messages(ask(image_part("data:image/bmp;base64," + "Qk0" * 40))) == TEXT_ONLY + most
    # The Responses API's input_image part, with its image_url a string.
    responses = [{"role": "user", "content": [{"type": "input_image", "image_url": data_url(512, 512)}]}]
    assert count_messages(responses) == count_messages([{"role": "user", "content": []}]) + 255


@pytest.mark.parametrize("url", [
    "data:image/png;base64,", "data:image/png;base64,!!!!not base64!!!!", "data:image/png;base64,iVBORw0KGgo",
    "data:image/jpeg;base64,/9j/", "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ" + "%" * 50,
    "data:image/webp;base64,UklGRgAAAABXRUJQVlA4",  "data:;base64", "data:image/png,rawbytes", "",
    "data:image/gif;base64,R0lGODlh",
])
def test_malformed_images_never_raise(url: str) -> None:
    assert count_messages(ask(image_part(url))) >= TEXT_ONLY + 85
    assert count_messages(ask({"type": "image_url", "image_url": None}, {"type": "image_url"},
                              {"type": "image_url", "image_url": {"url": 12}})) > TEXT_ONLY


def wav(seconds: float, rate: int = 16_000) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(rate * seconds))
    return base64.b64encode(buf.getvalue()).decode()


def test_audio_counts_its_duration() -> None:
    ten_seconds = {"type": "input_audio", "input_audio": {"data": wav(10), "format": "wav"}}
    assert count_messages(ask(ten_seconds)) == TEXT_ONLY + 10 * media_tokens.AUDIO_TOKENS_PER_SECOND
    stereo = {"type": "input_audio", "input_audio": {"data": wav(5, rate=44_100), "format": "wav"}}
    assert count_messages(ask(stereo)) == TEXT_ONLY + 5 * media_tokens.AUDIO_TOKENS_PER_SECOND
    # An mp3 has no byte rate in a fixed header: timed from its size at 64 kbit/s (8,000 bytes a second).
    mp3 = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"\xff\xfb" * 40_000).decode(),
                                                  "format": "mp3"}}
    assert count_messages(ask(mp3)) == TEXT_ONLY + 10 * media_tokens.AUDIO_TOKENS_PER_SECOND
    bad = {"type": "input_audio", "input_audio": {"data": "RIFF????WAVEfmt ###", "format": "wav"}}
    assert count_messages(ask(bad, {"type": "input_audio"}, {"type": "input_audio", "input_audio": "x"})) >= TEXT_ONLY


def pdf(pages: int) -> bytes:
    body = b"".join(b"%d 0 obj << /Type /Page /Parent 2 0 R >> endobj\n" % (i + 3) for i in range(pages))
    return b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Count " \
        + str(pages).encode() + b" >> endobj\n" + body + b"%%EOF\n"


def test_pdf_files_count_per_page() -> None:
    part = {"type": "file", "file": {"filename": "report.pdf",
                                     "file_data": "data:application/pdf;base64," + base64.b64encode(pdf(7)).decode()}}
    assert count_messages(ask(part)) == TEXT_ONLY + 7 * media_tokens.PDF_PAGE_TOKENS
    # Pages kept in compressed object streams: one page per 25 KB.
    packed = b"%PDF-1.7\n" + b"x" * 60_000
    part["file"]["file_data"] = base64.b64encode(packed).decode()  # bare base64 is read too
    assert count_messages(ask(part)) == TEXT_ONLY + 3 * media_tokens.PDF_PAGE_TOKENS
    # An uploaded file (its size unknown) counts one page; other files count as text.
    assert count_messages(ask({"type": "file", "file": {"file_id": "file-abc"}})) == \
        TEXT_ONLY + media_tokens.PDF_PAGE_TOKENS
    notes = {"type": "input_file", "filename": "a.txt",
             "file_data": "data:text/plain;base64," + base64.b64encode(b"a" * 4000).decode()}
    assert count_messages(ask(notes)) == TEXT_ONLY + 1000
    bad = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0%%%%"}}
    assert count_messages(ask(bad, {"type": "file"}, {"type": "file", "file": "x"})) >= TEXT_ONLY


async def test_trimming_uses_the_same_numbers_as_every_other_count() -> None:
    small = image_part(data_url(256, 256))  # 255 tokens, not the 1,105 trimming used to assume
    msgs: list[Message] = [{"role": "system", "content": "You look at pictures."}]
    for i in range(4):
        msgs += [{"role": "user", "content": [{"type": "text", "text": f"picture {i}"}, small]},
                 {"role": "assistant", "content": f"a red square, number {i}"}]
    msgs.append({"role": "user", "content": [{"type": "text", "text": "and this?"}, small]})
    assert messages_tokens(msgs) == count_messages(msgs)
    assert count_messages(msgs) > 5 * 255
    out = await trim(msgs, count_messages(msgs))
    assert out.messages == msgs and out.dropped == 0  # all five fit a budget of their real size
    out = await trim(msgs, count_messages(msgs) - 1)
    assert out.dropped == 2 and messages_tokens(out.messages) <= count_messages(msgs) - 1
    assert image_tokens(None, None) == IMAGE_TOKENS


def test_a_ten_image_request_reads_each_header_once(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = [data_url(800 + i, 600, "JPEG" if i % 2 else "PNG") for i in range(10)]
    reads: list[int] = []
    real = media_tokens._image_size
    monkeypatch.setattr(media_tokens, "_image_size", lambda b: reads.append(1) or real(b))
    msgs = ask(*(image_part(u) for u in urls))
    first = count_messages(msgs)
    for _ in range(4):  # budget, routing, trimming, accounting
        assert count_messages(msgs) == first
    assert len(reads) == 10


def test_the_ledger_estimates_an_image_when_the_provider_reports_no_usage(tmp_path: Path) -> None:
    """Through the real gateway, from the real client, to a mock upstream that sends no usage."""
    mock_cfg = MockConfig.from_dict({"models": {"quiet": {"usage_convention": "none", "output_tokens": [5, 5]}}})
    with run_in_thread(create_mock(mock_cfg)) as mock:
        cfg = one_model_config(mock.url, tmp_path, "quiet", {"input": 1.0, "output": 1.0})
        with serving(cfg) as (gw, client):
            for content in (ask(), ask(image_part(data_url(1024, 1024)))):
                reply = client.chat.completions.create(model="quiet", messages=content[0:1])  # type: ignore[arg-type]
                assert reply.usage is None or reply.usage.prompt_tokens is None
    text_row, image_row = attempt_rows(gw, "a.prompt_tokens, a.cost_source")
    assert text_row["cost_source"] == image_row["cost_source"] == "estimated"
    assert image_row["prompt_tokens"] - text_row["prompt_tokens"] == 765  # counted 0 before


def test_budget_and_cost_guard_estimates_use_the_models_image_rule() -> None:
    """The budget reservation and the routing cost guard count with the model's own rule: an
    image costs gpt-4o-mini 33x the tokens (at a 33x lower price) it costs gpt-4o."""
    from thrifty.config import Config
    from thrifty.ops.budgets import BudgetStage
    from thrifty.ops.keys import KeyStore
    from thrifty.ops.ratelimit import MemoryLimiter
    from thrifty.pipeline.context import RequestContext
    from thrifty.routing.policies import BudgetGuard
    from thrifty.types import ChatRequest

    catalog = Config.model_validate({
        "providers": {"p": {"base_url": "http://x"}},
        "models": {"mini": {"provider": "p", "upstream_model": "gpt-4o-mini", "price": {"input": 0.15, "output": 0.6}},
                   "big": {"provider": "p", "upstream_model": "gpt-4o", "price": {"input": 2.5, "output": 10}}},
    }).build_catalog()
    msgs = ask(image_part(data_url(512, 512)))

    async def no_spend(key_id: str, since: float) -> float:
        return 0.0

    stage = BudgetStage(KeyStore.__new__(KeyStore), MemoryLimiter(no_spend), catalog, default_completion_tokens=1)
    mini = stage.estimate(ChatRequest.from_body({"model": "mini", "messages": msgs, "max_tokens": 1}))[0]
    big = stage.estimate(ChatRequest.from_body({"model": "big", "messages": msgs, "max_tokens": 1}))[0]
    assert mini - big == image_tokens(512, 512, model="gpt-4o-mini") - image_tokens(512, 512)

    guard = BudgetGuard(catalog, max_cost_usd=1.0)
    ctx = RequestContext(request=ChatRequest.from_body({"model": "auto", "messages": msgs, "max_tokens": 1}))
    assert guard.tokens(ctx, "gpt-4o-mini")[0] - guard.tokens(ctx, "gpt-4o")[0] == mini - big
    assert "prompt" in guard.why_not(ctx, "mini")
