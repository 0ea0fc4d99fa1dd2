"""Your own model and data source from the command line (issue 28, item 3): "pkg.module:Name" with
config.model.kwargs, a linen class and an NNX class (tests/own_model.py), and the one-line errors.

The counts below are by hand from tests/own_model.py: `load` has 4 features and 3 classes, so Net with
width 8 has the kernels hidden 4x8 and output 8x3 (56 prunable weights) and 8 + 3 biases; NnxNet adds its
BatchNorm's scale and bias (8 + 8). Iterative pruning to 0.75 in 2 rounds removes 1 - 0.25^(1/2) = 1/2
of the remaining kernel weights per round: 56 -> 28 -> 14.
"""

import json

import jax
import numpy as np
import pytest

from lth_jax import cli, experiment, models, report
from lth_jax.config import base
from lth_jax.errors import UserError
from lth_jax.sparsity import masks
from lth_jax.training import checkpoint, resume
from tests.helpers import flag_run, main_py, numbers, override

OWN = ["--config=configs/default.py", "--config.data.name=tests.own_model:load", "--config.method=iterative",
       "--config.iterative.rounds=2", "--config.prune.sparsity=0.75", "--config.train.epochs=3",
       "--config.metrics.ood=()", "--config.log.tensorboard=False", "--config.log.progress=False"]
KERNELS, BIASES, NORM = 4 * 8 + 8 * 3, 8 + 3, 8 + 8
KEPT = [56, 28, 14]


