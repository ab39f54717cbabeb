import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from thrifty.errors import DataError
from thrifty.evaluation import datasets
from thrifty.evaluation.datasets import (
    DatasetFile,
    NamedDataset,
    data_dir,
    download,
    local_copy,
    resolve_data,
)

CONTENT = b"prompt,m,m|model_response,m|total_cost\n\"['hi']\",1,\"['yo']\",0.5\n"


@pytest.fixture
def served(tmp_path: Path):
    """A folder served over HTTP on 127.0.0.1 (no network), with a request counter."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.csv").write_bytes(CONTENT)
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, hits
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_dataset(monkeypatch, served):
    url, _, _ = served
    ds = NamedDataset("tinybench", url, (DatasetFile("a.csv", hashlib.sha256(CONTENT).hexdigest(), len(CONTENT)),),
                      "test server")
    monkeypatch.setitem(datasets.DATASETS, "tinybench", ds)
    return ds


def test_download_verifies_and_caches(tmp_path, fake_dataset, served):
    env = {"THRIFTY_CACHE_DIR": str(tmp_path / "cache")}
    folder = download("tinybench", env)
    assert (folder / "a.csv").read_bytes() == CONTENT
    assert folder == tmp_path / "cache" / "datasets" / "tinybench"
    hits = served[2]
    n = len(hits)
    download("tinybench", env)  # valid cached file: not fetched again
    assert len(hits) == n
    assert resolve_data("tinybench", env) == folder
    assert not list(folder.glob("*.part"))


def test_a_corrupted_download_is_rejected_and_not_kept(tmp_path, fake_dataset, served):
    (served[1] / "a.csv").write_bytes(CONTENT + b"tampered")
    env = {"THRIFTY_CACHE_DIR": str(tmp_path / "cache")}
    with pytest.raises(DataError, match="sha256 mismatch"):
        download("tinybench", env)
    assert not (tmp_path / "cache" / "datasets" / "tinybench" / "a.csv").exists()


def test_unreachable_source_is_a_data_error(tmp_path, monkeypatch):
    ds = NamedDataset("gone", "http://127.0.0.1:9", (DatasetFile("a.csv", "0" * 64, 1),), "nowhere")
    monkeypatch.setitem(datasets.DATASETS, "gone", ds)
    with pytest.raises(DataError, match="cannot download"):
        download("gone", {"THRIFTY_CACHE_DIR": str(tmp_path)}, timeout_s=2)


def test_the_data_dir_setting_wins_over_the_cache(tmp_path):
    (tmp_path / "routerbench").mkdir()
    env = {"THRIFTY_DATA_DIR": str(tmp_path), "THRIFTY_CACHE_DIR": str(tmp_path / "cache")}
    assert data_dir(env) == tmp_path
    assert local_copy("routerbench", env) == tmp_path / "routerbench"
    assert resolve_data("routerbench", env) == tmp_path / "routerbench"


def test_paths_resolve_as_themselves_and_unknown_names_fail(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("")
    assert resolve_data(str(f), {}) == f
    with pytest.raises(DataError, match="not a dataset name"):
        resolve_data("no-such-thing", {"THRIFTY_DATA_DIR": str(tmp_path)})


def test_missing_named_dataset_without_download_explains_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "data_dir", lambda env=None, cwd=None: None)
    env = {"THRIFTY_CACHE_DIR": str(tmp_path)}
    with pytest.raises(DataError, match="THRIFTY_DATA_DIR"):
        resolve_data("routerbench", env, allow_download=False)


def test_routerbench_checksums_match_the_shared_copy(data_dir):
    # The registry's sha256 values are the shared data's files (which are the RouterDC files).
    for f in datasets.DATASETS["routerbench"].files:
        path = data_dir / "routerbench" / f.name
        assert path.stat().st_size == f.size
        assert datasets.sha256_of(path) == f.sha256
