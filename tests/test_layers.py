"""The package's layers (docs/design.md, "Layers"): no import cycles anywhere in `esmjax/`, and
each layer imports only the layers below it. Imports inside functions count: a lazy import is
still a dependency, and a cycle through one is still a cycle."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "esmjax"


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(PKG.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
  """{module: esmjax modules it imports} over every .py file of the package."""
  modules = {_module_name(p): p for p in PKG.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    deps = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[: len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        # `from esmjax.data import dataset` depends on the module `dataset`, not on the package.
        targets = [
          f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
        ]
      else:
        continue
      for t in targets:
        while t and t not in modules:  # `from esmjax.data import dataset` names a module
          t = t.rsplit(".", 1)[0] if "." in t else ""
        if t and t != name and t.startswith("esmjax"):
          deps.add(t)
    graph[name] = deps
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (iterative DFS, colours)."""
  colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
  for root in sorted(graph):
    if colour[root]:
      continue
    stack, path = [(root, iter(sorted(graph[root])))], [root]
    colour[root] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        colour[node] = 2
        stack.pop()
        path.pop()
      elif colour.get(child, 2) == 1:
        return path[path.index(child) :] + [child]
      elif colour.get(child) == 0:
        colour[child] = 1
        stack.append((child, iter(sorted(graph[child]))))
        path.append(child)
  return None


def test_the_graph_sees_imports_inside_functions_and_finds_cycles():
  graph = import_graph()
  assert "esmjax.common.schema" in graph and "esmjax.config.defaults" in graph
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The layers, lowest first (docs/design.md, "Layers"): one rule per package (or top-level module),
# and a module imports modules of its own layer or lower ones, never a higher one. The domain
# packages (data, embedding, models) do not import each other: the schema is what they share.
# Every module must fall under a key here; each package's docstring says the same in words.
LAYERS = {
  # 0: foundations, no esmjax imports beyond this layer. `exits` sits at the top of the tree as
  # part of the public surface, but every command (the data converters' too) ends through it.
  "esmjax": 0,
  "esmjax.common": 0,
  "esmjax.exits": 0,
  "esmjax.core.outputs": 0,
  # 1: the domain packages
  "esmjax.data": 1,
  "esmjax.embedding": 1,
  "esmjax.models": 1,
  # 2: the configuration, assembled from the domain packages' declarations
  "esmjax.config": 2,
  # 3: the runtime core, and checkpoints beside it
  "esmjax.core": 3,
  "esmjax.checkpoints": 3,
  # 4: metrics, scoring, evaluation
  "esmjax.evaluation": 4,
  # 5: the training loop
  "esmjax.training": 5,
  # 6: serving a trained model (reads workdirs through core and checkpoints, never training)
  "esmjax.serving": 6,
  # 7: what users call
  "esmjax.api": 7,
  "esmjax.cli": 7,
  "esmjax.main": 7,
  "esmjax.seal": 7,
  "esmjax.plot": 7,
}
DOMAIN = ("esmjax.data", "esmjax.embedding", "esmjax.models")


def _place(module: str) -> str | None:
  """The most specific LAYERS key that `module` falls under."""
  keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
  return max(keys, key=len) if keys else None


def test_every_module_has_a_layer():
  unplaced = sorted(m for m in import_graph() if _place(m) is None)
  assert not unplaced, (
    f"modules without a layer (add them to LAYERS and docs/design.md): {unplaced}"
  )


def test_no_module_imports_a_higher_layer_or_another_domain_package():
  bad = []
  for mod, deps in import_graph().items():
    for dep in deps:
      if LAYERS[_place(dep)] > LAYERS[_place(mod)]:
        bad.append(
          f"{mod} (layer {LAYERS[_place(mod)]}) imports {dep} (layer {LAYERS[_place(dep)]})"
        )
      home = next((d for d in DOMAIN if mod.startswith(d + ".")), None)
      other = next((d for d in DOMAIN if dep.startswith(d + ".") and d != home), None)
      if home and other:
        bad.append(f"{mod} imports {dep}: the domain packages share only esmjax.common.schema")
  assert not bad, "\n".join(bad)


def test_the_layer_check_catches_an_upward_import(monkeypatch):
  graph = {"esmjax.common.schema": {"esmjax.training.trainer"}, "esmjax.training.trainer": set()}
  monkeypatch.setattr(__import__(__name__), "import_graph", lambda: graph)
  with pytest.raises(
    AssertionError, match="esmjax.common.schema .layer 0. imports esmjax.training.trainer"
  ):
    test_no_module_imports_a_higher_layer_or_another_domain_package()


def test_serving_reads_workdirs_without_the_training_loop():
  # Serving restores through esmjax.core and esmjax.checkpoints: a serving host needs no loop.
  bad = sorted(
    f"{mod} imports {dep}"
    for mod, deps in import_graph().items()
    if mod.startswith("esmjax.serving")
    for dep in deps
    if dep.startswith("esmjax.training")
  )
  assert not bad, "\n".join(bad)
