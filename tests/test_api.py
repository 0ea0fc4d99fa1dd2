"""The public API: what README.md and examples/ show imports both ways, and its reference builds.

Names are read from the documents themselves, so a name added to the README is checked without
editing this file. Each import runs in a process of its own without lth_jax in sys.modules, forked
from one that keeps what lth_jax imports from elsewhere (JAX, Flax, Orbax), which keeps the check fast.
"""

import ast
import importlib
import inspect
import json
import pathlib
import re
import subprocess
import sys
import textwrap
import types
import warnings

import pdoc
import pdoc.doc
import pdoc.extract
import pdoc.render
import pytest

import lth_jax
import lth_jax.criteria
import lth_jax.sparsity.criteria
from tests.helpers import ENV, ROOT

# The modules whose every public function documents each parameter under Args and its result under
# Returns; elsewhere an Args section, where there is one, must name exactly the parameters.
FULLY_DOCUMENTED = ("lth_jax.sparsity.masks", "lth_jax.sparsity.pruning", "lth_jax.sparsity.optax")
# pdoc cannot evaluate chex's recursive ArrayTree (optax.OptState, in MaskedState): not a docstring's fault.
TOLERATED_WARNINGS = re.compile(r"Import of ArrayTree failed")
# A module lth_jax does not re-export: the runner must see this program fail, as `import lth_jax.criteria`
# failed before issue 28.
CONTROL = "import lth_jax.select"


# --- the names the documents show -------------------------------------------------------------------


def code_blocks() -> list[str]:
  """The Python code of README.md's ```python blocks and of examples/*.py."""
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
  return blocks + [path.read_text() for path in sorted((ROOT / "examples").glob("*.py"))]


def names_in_code(source: str) -> set[str]:
  """Dotted lth_jax names a piece of code imports or reads, through whatever name it bound them to."""
  tree = ast.parse(source)
  bound = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      bound.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                    for a in node.names if a.name.startswith("lth_jax")})
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lth_jax"):
      bound.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
  names = set(bound.values())
  for node in ast.walk(tree):
    chain = []
    while isinstance(node, ast.Attribute):
      chain.insert(0, node.attr)
      node = node.value
    if chain and isinstance(node, ast.Name) and node.id in bound:
      names.add(".".join([bound[node.id]] + chain))
  return names


def documented_names() -> list[str]:
  """Every lth_jax name README.md and examples/ show, in code or in prose."""
  prose = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "examples").glob("*.py"))
  names = set(re.findall(r"\blth_jax(?:\.\w+)+", prose))
  for block in code_blocks():
    names |= names_in_code(block)
  return sorted(names)


def split_module(name: str) -> tuple[str, str]:
  """(the longest prefix of `name` that is a module, the attributes after it), e.g.
  lth_jax.criteria.register -> ("lth_jax.criteria", "register")."""
  parts = name.split(".")
  module, obj = "lth_jax", lth_jax
  for i in range(1, len(parts)):
    prefix = ".".join(parts[: i + 1])
    try:
      obj = getattr(obj, parts[i]) if hasattr(obj, parts[i]) else importlib.import_module(prefix)
    except ImportError:
      pytest.fail(f"{name}, shown in README.md or examples/, does not exist: "
                  f"{prefix} is neither an attribute nor a module")
    if not isinstance(obj, types.ModuleType):
      return module, ".".join(parts[i:])
    module = prefix
  return module, ""


def both_ways(names: list[tuple[str, str]]) -> list[str]:
  """Two programs that import each (module, attributes) of `names` and read the attributes: `import a.b`
  then `a.b.x`, and `from a import b` then `b.x` (for lth_jax itself: `from lth_jax import x` then `x`)."""
  plain, short = [], []
  for module, attributes in sorted(names):
    parent, _, last = module.rpartition(".")
    plain += [f"import {module}"] + [f"{module}.{a}" for a in attributes if a]
    if parent:
      short += [f"from {parent} import {last}"] + [f"{last}.{a}" for a in attributes if a]
    else:
      short += [f"from lth_jax import {a.split('.')[0]}\n{a}" for a in attributes if a]
  return ["\n".join(plain), "\n".join(short)] if short else ["\n".join(plain)]


