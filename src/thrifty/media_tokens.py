"""Token estimates of a message's non-text content parts: images, audio and files.

Text counts come from the tokenizer (``thrifty.tokens``); what an image, a clip or a PDF costs is
decided by the provider from the media itself, so it is estimated here from what a request
carries, cheaply: only the few header bytes of a base64 data URL are decoded (an image's size, a
WAV's byte rate), a URL is never fetched, and a result is remembered per payload so the several
counts one request makes (budget, routing, trimming, accounting) read each header once. When
nothing can be read the estimate is a stated default on the high side: these counts reserve
budgets and price calls whose provider reported no usage, which must not come out far below the
bill. Malformed input never raises; it gets the default.
"""

from __future__ import annotations

import binascii
import math
import re
import struct
from collections.abc import Callable
from typing import Any

from thrifty.model_names import base_model

# Images, OpenAI's documented rules (platform.openai.com/docs/guides/images-vision, "Calculating
# costs"), which differ by model family.
# The tile rule: detail "low" costs a fixed base; "high" (and "auto", counted as high) scales the
# image to fit a 2048 x 2048 square, then so its shortest side is 768px, counts the 512px tiles
# that cover it, and costs a price per tile plus the base. Both scalings only shrink: a 128 x 64
# image is billed one tile (85 + 170 on gpt-4o), as OpenAI's usage for small images shows.
IMAGE_BASE = 85
IMAGE_TILE = 170
# (base, tile) by model-name prefix, longest prefix first; gpt-4o, gpt-4.1, gpt-4.5 and any model
# not listed use (85, 170), the dearest rate per token of pixels among the tile models but
# gpt-4o-mini's, so an unknown model's image is not under-counted. gpt-4o-mini bills images at
# gpt-4o's dollar price with a 33x lower token price, so its counts are 33x higher.
_TILE_RATES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("gpt-4o-mini", (2833, 5667)),
    ("computer-use-preview", (65, 129)),
    ("o1", (75, 150)),
    ("o3", (75, 150)),
)
# gpt-5 (and its chat and pro variants) bills 70 + 140 per tile; not gpt-5-mini/nano (patch rule)
# nor later gpt-5.x releases, whose rates the table has not been checked against.
_GPT5_TILE = (70, 140)
# The patch rule (gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini): the image is covered by 32px
# patches; past 1,536 patches it is scaled down (keeping its aspect ratio) until whole patches
# fit within 1,536; the patch count times a per-model multiplier is the token count. "detail"
# does not change it. An unreadable size counts the cap.
_PATCH_PX = 32
_PATCH_CAP = 1536
_PATCH_MULTIPLIERS: tuple[tuple[str, float], ...] = (
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("o4-mini", 1.72),
)
# An image whose size cannot be read (an http(s) URL, an unknown format, bad base64), tile rule:
# the most one image can cost, 768 x 2048 after scaling = 2 x 4 tiles (85 + 8 x 170 on gpt-4o).
IMAGE_TILES_MAX = 8

# Audio: Gemini documents 32 tokens per second of audio (ai.google.dev/gemini-api/docs/audio);
# OpenAI does not document a rate (its realtime usage shows about 10 per second of input), so the
# higher documented rate is used. A WAV's duration is its data bytes over the header's byte rate;
# other formats (mp3...) are timed from their size at 64 kbit/s, a common speech bitrate.
AUDIO_TOKENS_PER_SECOND = 32
AUDIO_DEFAULT_BYTES_PER_SECOND = 64_000 // 8

# Files: OpenAI gives the model a PDF's extracted text and an image of each page, so a page costs
# about one high-detail page image (a portrait page is 2 x 2 tiles, 765 tokens) plus its text:
# 1,500 tokens a page. Pages are counted from the PDF's ``/Type /Page`` objects; a PDF that keeps
# them in compressed object streams is counted as one page per 25 KB. Other files count as text
# (4 bytes a token); a ``file_id`` (an uploaded file, size unknown) counts as one page.
PDF_PAGE_TOKENS = 1500
PDF_BYTES_PER_PAGE = 25_000
TEXT_BYTES_PER_TOKEN = 4

_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_CACHE_MAX = 512
# (kind, payload length, hash of its first 2,048 characters, its last 64) -> what was read from
# it. An image's size lies in that head (a JPEG's frame header after a large EXIF block aside,
# where a distinct tail still tells photos apart). Hashing whole payloads cost more than reading
# the headers (6-16 ms for a request of ten 4 MB images; reading their headers takes 0.06 ms),
# and the key holds no payload, so the cache stays small however large the images are.
_HEAD_CHARS = 2048
_cache: dict[tuple[str, int, int, str], Any] = {}


