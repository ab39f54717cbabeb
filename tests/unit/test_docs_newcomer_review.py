"""What a newcomer does with README.md and docs/ alone: copy the YAML blocks, follow the links,
write a config with some sections left empty, run the gateway from another folder. Each test
keeps one of those steps honest (the docs' blocks load, their links resolve) or pins a fix
found by following them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from fixtures.cli_run import run_main
from thrifty.config import load_config
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.server import RunningServer, run_in_thread

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# The route names the routing block of docs/configuration.md uses for models it does not define.
EXAMPLE_MODELS = ("cheap", "mid", "big")


@pytest.fixture(scope="module")
def upstream() -> Any:
    with run_in_thread(create_mock()) as server:
        yield server


def _yaml_blocks(page: Path) -> list[dict[str, Any]]:
    text = page.read_text(encoding="utf-8")
    return [yaml.safe_load(b) for b in re.findall(r"^```ya?ml\n(.*?)^```", text, re.S | re.M)]


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(page: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.*)$", _without_code(page.read_text("utf-8")), re.M)]


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in _headings(page):
        slug = _slug(heading)
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_every_yaml_block_of_configuration_md_loads_together() -> None:
    """The blocks are one config in pieces (the cache block's ``faq`` is the routing block's
    route): merged, with the routing example's model names added, thrifty's loader takes them."""
    merged: dict[str, Any] = {}
    blocks = _yaml_blocks(DOCS / "configuration.md")
    assert len(blocks) >= 6
    for block in blocks:
        assert isinstance(block, dict) and not set(block) & set(merged), sorted(block)
        merged.update(block)
    merged["models"].update({name: {"provider": "deepseek"} for name in EXAMPLE_MODELS})
    config = load_config(merged, env={})
    assert config.routing.default_route == "general" and config.cache is not None
    assert set(config.cache.routes) == {"faq"} and set(config.compression.routes) == {"support"}


def test_deployment_md_block_loads_on_top_of_a_starter_config() -> None:
    (block,) = _yaml_blocks(DOCS / "deployment.md")
    base = {"providers": {"main": {"base_url": "http://127.0.0.1:9/v1"}}, "models": {"m": {"provider": "main"}}}
    env = {"THRIFTY_REDIS_URL": "redis://127.0.0.1:6379/0", "THRIFTY_LEDGER_DSN": "postgresql://u@127.0.0.1/db",
           "THRIFTY_ADMIN_KEY": "admin-key"}
    config = load_config({**base, **block}, env=env)
    assert config.cache is not None and config.cache.backend == "redis" and config.auth.enabled
    assert config.auth.key_salt is None  # THRIFTY_KEY_SALT unset: the stored salt, as the page says


def test_every_relative_link_and_anchor_in_the_docs_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text("utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_markdown_file_the_docs_name_exists() -> None:
    """architecture.md sent readers to a DESIGN.md that was never in the repository."""
    missing = []
    for page in PAGES:
        for name in set(re.findall(r"(?<![\w/.-])((?:docs/)?[\w-]+\.md)\b", page.read_text("utf-8"))):
            if not any((base / name).exists() for base in (ROOT, DOCS)):
                missing.append(f"{page.name}: {name}")
    assert not missing, missing


def test_every_quoted_section_the_docs_point_to_exists() -> None:
    """``docs/operations.md, "Accounting"``: a heading (or a bold paragraph label) of that page
    starts with the quoted words."""
    missing = []
    for page in PAGES:
        text = " ".join(page.read_text("utf-8").split())
        for name, section in re.findall(r"(?:docs/)?([\w-]+\.md),\s*\"([^\"]+)\"", text):
            dest = DOCS / name if (DOCS / name).exists() else ROOT / name
            body = dest.read_text("utf-8")
            if not (any(h.startswith(section) for h in _headings(dest)) or f"**{section}" in body):
                missing.append(f"{page.name}: {name}, \"{section}\"")
    assert not missing, missing


def _starter(upstream: RunningServer, extra: str = "") -> str:
    return (f"providers:\n  main:\n    base_url: {upstream.url}/v1\n"
            "models:\n  cheap:\n    provider: main\n    price: {input: 1, output: 2}\n"
            f"default_model: cheap\n{extra}")


def _ask(gw: Gateway, content: str) -> dict[str, str]:
    with run_in_thread(gw.app()) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", temperature=0, messages=[{"role": "user", "content": content}])
        raw.parse()
        return dict(raw.headers)


def test_a_relative_base_dir_is_beside_the_config_file_not_the_working_directory(
        upstream: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``base_dir: data`` in /etc/thrifty/thrifty.yaml put the ledger in ./data of wherever
    `thrifty serve` was started, so two shells wrote two ledgers."""
    folder, elsewhere = tmp_path / "cfg", tmp_path / "elsewhere"
    (folder / "data").mkdir(parents=True)
    elsewhere.mkdir()
    (folder / "thrifty.yaml").write_text(_starter(upstream, "base_dir: data\n"), encoding="utf-8")
    monkeypatch.chdir(elsewhere)
    with Gateway.from_config(folder / "thrifty.yaml") as gw:
        headers = _ask(gw, "where is my ledger?")
    assert headers["x-thrifty-model"] == "cheap"
    assert (folder / "data" / "thrifty-ledger.db").is_file()
    assert not list(elsewhere.rglob("*.db"))