RUNNER = textwrap.dedent(r"""
  import importlib, json, os, sys

  def in_a_child(program):
    # Runs `program` in a forked child: (it ran, what it printed, or its error).
    read, write = os.pipe()
    sys.stdout.flush()
    if os.fork() == 0:
      os.close(read)
      os.dup2(write, 1)
      status = 0
      try:
        exec(program, {})
      except BaseException as error:
        print(f"{type(error).__name__}: {error}")
        status = 1
      sys.stdout.flush()
      os._exit(status)
    os.close(write)
    with os.fdopen(read) as out:
      text = out.read()
    _, status = os.wait()
    return [status == 0, text]

  modules, programs = json.load(sys.stdin)
  import lth_jax
  cheap = sorted({m.split(".")[0] for m in sys.modules})   # what `import lth_jax` loads alone
  for module in modules:
    importlib.import_module(module)
  # What lth_jax imports from elsewhere stays loaded, once for all children; lth_jax itself goes, so
  # each child imports it afresh.
  for name in [m for m in sys.modules if m.startswith("lth_jax.") or m == "lth_jax"]:
    del sys.modules[name]
  print(json.dumps({"cheap": cheap, "programs": {program: in_a_child(program) for program in programs}}))
""")


@pytest.fixture(scope="module")
def imports():
  """{"programs": {program: [it ran, its output]}} for every program of `both_ways`, each in a process
  without lth_jax in sys.modules, and "cheap": the top-level packages that `import lth_jax` loads in a
  fresh interpreter."""
  modules = {}
  for name in documented_names():
    module, attribute = split_module(name)
    modules.setdefault(module, set()).add(attribute)
  # one pair of programs per name under lth_jax (lth_jax.metrics and its modules together), to keep it fast
  groups = {}
  for module, attributes in modules.items():
    groups.setdefault(module.split(".")[1] if "." in module else "", []).append((module, sorted(attributes)))
  programs = [p for _, names in sorted(groups.items()) for p in both_ways(names)] + [CONTROL]
  done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps([sorted(modules), programs]), env=ENV,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.splitlines()[-1])


def test_the_documents_show_the_names_a_user_imports():
  """The parsing finds what README's snippet and the example use (else the check below checks nothing)."""
  names = documented_names()
  for name in ("lth_jax.criteria.register", "lth_jax.masks.init", "lth_jax.pruning.magnitude_to",
               "lth_jax.keep_pruned", "lth_jax.metrics.ood.summary", "lth_jax.sparsity.optax.with_masks",
               "lth_jax.training.checkpoint.load_ticket", "lth_jax.report"):
    assert name in names


def test_every_name_the_documents_show_imports_both_ways(imports):
  programs = imports["programs"]
  ok, out = programs.pop(CONTROL)
  assert not ok and out.startswith("ModuleNotFoundError") and "'lth_jax.select'" in out
  failed = {program: out for program, (ok, out) in programs.items() if not ok}
  assert not failed, "\n\n".join(f"{program}\n  -> {out}" for program, out in failed.items())
  # what the issue found missing: a module re-exported under a short name
  assert any(p.startswith("import lth_jax.criteria\n") and "\nlth_jax.criteria.register" in p for p in programs)
  assert any(p.startswith("from lth_jax import criteria\n") and "\ncriteria.register" in p for p in programs)


def test_import_lth_jax_stays_cheap(imports):
  """Orbax, TensorFlow and matplotlib load when first used, not with `import lth_jax`."""
  loaded = set(imports["cheap"])
  assert "lth_jax" in loaded and "jax" in loaded
  assert not loaded & {"orbax", "tensorflow", "tensorflow_datasets", "matplotlib", "grain"}


def test_an_aliased_module_is_the_module_itself():
  assert lth_jax.criteria is lth_jax.sparsity.criteria is sys.modules["lth_jax.criteria"]
  assert sorted(lth_jax.__all__) == sorted(set(lth_jax.__all__))
  assert all(hasattr(lth_jax, name) for name in lth_jax.__all__)


# --- the API reference ------------------------------------------------------------------------------


def public_modules() -> list[pdoc.doc.Module]:
  """lth_jax (what __init__ exports) and every module of the layers a user imports from."""
  names = ["lth_jax"] + [m for root in ("lth_jax.sparsity", "lth_jax.metrics", "lth_jax.training")
                         for m in pdoc.extract.walk_specs([root])]
  return [pdoc.doc.Module(importlib.import_module(name)) for name in names]


