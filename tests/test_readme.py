"""The README's reliability table names a test for every row: those tests exist."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tests_of(path: str) -> set[str]:
  with open(path) as f:
    tree = ast.parse(f.read())
  return {
    n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
  }


def test_every_test_the_reliability_table_names_exists():
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  section = text.split("### Reliability", 1)[1].split("\n## ", 1)[0]
  rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
  assert len(rows) >= 15
  missing = []
  for row in rows:
    named = re.findall(r"`(test_\w+)::(test_\w+)`", row)
    assert named or "same test" in row, f"a row without a test: {row[:80]}"
    for module, test in named:
      path = os.path.join(REPO, "tests", f"{module}.py")
      if not os.path.exists(path) or test not in _tests_of(path):
        missing.append(f"{module}::{test}")
  assert not missing, f"the README names tests that do not exist: {missing}"