def image_tokens(width: int | None, height: int | None, detail: str | None = None,
                 model: str | None = None) -> int:
    """What one image costs under OpenAI's rule for ``model`` (see ``IMAGE_BASE``); unknown size:
    the maximum."""
    name = base_model(model)
    multiplier = _patch_multiplier(name)
    if multiplier is not None:
        return math.ceil(_patches(width, height) * multiplier)
    base, tile = _tile_rate(name)
    if detail == "low":
        return base
    if not width or not height or width <= 0 or height <= 0:
        return base + tile * IMAGE_TILES_MAX
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patches(width: int | None, height: int | None) -> int:
    """32px patches covering a ``width`` x ``height`` image under the patch rule's 1,536 cap."""
    if not width or not height or width <= 0 or height <= 0:
        return _PATCH_CAP
    w, h = float(width), float(height)
    n = math.ceil(w / _PATCH_PX) * math.ceil(h / _PATCH_PX)
    if n <= _PATCH_CAP:
        return n
    # Scale to the cap's area, then a little further so each side is a whole number of patches.
    shrink = math.sqrt(_PATCH_PX * _PATCH_PX * _PATCH_CAP / (w * h))
    w_p, h_p = w * shrink / _PATCH_PX, h * shrink / _PATCH_PX
    shrink *= min(math.floor(w_p) / w_p if w_p >= 1 else 1.0, math.floor(h_p) / h_p if h_p >= 1 else 1.0)
    w, h = max(1, int(w * shrink)), max(1, int(h * shrink))
    return min(_PATCH_CAP, math.ceil(w / _PATCH_PX) * math.ceil(h / _PATCH_PX))


def _patch_multiplier(name: str) -> float | None:
    for prefix, multiplier in _PATCH_MULTIPLIERS:
        if name.startswith(prefix):
            return multiplier
    return None


def _tile_rate(name: str) -> tuple[int, int]:
    for prefix, rate in _TILE_RATES:
        if name == prefix or name.startswith(prefix + "-"):
            return rate
    if name == "gpt-5" or (name.startswith("gpt-5-") and not name.startswith(("gpt-5-mini", "gpt-5-nano"))):
        return _GPT5_TILE
    return IMAGE_BASE, IMAGE_TILE


def content_media_tokens(content: Any, model: str | None = None) -> int:
    """Tokens of the image, audio and file parts of a message ``content`` (0 for a string)."""
    if not isinstance(content, list):
        return 0
    n = 0
    for part in content:
        if isinstance(part, dict):
            n += part_tokens(part, model)
    return n


def part_tokens(part: dict[str, Any], model: str | None = None) -> int:
    """Tokens of one content part: Chat Completions' ``image_url``/``input_audio``/``file`` and
    the Responses API's ``input_image``/``input_file``; text and unknown parts count 0 here."""
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = (image.get("detail") if isinstance(image, dict) else None) or part.get("detail")
        # a low-detail image costs the same at any size under the tile rule: its header is not
        # read (the patch rule ignores the detail: a small image there costs little)
        flat = detail == "low" and _patch_multiplier(base_model(model)) is None
        size = image_size(url) if isinstance(url, str) and not flat else None
        width, height = size or (None, None)
        return image_tokens(width, height, detail, model)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if isinstance(audio, dict) and isinstance(audio.get("data"), str):
            return audio_tokens(audio["data"], audio.get("format"))
        return 0
    if kind in ("file", "input_file"):
        file = part.get("file") if kind == "file" else part
        data = file.get("file_data") if isinstance(file, dict) else None
        return file_tokens(data) if isinstance(data, str) else PDF_PAGE_TOKENS
    return 0


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) from a base64 data URL's PNG/JPEG/GIF/WebP header; None when not readable
    (any http(s) URL: never fetched)."""
    start = _data_start(url)
    return None if start is None else _cached("image", url, lambda: _image_size(_B64(url, start)))


def audio_tokens(data: str, fmt: Any = None) -> int:
    """Tokens of a base64 audio clip: its duration at ``AUDIO_TOKENS_PER_SECOND``."""
    start = _data_start(data) or 0
    seconds = _cached("audio", data, lambda: _audio_seconds(_B64(data, start), fmt))
    if seconds is None:  # an unreadable header: timed from the size
        seconds = _B64(data, start).size / AUDIO_DEFAULT_BYTES_PER_SECOND
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def file_tokens(file_data: str) -> int:
    """Tokens of a base64 file (a data URL or bare base64): PDFs by page, other files as text."""
    start = _data_start(file_data) or 0
    tokens = _cached("file", file_data, lambda: _file_tokens(_B64(file_data, start)))
    return PDF_PAGE_TOKENS if tokens is None else int(tokens)


def _data_start(url: str) -> int | None:
    """Where the base64 of a ``data:...;base64,`` URL starts, else None (an index, not a slice:
    slicing would copy a multi-megabyte payload on every count)."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 256)
    return comma + 1 if comma > 0 and url[:comma].endswith(";base64") else None