def documented_members(module: pdoc.doc.Module):
  """The module, and the functions, classes and methods pdoc shows for it: those defined there, and for
  lth_jax what it exports (other re-exports are checked where they are defined)."""
  yield module
  for member in module.members.values():
    elsewhere = module.modulename != "lth_jax" and member.taken_from[0] != module.modulename
    if member.name.startswith("_") or elsewhere:
      continue
    if isinstance(member, pdoc.doc.Function):
      yield member
    elif isinstance(member, pdoc.doc.Class):
      yield member
      yield from (m for m in member.own_members if isinstance(m, pdoc.doc.Function) and not m.name.startswith("_"))


def args_section(docstring: str) -> list[str] | None:
  """The names an `Args:` section lists (its entries' first words), or None without one."""
  lines = docstring.splitlines()
  start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
  if start is None:
    return None
  indent, names = None, []
  for line in lines[start + 1:]:
    if not line.strip():
      continue
    width = len(line) - len(line.lstrip())
    if width <= len(lines[start]) - len(lines[start].lstrip()):
      break   # the next section
    indent = width if indent is None else indent
    if width == indent:
      names.append(re.match(r"\**(\w+)", line.strip()).group(1))
  return names


def docstring_problems(member: pdoc.doc.Doc) -> list[str]:
  """What is wrong with `member`'s docstring: missing, an Args section that does not name exactly the
  parameters, or (in FULLY_DOCUMENTED) no Args or Returns section."""
  name = member.fullname
  if not member.docstring.strip():
    return [f"{name}: no docstring"]
  if not isinstance(member, pdoc.doc.Function):
    return []
  parameters = [p for p in inspect.signature(member.obj).parameters if p not in ("self", "cls")]
  listed = args_section(member.docstring)
  problems = []
  if listed is not None and listed != parameters:
    problems.append(f"{name}: Args lists {listed}, the parameters are {parameters}")
  if member.modulename in FULLY_DOCUMENTED:
    if parameters and listed is None:
      problems.append(f"{name}: no Args section")
    if not re.search(r"^Returns:$", member.docstring, re.M):
      problems.append(f"{name}: no Returns section")
  return problems


@pytest.mark.filterwarnings("ignore:.*Import of ArrayTree failed")   # TOLERATED_WARNINGS
def test_every_public_name_has_a_well_formed_docstring():
  problems = [p for module in public_modules() for member in documented_members(module)
              for p in docstring_problems(member)]
  assert not problems, "\n".join(problems)


def test_args_sections_are_read_as_written():
  """The check above reads nested descriptions as one entry, and sees a missing parameter."""
  def f(a, b):
    """Does.

    Args:
      a: the first,
        continued.
      b: the second.

    Returns:
      Nothing.
    """
  def function(fn, modulename="lth_jax.sparsity.masks"):
    return pdoc.doc.Function(modulename, fn.__name__, fn, (modulename, fn.__name__))

  assert args_section(inspect.cleandoc(f.__doc__)) == ["a", "b"]
  assert args_section("One line.") is None
  assert docstring_problems(function(f)) == []

  def g(a, b, c):
    """Does.

    Args:
      a: the first.
      b: the second.
    """
  assert docstring_problems(function(g)) == [
      "lth_jax.sparsity.masks.g: Args lists ['a', 'b'], the parameters are ['a', 'b', 'c']",
      "lth_jax.sparsity.masks.g: no Returns section"]
  assert docstring_problems(function(g, "lth_jax.metrics.ood")) == [
      "lth_jax.metrics.ood.g: Args lists ['a', 'b'], the parameters are ['a', 'b', 'c']"]
  assert docstring_problems(function(lambda a: a)) == ["lth_jax.sparsity.masks.<lambda>: no docstring"]


def test_the_api_reference_builds_without_a_warning(tmp_path):
  """pdoc over the whole package, as README says to build it: a warning (a name in `__all__` that does
  not exist, an annotation that does not resolve, a module that fails to import) fails the build."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pdoc.render.configure(docformat="google")
    pdoc.pdoc("lth_jax", output_directory=tmp_path)
  from_pdoc = [str(w.message) for w in caught if w.filename.startswith(str(pathlib.Path(pdoc.__file__).parent))]
  problems = [message for message in from_pdoc if not TOLERATED_WARNINGS.search(message)]
  assert not problems, "\n".join(problems)
  assert (tmp_path / "lth_jax" / "sparsity" / "pruning.html").exists()
  assert "magnitude_to" in (tmp_path / "lth_jax" / "sparsity" / "pruning.html").read_text()