def test_the_command_line_trains_prunes_and_reports_a_users_linen_model(tmp_path):
  workdir = tmp_path / "w"
  proc = main_py(*OWN, "--config.model.name=tests.own_model:Net", "--config.model.kwargs.width=8",
                 f"--config.workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads((workdir / "results.json").read_text())
  assert doc["complete"] and doc["config"]["model"]["kwargs"] == {"width": 8}
  runs = doc["runs"]
  assert [(r["method"], r["round"]) for r in runs] == [("dense", 0), ("iterative", 1), ("iterative", 2)]
  assert [r["sparsity"] for r in runs] == [1 - k / KERNELS for k in KEPT] == [0.0, 0.5, 0.75]
  assert [r["params_remaining"] for r in runs] == [k + BIASES for k in KEPT]
  # the dense run learned: above chance (1/3) on the 3 balanced blobs
  assert runs[0]["test_accuracy"] > 0.5
  # the ticket holds the user's own layer names, its pruned weights exactly 0
  ticket = checkpoint.load_ticket(str(workdir / runs[-1]["ticket"]))
  names = [name for name, _ in masks.named_leaves(ticket["params"])]
  assert names == ["hidden/bias", "hidden/kernel", "output/bias", "output/kernel"]
  m = ticket["masks"]
  assert masks.count(m) == (14, KERNELS)
  pruned = np.concatenate([np.asarray(p)[np.asarray(k) == 0] for p, k in
                           zip(jax.tree.leaves(ticket["params"]), jax.tree.leaves(m))])
  assert pruned.size == KERNELS - 14 and not pruned.any()
  assert "results.md" in {p.name for p in workdir.iterdir()}


def own_config(tmp_path, **overrides):
  c = override(base(), **{"data.name": "tests.own_model:load", "method": "iterative", "iterative.rounds": 2,
                          "prune.sparsity": 0.75, "train.epochs": 2, "metrics.ood": (), "log.tensorboard": False,
                          "log.progress": False, "train.log_every": 0, "workdir": str(tmp_path / "w"),
                          "model.name": "tests.own_model:NnxNet"})
  c.model.kwargs.width = 8
  return override(c, **overrides)


def test_an_nnx_model_trains_prunes_reports_and_resumes(tmp_path):
  config = own_config(tmp_path, **{"method": "oneshot", "finetune.epochs": 1})
  runs = cli.run(config)
  assert [(r["method"], r["sparsity"]) for r in runs] == [("dense", 0.0), ("oneshot", 0.75)]
  assert [r["params_remaining"] for r in runs] == [56 + BIASES + NORM, 14 + BIASES + NORM]
  # FLOPs are counted for linen layers only: unknown (None) for an NNX model, not 0
  assert all(r["flops"] is None and r["theoretical_speedup"] is None for r in runs)
  # the NNX module's state as linen variables: its attribute names, BatchNorm's statistics apart
  ticket = checkpoint.load_ticket(str(tmp_path / "w" / runs[-1]["ticket"]))
  assert [name for name, _ in masks.named_leaves(ticket["params"])] == [
      "hidden/bias", "hidden/kernel", "norm/bias", "norm/scale", "output/bias", "output/kernel"]
  assert [name for name, _ in masks.named_leaves(ticket["batch_stats"])] == ["norm/mean", "norm/var"]
  # BatchNorm ran in train mode while training: its running statistics moved from (0, 1)
  assert not np.allclose(np.asarray(ticket["batch_stats"]["norm"]["mean"]), 0.0)
  assert masks.count(ticket["masks"]) == (14, KERNELS)
  before = numbers(config.workdir)
  # the same command again resumes: the resolved configs compare equal, the numbers are the same
  cli.run(own_config(tmp_path, **{"method": "oneshot", "finetune.epochs": 1}))
  assert numbers(config.workdir) == before
  # another constructor argument is another run
  with pytest.raises(UserError, match=r"holds a run of a different config \(model.kwargs.width: 8 -> 16\)"):
    cli.run(own_config(tmp_path, **{"method": "oneshot", "finetune.epochs": 1, "model.kwargs.width": 16}))


def test_the_resume_check_reads_model_kwargs():
  """What config.json holds compares equal to the config that wrote it, whatever other model keys say."""
  defaults = base().to_dict()
  config = base()
  config.model.name = "tests.own_model:Net"
  config.model.kwargs.width = 8
  saved = json.loads(json.dumps(config.to_dict()))
  assert resume.differences(saved, config.to_dict(), defaults, experiment.model_arguments) == []
  assert experiment.model_arguments(saved["model"]) == {"name": "tests.own_model:Net", "kwargs": {"width": 8}}
  config.model.kwargs.width = 9
  assert resume.differences(saved, config.to_dict(), defaults, experiment.model_arguments) == \
      ["model.kwargs.width: 8 -> 9"]


@pytest.fixture
def refused(tmp_path, monkeypatch):
  """refused(config) -> the one line a UserError stops `cli.run(config)` with, before anything is written."""
  monkeypatch.setattr(cli, "_train", lambda *a, **k: pytest.fail("the input was accepted: training started"))
  monkeypatch.setattr(report, "environment", lambda: {})

  def run(config) -> str:
    with pytest.raises(UserError) as caught:
      cli.run(config)
    assert "\n" not in str(caught.value) and not (tmp_path / "w").exists()
    return str(caught.value)
  return run


BAD = [
    ("module_missing", {"model.name": "no_such_pkg.nets:Net"},
     "config.model.name='no_such_pkg.nets:Net': cannot import no_such_pkg.nets (ModuleNotFoundError"),
    ("attribute_missing", {"model.name": "tests.own_model:Nett"},
     "config.model.name='tests.own_model:Nett': tests.own_model has no attribute 'Nett'"),
    ("not_a_path", {"model.name": "tests.own_model:"},
     "config.model.name='tests.own_model:' must be 'pkg.module:Name'"),
    ("not_a_class", {"model.name": "tests.own_model:NOT_A_MODEL"},
     "config.model.name='tests.own_model:NOT_A_MODEL' is an int, not a flax.linen or flax.nnx Module class"),
    ("not_a_module_class", {"model.name": "tests.own_model:Dataset"}, "is the class Dataset, not a flax.linen"),
    ("linen_bad_kwarg", {"model.name": "tests.own_model:Net", "model.kwargs.widht": 8},
     "config.model.name='tests.own_model:Net' could not be built with config.model.kwargs={'widht': 8, 'width': 8}: "
     "TypeError: Net.__init__() got an unexpected keyword argument 'widht'"),
    ("nnx_bad_kwarg", {"model.kwargs.depth": 2},
     "config.model.name='tests.own_model:NnxNet' could not be built with config.model.kwargs={'depth': 2, 'width': 8}: "
     "TypeError: NnxNet.__init__() got an unexpected keyword argument 'depth'"),
    ("kwarg_fixed_by_data", {"model.kwargs.num_classes": 5}, "config.model.kwargs.num_classes is fixed by the data (3"),
    ("zoo_model_with_kwargs", {"model.name": "mlp"}, "config.model.kwargs does not apply to model 'mlp'"),
    ("other_models_key", {"model.widths": (4,)},
     "config.model.widths does not apply to model 'tests.own_model:NnxNet'"),
    ("data_module_missing", {"data.name": "no_such_pkg.data:load"},
     "config.data.name='no_such_pkg.data:load': cannot import"),
    ("data_not_a_function", {"data.name": "tests.own_model:NOT_A_MODEL"},
     "config.data.name='tests.own_model:NOT_A_MODEL' is an int, not a function load(config, seed)"),
    ("data_not_a_dataset", {"data.name": "tests.own_model:not_a_dataset"},
     "config.data.name='tests.own_model:not_a_dataset' returned a dict, not an lth_jax.data.Dataset"),
    ("builtin_data_with_kwargs", {"data.name": "moons", "data.kwargs.n": 5},
     "config.data.kwargs={'n': 5} holds the options"),
]


@pytest.mark.parametrize("overrides, fragment", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_own_model_or_source_stops_in_one_line_naming_the_key(tmp_path, refused, overrides, fragment):
  config = own_config(tmp_path)
  for key, value in overrides.items():   # new keys under kwargs, as --config.model.kwargs.KEY adds them
    section, *rest = key.split(".")
    if rest[0] == "kwargs":
      config[section].kwargs[rest[1]] = value
    else:
      override(config, **{key: value})
  assert fragment in refused(config)


def test_kwargs_are_settable_on_the_command_line_only_for_your_own_model(capsys):
  status, err, config = flag_run(["main.py", "--config.model.name=tests.own_model:Net", "--config.model.kwargs.width=8",
                                  "--config.data.name=tests.own_model:load", "--config.data.kwargs.n=90"], capsys)
  assert status is None, err
  assert config.model.kwargs.to_dict() == {"width": 8} and config.data.kwargs.to_dict() == {"n": 90}
  net = models.get(config.model.name, num_classes=3, **experiment.model_kwargs(config.model))
  assert (net.inner.width, net.inner.num_classes) == (8, 3)
  for args, where in ((["--config.model.kwargs.width=8"], "config.model.kwargs.width: config.model.kwargs holds the "
                        "arguments of your own model, given as config.model.name='pkg.module:Name'; "
                        "config.model.name='mlp' is built in"),
                      (["--config.data.kwargs.n=8"], "config.data.kwargs.n: config.data.kwargs holds the arguments "
                       "of your own data source, given as config.data.name='pkg.module:Name'; "
                       "config.data.name='digits' is built in")):
    status, err, _ = flag_run(["main.py", *args], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and where in lines[0], err


def test_a_failed_import_exits_2_with_one_line_on_the_command_line(tmp_path):
  proc = main_py("--config.model.name=no_such_pkg.nets:Net", "--config.model.kwargs.width=8",
                 f"--config.workdir={tmp_path / 'w'}")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("lth_jax: error: config.model.name='no_such_pkg.nets:Net': cannot import"), lines
  assert not (tmp_path / "w").exists()
