"""Where outcome data comes from: a path, the data folder setting, or a named public dataset.

``--data`` takes a file or folder path, or a dataset name. A name is looked up, in order:

1. ``<data dir>/<name>/`` where the data dir is ``THRIFTY_DATA_DIR`` (the Makefile points it at
   ``../shared/data`` when that exists), else ``../shared/data`` beside the current folder or
   beside a source checkout;
2. the download cache ``$THRIFTY_CACHE_DIR/datasets/<name>/`` (default ``~/.cache/thrifty``),
   filled on first use from the dataset's public source, every file checked by sha256.

Nothing here runs at import time and nothing is downloaded unless a named dataset is asked for
and is found nowhere locally.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from thrifty.errors import DataError

DATA_DIR_ENV = "THRIFTY_DATA_DIR"
CACHE_DIR_ENV = "THRIFTY_CACHE_DIR"


@dataclass(frozen=True)
class DatasetFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class NamedDataset:
    name: str
    base_url: str  # the files are <base_url>/<file name>
    files: tuple[DatasetFile, ...]
    source: str  # for humans: where it comes from and under which licence

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


# RouterBench zero-shot split as redistributed by RouterDC (MIT). Pinned to a commit so the
# checksums stay valid if the repository changes.
_ROUTERDC = "https://raw.githubusercontent.com/shuhao02/RouterDC/1963d6874b69c94309ea37a34d7d4cd6f527e7c5"
DATASETS: dict[str, NamedDataset] = {
    "routerbench": NamedDataset(
        name="routerbench",
        base_url=f"{_ROUTERDC}/datasets/routerbench_zs",
        files=(
            DatasetFile("arc_challenge_train.csv",
                        "59e044850520be06f74dd9766b9ab4621d783f7fa5269d7dda118b9abb115d78", 2_579_191),
            DatasetFile("mbpp_train.csv", "2a985adc3a3016b5ae4d62229722cdff9ece58aa1338206a6b12e4957304452b",
                        3_128_944),
            DatasetFile("winograde_train.csv",
                        "f6d54caab59bebb9facf3407c515a07a20faf4e75c639b7e91988ceaf312906a", 1_623_934),
        ),
        source="RouterBench (Hu et al. 2024, MIT) via github.com/shuhao02/RouterDC datasets/routerbench_zs",
    ),
}


def data_dir(env: dict[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """The local data folder: THRIFTY_DATA_DIR, else an existing ../shared/data; None if neither."""
    env = dict(os.environ) if env is None else env
    configured = env.get(DATA_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    # A source checkout keeps the workspace data beside the repository root.
    checkout = Path(__file__).resolve().parents[3]
    for base in (cwd or Path.cwd(), checkout):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def cache_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    configured = env.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "thrifty"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_copy(name: str, env: dict[str, str] | None = None) -> Path | None:
    """A folder already holding dataset ``name`` (data dir first, then a verified cache)."""
    ds = DATASETS.get(name)
    root = data_dir(env)
    if root is not None and (root / name).is_dir():
        return root / name
    if ds is None:
        return None
    cached = cache_dir(env) / "datasets" / name
    if all((cached / f.name).is_file() and (cached / f.name).stat().st_size == f.size for f in ds.files):
        return cached
    return None


def download(name: str, env: dict[str, str] | None = None, *, base_url: str | None = None,
             timeout_s: float = 60.0) -> Path:
    """Fetch dataset ``name`` into the cache (skipping files already there and valid); its folder.

    Each file is written to a temporary name, checked against its sha256, then renamed, so an
    interrupted or corrupted download never leaves a file that looks valid.
    """
    ds = DATASETS.get(name)
    if ds is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    target = cache_dir(env) / "datasets" / name
    target.mkdir(parents=True, exist_ok=True)
    for f in ds.files:
        dest = target / f.name
        if dest.is_file() and sha256_of(dest) == f.sha256:
            continue
        url = f"{base_url or ds.base_url}/{f.name}"
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp, tmp.open("wb") as out:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
        got = sha256_of(tmp)
        if got != f.sha256:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{url}: sha256 mismatch (expected {f.sha256[:12]}..., got {got[:12]}...); not used")
        tmp.replace(dest)
    return target


def resolve_data(spec: str, env: dict[str, str] | None = None, *, allow_download: bool = True) -> Path:
    """The file or folder ``--data`` means: an existing path, or a named dataset."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    found = local_copy(spec, env)
    if found is not None:
        return found
    if spec in DATASETS:
        if not allow_download:
            raise DataError(missing_hint(spec))
        return download(spec, env)
    raise DataError(
        f"{spec}: no such file or folder, and not a dataset name (known: {', '.join(sorted(DATASETS))})"
    )


def missing_hint(name: str = "routerbench") -> str:
    ds = DATASETS[name]
    return (
        f"no {name} data found (set {DATA_DIR_ENV} to a folder holding {name}/, or run "
        f"`thrifty demo --download` to fetch {ds.size / 1e6:.0f} MB from {ds.source.split(' via ')[-1]})"
    )
