"""The docs a newcomer reads: a short README that links every topic document, and no dead link."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_LIMIT = 10 * 1024
TOPICS = ("configuration", "architecture", "topologies", "verification", "tls", "secrets-and-keys", "rotation",
          "backup", "upgrades", "load-balancers", "testing")
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_short_and_links_every_topic():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= README_LIMIT
    for topic in TOPICS:
        assert f"(docs/{topic}.md)" in readme, f"README does not link docs/{topic}.md"
    assert "(bench/README.md)" in readme


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    dead = [target for target in LINK.findall(doc.read_text())
            if not target.startswith(("http://", "https://", "mailto:")) and not (doc.parent / target).exists()]
    assert not dead, f"{doc.relative_to(ROOT)}: dead links {dead}"
