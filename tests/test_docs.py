"""The README is the front door and the docs site the reference: both stay true to the code.

(`mkdocs build --strict` in CI checks the site's own links and navigation.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.apiroutes import OLLAMA_PATHS, PATHS
from orchestrator.config import KNOWN_KEYS
from orchestrator.http.app import create_app
from orchestrator.supervisor.history import History
from orchestrator.supervisor.metrics import PoolMetrics
from orchestrator.supervisor.pool import Pool
from orchestrator.supervisor.stats import StatsSampler
from tests.fakes.sidecar_double import double_routes

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 250
# Where each configuration table is documented: the section of docs/configuration.md under this heading.
CONFIG_HEADINGS = {
    "server": "## `[server]`",
    "llama_server": "## `[llama_server]`",
    "pool": "## `[pool]`",
    "pool.crash_loop": "### `[pool.crash_loop]`",
    "kv_cache": "## `[kv_cache]`",
    "models.NAME": "## Models",
    "agents.NAME": "## Agents",
}


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) :]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)]
    return rest[: ends[0]] if ends else rest


def test_the_readme_is_a_front_door_that_links_into_the_docs() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert "bash ops/install.sh && .venv/bin/orchestrator serve" in text
    assert "bash ops/install.sh --dev && .venv/bin/python -m pytest" in text  # the command CI runs
    links = re.findall(r"\]\((docs/[^)#\s]+)(#[^)\s]*)?\)", text)
    assert len({page for page, _ in links}) >= 12
    for page, anchor in links:
        assert (ROOT / page).is_file(), page
        if anchor:  # mkdocs' anchors: the heading, lower-cased, punctuation dropped, spaces as dashes
            headings = re.findall(r"^#+ (.+)$", (ROOT / page).read_text(), re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor[1:] in slugs, (page, anchor)


def test_every_docs_page_is_in_the_site_navigation() -> None:
    navigation = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f": {page.name}" in navigation, page.name


@pytest.mark.parametrize("table", sorted(KNOWN_KEYS))
def test_every_configuration_key_is_documented(table: str) -> None:
    text = section((DOCS / "configuration.md").read_text(), CONFIG_HEADINGS[table])
    missing = [key for key in KNOWN_KEYS[table] if f"`{key}`" not in text and f".{key}]`" not in text]
    assert not missing, f"{table}: {missing} are not in docs/configuration.md"


async def test_every_route_is_documented(tmp_path: Path) -> None:
    routes = double_routes(tmp_path, {"m": {}})
    pool = Pool(routes)
    app = create_app(pool, StatsSampler(pool), History(pool), PoolMetrics(pool), reload=_no_reload)
    served = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()}
    served |= PATHS | OLLAMA_PATHS
    # A route is documented as code: `/path` or `GET /path` (the path is the span's last word).
    documented = {
        span.split()[-1]
        for page in ("api.md", "dashboard.md", "ollama.md")
        for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", (DOCS / page).read_text(), flags=re.S))
        if span.strip()
    }
    missing = sorted(served - documented)
    assert not missing, f"routes missing from docs/api.md: {missing}"


async def _no_reload() -> dict[str, object]:
    return {}
