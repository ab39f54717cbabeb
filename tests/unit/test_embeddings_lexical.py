"""The lexical embedder: shape, normalisation, determinism, similarity ordering, factory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from thrifty.embeddings import Embedder, LexicalEmbedder, build_embedder
from thrifty.errors import ConfigError


def test_rows_are_unit_float32_and_empty_text_is_zero() -> None:
    emb = LexicalEmbedder(dim=256)
    vecs = emb.embed(["hello world", "Hello, World!", ""])
    assert vecs.shape == (3, 256)
    assert vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs[:2], axis=1), 1.0, atol=1e-5)
    assert not vecs[2].any()
    assert float(vecs[0] @ vecs[1]) == pytest.approx(1.0, abs=1e-5)  # case and punctuation ignored


def test_paraphrase_is_closer_than_unrelated_text() -> None:
    emb = LexicalEmbedder()
    a, b, c = emb.embed(["What is the capital of France?", "what is the capital city of france", "How do I bake bread?"])
    assert float(a @ b) > 0.7
    assert float(a @ c) < 0.2


def test_deterministic_across_processes() -> None:
    # Python's str hash is salted per process; the embedder must not depend on it.
    code = "from thrifty.embeddings import LexicalEmbedder;print(LexicalEmbedder(dim=64).embed(['route me'])[0].tolist())"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(outs) == 1
    assert outs.pop().strip() == str(LexicalEmbedder(dim=64).embed(["route me"])[0].tolist())


def test_factory_specs_and_protocol() -> None:
    emb = build_embedder({"kind": "lexical", "dim": 128, "char_ngrams": None})
    assert isinstance(emb, Embedder)
    assert emb.dim == 128 and "d128" in emb.name
    assert build_embedder(None).name == LexicalEmbedder().name
    assert build_embedder("lexical").embed([]).shape == (0, 1024)


@pytest.mark.parametrize("spec", ["bogus", {"kind": "lexical", "nope": 1}, 42])
def test_factory_rejects_bad_specs(spec: object) -> None:
    with pytest.raises(ConfigError):
        build_embedder(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(("opts", "needle"), [
    ({"dim": 4}, "embedder.dim"), ({"dim": -3}, "embedder.dim"), ({"dim": "x"}, "embedder.dim"),
    ({"word_ngrams": 0}, "embedder.word_ngrams"), ({"char_ngrams": [5, 3]}, "embedder.char_ngrams"),
    ({"char_ngrams": "3-5"}, "embedder.char_ngrams"), ({"char_weight": -1}, "embedder.char_weight"),
    ({"ngram_range": [1, 2]}, "embedder.ngram_range: unknown option"),
])
def test_bad_options_are_a_config_error_naming_the_option(opts: dict[str, object], needle: str) -> None:
    from thrifty.embeddings import build_embedder
    from thrifty.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        build_embedder({"kind": "lexical", **opts})


@pytest.mark.parametrize("texts", ["hello", [5], [b"bytes"]])
def test_embed_refuses_one_string_or_non_strings(texts: object) -> None:
    # One string is a sequence of characters: it would have been embedded letter by letter.
    with pytest.raises(TypeError, match="embed"):
        build_embedder("lexical").embed(texts)  # type: ignore[arg-type]
