"""The README is the front door and the docs/ pages hold the detail: every link between them
resolves, the README stays short and links every page, and the reliability table
(docs/checkpoints.md) names a test for every row, and those tests exist."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
PAGES = ["README.md", "CHANGELOG.md"] + [
  os.path.join("docs", p) for p in sorted(os.listdir(DOCS)) if p.endswith(".md")
]
RELIABILITY_PAGE = "docs/checkpoints.md"


def _read(rel: str) -> str:
  with open(os.path.join(REPO, rel)) as f:
    return f.read()


def _anchors(text: str) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
  out = set()
  for heading in re.findall(r"^#+ (.+)$", text, re.M):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    out.add(slug)
  return out


def _links(text: str) -> list[str]:
  return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"https?:", t)]


def _tests_of(path: str) -> set[str]:
  with open(path) as f:
    tree = ast.parse(f.read())
  return {
    n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
  }


def test_every_link_between_the_readme_and_the_docs_resolves():
  broken = []
  for page in PAGES:
    for link in _links(_read(page)):
      path, _, anchor = link.partition("#")
      target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
      if not os.path.exists(os.path.join(REPO, target)):
        broken.append(f"{page}: {link} (no file {target})")
      elif anchor and target.endswith(".md") and anchor not in _anchors(_read(target)):
        broken.append(f"{page}: {link} (no heading #{anchor} in {target})")
  assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_broken_anchor():
  assert "the-papers-claims-in-the-papers-regime" in _anchors(
    "## The papers' claims in the papers' regime"
  )
  assert _links("[a](docs/x.md#y) and [b](https://example.com)") == ["docs/x.md#y"]


def test_the_readme_is_short_and_links_every_docs_page():
  text = _read("README.md")
  assert len(text.splitlines()) <= 250
  linked = {os.path.normpath(link.partition("#")[0]) for link in _links(text)}
  pages = {p for p in PAGES if p.startswith("docs")}
  assert not pages - linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_history_lives_in_the_changelog():
  # The docs describe esmjax as it is; what changed when is CHANGELOG.md's.
  found = [
    f"{page}: {phrase!r}"
    for page in PAGES
    if page != "CHANGELOG.md"
    for phrase in ("this round", "saved before it existed")
    if phrase in _read(page)
  ]
  assert not found, found


def test_every_test_the_reliability_table_names_exists():
  text = _read(RELIABILITY_PAGE)
  section = text.split("## Reliability", 1)[1].split("\n## ", 1)[0]
  # Its tables (one per concern) share one header row, which names no test.
  header = "| case | what esmjax does | exit | test |"
  rows = [
    line
    for line in section.splitlines()
    if line.startswith("| ") and "---" not in line and line.strip() != header
  ]
  assert len(rows) >= 15
  missing = []
  for row in rows:
    named = re.findall(r"`(test_\w+)::(test_\w+)`", row)
    assert named or "same test" in row, f"a row without a test: {row[:80]}"
    for module, test in named:
      path = os.path.join(REPO, "tests", f"{module}.py")
      if not os.path.exists(path) or test not in _tests_of(path):
        missing.append(f"{module}::{test}")
  assert not missing, f"{RELIABILITY_PAGE} names tests that do not exist: {missing}"
