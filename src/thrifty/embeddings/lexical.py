"""A dependency-light embedder: hashed word n-grams and character n-grams, TF-log weighted.

No model, no torch, deterministic across processes (the hash is crc32-based, not Python's
salted ``hash``), fast (~tens of microseconds per short text). Good at near-duplicates and
keyword overlap; weaker than a sentence model at paraphrase.
"""

from __future__ import annotations

import math
import re
import zlib
from functools import lru_cache

import numpy as np

from thrifty.embeddings.base import check_texts, normalize_rows
from thrifty.errors import ConfigError

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@lru_cache(maxsize=65536)
def _word_char_hashes(word: str, lo: int, hi: int) -> tuple[int, ...]:
    """The char n-gram hashes of one word (words repeat a lot, so this is cached)."""
    padded = f" {word} "
    return tuple(
        zlib.crc32(("c:" + padded[i : i + n]).encode()) for n in range(lo, hi + 1) for i in range(len(padded) - n + 1)
    )


class LexicalEmbedder:
    def __init__(
        self,
        dim: int = 1024,
        word_ngrams: int = 2,
        char_ngrams: tuple[int, int] | list[int] | None = (3, 5),
        char_weight: float = 0.5,
    ) -> None:
        # Options come from YAML: refuse wrong types here with the option's name (ConfigError),
        # not as a TypeError from a comparison deep inside.
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 8:
            raise ConfigError(f"embedder.dim: expected a whole number >= 8, got {dim!r}")
        if isinstance(word_ngrams, bool) or not isinstance(word_ngrams, int) or word_ngrams < 1:
            raise ConfigError(f"embedder.word_ngrams: expected a whole number >= 1, got {word_ngrams!r}")
        if char_ngrams is not None and not (
                isinstance(char_ngrams, list | tuple) and len(char_ngrams) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in char_ngrams)
                and char_ngrams[0] <= char_ngrams[1]):
            raise ConfigError(f"embedder.char_ngrams: expected [low, high] whole numbers, 1 <= low <= high, "
                              f"or null, got {char_ngrams!r}")
        if isinstance(char_weight, bool) or not isinstance(char_weight, int | float) or not 0 <= char_weight <= 10:
            raise ConfigError(f"embedder.char_weight: expected a number in [0, 10], got {char_weight!r}")
        self._dim = dim
        self.word_ngrams = word_ngrams
        self.char_ngrams = (char_ngrams[0], char_ngrams[1]) if char_ngrams else None
        self.char_weight = float(char_weight)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        ch = f"c{self.char_ngrams[0]}-{self.char_ngrams[1]}x{self.char_weight:g}" if self.char_ngrams else "c0"
        return f"lexical-v1-d{self._dim}-w{self.word_ngrams}-{ch}"

    def _features(self, text: str) -> list[tuple[dict[int, int], float]]:
        """(hashed feature -> occurrence count, weight) for word n-grams and char n-grams."""
        words = _WORD_RE.findall(text.lower())
        word_counts: dict[int, int] = {}
        for n in range(1, self.word_ngrams + 1):
            for i in range(len(words) - n + 1):
                h = zlib.crc32(("w:" + " ".join(words[i : i + n])).encode())
                word_counts[h] = word_counts.get(h, 0) + 1
        char_counts: dict[int, int] = {}
        if self.char_ngrams:
            lo, hi = self.char_ngrams
            for w in words:
                for h in _word_char_hashes(w, lo, hi):
                    char_counts[h] = char_counts.get(h, 0) + 1
        return [(word_counts, 1.0), (char_counts, self.char_weight)]

    def embed(self, texts: list[str]) -> np.ndarray:
        check_texts(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            acc: dict[int, float] = {}
            for counts, weight in self._features(text or ""):
                for h, c in counts.items():
                    # The top hash bit picks the sign so collisions cancel out on average;
                    # sublinear term frequency keeps one repeated word from dominating.
                    idx = h % self._dim
                    val = weight * (1.0 + math.log(c))
                    acc[idx] = acc.get(idx, 0.0) + (val if (h >> 31) & 1 else -val)
            if acc:
                out[row, list(acc)] = list(acc.values())
        return normalize_rows(out)