_MISS = object()


def _cached(kind: str, payload: str, read: Callable[[], Any]) -> Any:
    key = (kind, len(payload), hash(payload[:_HEAD_CHARS]), payload[-64:])
    value = _cache.get(key, _MISS)  # one lookup: another thread may clear the dict between two
    if value is not _MISS:
        return value
    try:
        value = read()
    except (struct.error, ValueError, IndexError):  # a header that lies about its own lengths
        value = None
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()  # simpler than LRU order, and a header is cheap to read again
    _cache[key] = value
    return value


class _B64:
    """Byte ranges of a base64 payload, decoding only the 4-character groups that hold them."""

    def __init__(self, text: str, start: int) -> None:
        self.text, self.start = text, start
        chars = len(text) - start
        self.size = max(0, chars * 3 // 4 - text[-2:].count("=")) if chars > 0 else 0

    def read(self, start: int, n: int) -> bytes:
        """Bytes ``start`` to ``start + n`` (fewer at the end; b"" where the base64 is bad)."""
        if start < 0 or n <= 0 or start >= self.size:
            return b""
        first = start // 3
        chunk = self.text[self.start + first * 4:self.start + (start + n + 2) // 3 * 4]
        try:
            raw = binascii.a2b_base64(chunk)
        except (binascii.Error, ValueError):
            return b""
        return raw[start - first * 3:start - first * 3 + n]

    def all(self) -> bytes:
        try:
            return binascii.a2b_base64(self.text[self.start:])
        except (binascii.Error, ValueError):
            return b""


def _image_size(b: _B64) -> tuple[int, int] | None:
    head = b.read(0, 32)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return w, h
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(b)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        b0, b1, b2, b3 = head[21:25]
        return 1 + (b0 | (b1 & 0x3F) << 8), 1 + (b1 >> 6 | b2 << 2 | (b3 & 0x0F) << 10)
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    return None


def _jpeg_size(b: _B64) -> tuple[int, int] | None:
    """Walk the JPEG's segments (skipping each by its length, so EXIF and ICC blocks are never
    decoded) to the frame header that holds the size."""
    pos = 2
    for _ in range(256):
        seg = b.read(pos, 9)
        if len(seg) < 4 or seg[0] != 0xFF:
            return None
        marker = seg[1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_SOF:
            if len(seg) < 9:
                return None
            h, w = struct.unpack(">HH", seg[5:9])
            return w, h
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = struct.unpack(">H", seg[2:4])[0]
        if length < 2:
            return None
        pos += 2 + length
    return None


def _audio_seconds(b: _B64, fmt: Any) -> float:
    head = b.read(0, 64)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        rate = _wav_byte_rate(b)
        if rate:
            return max(0, b.size - 44) / rate
    return b.size / AUDIO_DEFAULT_BYTES_PER_SECOND


def _wav_byte_rate(b: _B64) -> int | None:
    pos = 12
    for _ in range(16):  # the "fmt " chunk comes first in practice; a few others may precede it
        chunk = b.read(pos, 20)
        if len(chunk) < 8:
            return None
        size = struct.unpack("<I", chunk[4:8])[0]
        if chunk[:4] == b"fmt ":
            rate = struct.unpack("<I", chunk[16:20])[0] if len(chunk) >= 20 else 0
            return rate or None
        pos += 8 + size + (size & 1)
    return None


def _file_tokens(b: _B64) -> int:
    if b.read(0, 5) != b"%PDF-":
        return max(1, b.size // TEXT_BYTES_PER_TOKEN)
    pages = len(_PAGE.findall(b.all()))
    if not pages:
        pages = max(1, math.ceil(b.size / PDF_BYTES_PER_PAGE))
    return pages * PDF_PAGE_TOKENS
