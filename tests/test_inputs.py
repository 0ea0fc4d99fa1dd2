"""Issue 23's inputs that are not errors: training without a validation split, the key listing, and the
benchmark's cap on measured time. (The bad inputs are in test_census.py.)"""

import json

import pytest

from benchmarks import bench
from lth_jax import cli
from lth_jax import config as config_lib
from lth_jax import methods
from tests.helpers import small_config


def test_val_fraction_zero_trains_on_the_whole_training_split_without_validation(tmp_path):
  """OpenLTH's protocol (all 60,000 MNIST training images): no val split, best-epoch figures absent."""
  config = small_config(**{"method": "oneshot", "data.val_fraction": 0.0, "data.test_fraction": 0.2,
                           "train.epochs": 2, "finetune.epochs": 1, "log.tensorboard": False,
                           "metrics.ood": (), "metrics.similarity_eps": ()})
  config.workdir = str(tmp_path / "w")
  runs = cli.run(config)
  n = config.data.n_samples
  assert [run["method"] for run in runs] == ["dense", "oneshot"]
  for run in runs:
    assert run["curve"], run["method"]
    for row in run["curve"]:
      assert row["val_loss"] is None and row["val_accuracy"] is None and row["test_accuracy"] is not None
    assert run["best_epoch"] is None and run["best_val_accuracy"] is None
    assert run["test_accuracy_at_best_epoch"] is None
    # temperature scaling is fitted on the validation split: without one there is none
    assert run["temperature"] is None and run["ece_ts"] is None and run["nll_ts"] is None
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["ece"] is not None
  doc = json.loads((tmp_path / "w" / "results.json").read_text())
  assert doc["complete"] and doc["config"]["data"]["val_fraction"] == 0.0
  # every example not held out for test trains: 400 - round(0.2 * 400), in batches of 32 (the last dropped)
  steps = (n - round(0.2 * n)) // config.train.batch_size
  assert doc["runs"][0]["curve"][-1]["epoch"] == 2
  from lth_jax import experiment
  assert experiment.build(config).steps_per_epoch == steps


def test_the_key_listing_keeps_sections_apart_and_lists_every_method():
  lines = {line.split(" = ")[0]: line for line in config_lib.describe().splitlines()}
  # a standalone comment after an assignment starts the next section, it does not continue the key above
  assert lines["at_init.rounds"].endswith("# prune_at_init: prune theta_0 in this many rescorings (synflow: its "
                                          "iterations)")
  assert "Instability" not in lines["at_init.rounds"]
  # a comment continued on the next lines is still joined
  assert lines["replicates"].endswith("summarised as mean and std over seeds")
  assert lines["train.vmap"].endswith("and the seeds of `replicates` (which then run in lockstep)")
  meaning = lines["method"].split("#", 1)[1]
  assert all(f" {name} " in f" {meaning} " for name in methods.names()), meaning
  assert set(lines) == set(config_lib._flat(config_lib.base()))


@pytest.mark.parametrize("seconds, warmup, repeats, cap_s, expected", [
    # a vmapped epoch that takes far longer than estimated: one warm-up and one timed epoch, then the cap
    ([60, 60, 60, 60, 60, 60], 1, 5, 100, ([60], [60])),
    # the warm-up alone passes the cap: nothing is timed
    ([150, 60], 1, 5, 100, ([150], [])),
    ([300, 1, 1], 2, 5, 100, ([300], [])),
    # fast epochs: every repeat
    ([1] * 6, 1, 5, 100, ([1], [1, 1, 1, 1, 1])),
    # no warm-up: at least one timed call, then stop past the cap
    ([70, 70, 70], 0, 5, 100, ([], [70, 70])),
])
def test_the_benchmark_stops_on_measured_time(seconds, warmup, repeats, cap_s, expected):
  calls = iter(seconds)
  warm_flags = []

  def measure(warm):
    warm_flags.append(warm)
    return next(calls)

  first, timed = bench.within_cap(measure, warmup, repeats, cap_s)
  assert (first, timed) == expected
  assert warm_flags == [True] * len(first) + [False] * len(timed)
