"""The layers of lth_jax import downwards only, with no cycles and no imports hidden inside functions."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lth_jax"
# Lower numbers are lower layers; a module may import its own layer's modules and any lower layer's.
LAYERS = {
    "lth_jax.errors": 0, "lth_jax.user_code": 0,
    "lth_jax.sparsity": 1, "lth_jax.metrics": 1, "lth_jax.models": 1, "lth_jax.data": 1,
    "lth_jax.training": 2,
    "lth_jax.methods": 3,
    "lth_jax.experiment": 4, "lth_jax.evaluation": 4, "lth_jax.report": 4, "lth_jax.report_sanity": 4, "lth_jax.plots": 4, "lth_jax.cli": 4,
    "lth_jax.config": 4, "lth_jax.checks": 4, "lth_jax.aggregate": 4, "lth_jax": 5,
}
MAX_LINES = 400


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int:
  while name not in LAYERS:
    name = name.rpartition(".")[0]
  return LAYERS[name]


def imports(path: pathlib.Path):
  """(imported lth_jax module, is it at module level) for each import in the file."""
  tree = ast.parse(path.read_text())
  top = set(map(id, tree.body))
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lth_jax"):
      names = [f"{node.module}.{a.name}" for a in node.names]
      targets = [n if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
                 or (PACKAGE.parent / n.replace(".", "/")).is_dir() else node.module for n in names]
    elif isinstance(node, ast.Import):
      targets = [a.name for a in node.names if a.name.startswith("lth_jax")]
    else:
      continue
    for target in targets:
      yield target, id(node) in top


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_and_sit_at_the_top(path):
  me = module_name(path)
  for target, at_top in imports(path):
    assert at_top, f"{me} imports {target} inside a function"
    if me != "lth_jax" and not target.startswith(me + "."):
      assert layer(target) <= layer(me), f"{me} (layer {layer(me)}) imports {target} (layer {layer(target)})"


def test_no_import_cycles():
  graph = {module_name(p): {t for t, _ in imports(p) if t != module_name(p)} for p in MODULES}
  # a package's __init__ importing its own submodules is how it exposes them, not a cycle
  graph = {m: {t for t in ts if not (t.startswith(m + ".") and (PACKAGE.parent / m.replace(".", "/")).is_dir())}
           for m, ts in graph.items()}
  state = {}

  def visit(node, trail):
    if state.get(node) == "done":
      return
    assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      visit(nxt, trail + [node])
    state[node] = "done"

  for node in sorted(graph):
    visit(node, [])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small_enough_to_read_in_one_sitting(path):
  assert len(path.read_text().splitlines()) <= MAX_LINES
