"""Which embedder the cache uses when none is named: "auto" for the CLI, the verifier's for the gateway."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from thrifty.cache.build import embedder_spec, load_verifiers
from thrifty.cache.calibrate import calibrate
from thrifty.cache.pairs import read_pairs
from thrifty.config import load_config
from thrifty.embeddings import LexicalEmbedder, build_embedder
from thrifty.embeddings.base import sentence_extra_installed, spec_for_name
from thrifty.errors import ConfigError


def test_auto_is_minilm_with_the_extra_and_lexical_without(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "sentence:all-MiniLM-L6-v2" if sentence_extra_installed() else LexicalEmbedder().name
    assert build_embedder("auto").name == expected
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    assert not sentence_extra_installed()
    assert build_embedder("auto").name == LexicalEmbedder().name
    with pytest.raises(ConfigError, match="auto"):
        build_embedder({"kind": "auto", "dim": 64})


def test_names_map_back_to_specs() -> None:
    assert spec_for_name(LexicalEmbedder().name) == "lexical"
    assert spec_for_name("sentence:all-MiniLM-L6-v2") == "minilm"
    # Options the name cannot carry back (a folder, another dimension) need an explicit spec.
    assert spec_for_name(LexicalEmbedder(dim=64).name) is None
    assert spec_for_name("sentence:my-model") is None


@pytest.fixture(scope="module")
def verifier_doc(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    rows = (data_dir / "qqp" / "pairs_dev.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    path = tmp_path_factory.mktemp("pairs") / "p.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cal = calibrate(read_pairs(path), build_embedder("lexical"), model="logreg", folds=2,
                    max_false_hit_rate=0.05)
    out = tmp_path_factory.mktemp("ver") / "v.json"
    cal.verifier.save(out)
    return dict(json.loads(out.read_text()))


def _config(tmp_path: Path, doc: dict[str, Any], embedder_name: str, **semantic: Any) -> Any:
    ver = tmp_path / (embedder_name.replace(':', '_') + '.json')
    ver.write_text(json.dumps({**doc, "embedder": embedder_name}))
    return load_config({"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
                        "models": {"m": {"provider": "p"}},
                        "cache": {"path": str(tmp_path / "c.db"),
                                  "semantic": {"enabled": True, "verifier": str(ver), **semantic}}})


def verifier_embedder(cfg: Any) -> str:
    """The embedder spec the gateway derives from the config's verifier files."""
    return embedder_spec(load_verifiers(cfg, cfg.cache).values())


def test_gateway_embeds_with_the_verifiers_embedder(tmp_path: Path, verifier_doc: dict[str, Any]) -> None:
    cfg = _config(tmp_path, verifier_doc, "sentence:all-MiniLM-L6-v2")
    assert verifier_embedder(cfg) == "minilm"
    cfg = _config(tmp_path, verifier_doc, LexicalEmbedder().name)
    assert verifier_embedder(cfg) == "lexical"
    with pytest.raises(ConfigError, match=r"name the embedder \(cache\.semantic\.embedder"):
        cfg = _config(tmp_path, verifier_doc, "sentence:some-local-folder")
        verifier_embedder(cfg)
    no_verifier = load_config({"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
                               "models": {"m": {"provider": "p"}}, "cache": {"semantic": {"enabled": True}}})
    assert verifier_embedder(no_verifier) == "lexical"