def test_sections_left_empty_at_any_depth_take_their_defaults(
        upstream: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key with everything under it commented out is null in YAML; `cache: semantic:` was
    refused ("Input should be a valid dictionary or instance of SemanticConfig") although the
    docs say an empty section is its defaults."""
    path = tmp_path / "thrifty.yaml"
    path.write_text(f"""providers:
  main:
    base_url: {upstream.url}/v1
    compat:
models:
  cheap:
    provider: main
    price: {{input: 1, output: 2}}
    aliases:
    fallbacks:
default_model: cheap
cache:
  semantic:
    # enabled: true
  routes:
routing:
  classify:
compression:
  store:
  dictionary:
batching:
  deferred:
server:
  cors_origins:
""", encoding="utf-8")
    code, out, err = run_main(capsys, "config", "check", str(path))
    assert code == 0 and "ok" in out, err
    with Gateway.from_config(path) as gw:
        assert gw.config.cache is not None and gw.config.cache.semantic.enabled is False
        assert _ask(gw, "twice")["x-thrifty-cache"] == "miss"
        assert _ask(gw, "twice")["x-thrifty-cache"] == "hit"  # the cache is on, with its defaults


def test_a_model_or_provider_with_nothing_under_it_names_the_missing_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "thrifty.yaml"
    path.write_text("providers:\n  main:\nmodels:\n  cheap:\n", encoding="utf-8")
    code, _, err = run_main(capsys, "config", "check", str(path))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "providers.main.base_url: required key is missing" in err
    assert "models.cheap.provider: required key is missing" in err
    assert "Config" not in err.replace("config", "")  # no Python class names


def test_null_still_means_null_where_the_schema_allows_it() -> None:
    raw = {"providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}}, "models": {"m": {"provider": "p", "price": None}},
           "routing": {"fit": None}, "cache": {"semantic": {"threshold": None, "embedder": None}}}
    config = load_config(raw, env={})
    assert config.models["m"].price is None and config.routing.fit is None
    assert config.cache is not None and config.cache.semantic.threshold is None
    assert os.path.basename(config.resolve_path("x.db")) == "x.db"


def test_the_scorer_example_lists_every_scorer_key() -> None:
    """The routing block of configuration.md spells out the scorer's keys one by one; `labels`
    (a classification the heuristic checks) was left out."""
    from thrifty.routing.config import ScorerConfig

    text = (DOCS / "configuration.md").read_text("utf-8")
    scorer = text[text.index("      scorer:"):text.index("      max_cost_usd:")]
    assert [k for k in ScorerConfig.model_fields if not re.search(rf"^\s+{k}:", scorer, re.M)] == []


def test_what_metrics_needs_is_what_deployment_md_says(upstream: RunningServer) -> None:
    """deployment.md said `/metrics` needs nothing; with `server.metrics_key_required` it needs
    the admin key."""
    import httpx

    text = " ".join((DOCS / "deployment.md").read_text("utf-8").split())
    assert "`/metrics` needs nothing unless `server.metrics_key_required: true`" in text
    raw = yaml.safe_load(_starter(upstream))
    for required, status in ((False, 200), (True, 401)):
        cfg = {**raw, "ledger": {"enabled": False}, "auth": {"admin_key": "admin-key-123"},
               "server": {"metrics_key_required": required}}
        with Gateway.from_config(cfg) as gw, run_in_thread(gw.app()) as server:
            assert httpx.get(server.url + "/metrics").status_code == status
            headers = {"Authorization": "Bearer admin-key-123"}
            assert httpx.get(server.url + "/metrics", headers=headers).status_code == 200
