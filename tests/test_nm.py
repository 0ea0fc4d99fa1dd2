"""N:M sparsity (config.prune.pattern): exactly n of every m consecutive weights along a kernel's input axis
stay, and they are the n best scores of the group, through the library and through the methods.

Every mask is checked against numpy of its own: the groups by reshaping (input axis last, rows of m), the
kept entries by a loop over each group sorting its |w| (ties: the later position stays, as in `select`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import experiment
from lth_jax.methods import at_init, common, lottery, sparse_training
from lth_jax.sparsity import criteria, nm, pruning
from lth_jax.sparsity import masks as masks_lib
from tests.helpers import Collect, drive, run_method, small_config

TWO_FOUR = nm.NM(2, 4)


def groups_of(mask, m: int) -> np.ndarray:
  """Every group of m consecutive entries along the second-to-last axis, one group per row."""
  return np.moveaxis(np.asarray(mask), -2, -1).reshape(-1, m)


def best_of_each_group(scores, n: int, m: int) -> np.ndarray:
  """By hand: in each run of m input channels at one window position and output unit, the n highest."""
  scores = np.asarray(scores)
  keep = np.zeros(scores.shape, bool)
  for *window, out in np.ndindex(*scores.shape[:-2], scores.shape[-1]):
    for start in range(0, scores.shape[-2], m):
      group = [scores[(*window, start + j, out)] for j in range(m)]
      for j in sorted(range(m), key=lambda j: (-group[j], -j))[:n]:
        keep[(*window, start + j, out)] = True
  return keep


# -- the library ---------------------------------------------------------------------------------------

def test_parse_reads_n_colon_m_and_refuses_anything_else():
  assert nm.parse("2:4") == nm.NM(2, 4) and nm.parse(" 1 : 8 ") == nm.NM(1, 8)
  assert nm.parse("unstructured") is None
  assert nm.NM(2, 4).sparsity == 0.5 and nm.NM(1, 8).sparsity == 0.875
  for text in ("4:4", "5:4", "0:4", "2-4", "a:b", "", "2:4:8"):
    with pytest.raises(ValueError, match="is not a pattern"):
      nm.parse(text)


def test_a_dense_kernel_keeps_the_two_largest_magnitudes_of_each_four_inputs_by_hand():
  # kernel (in=8, out=2): the groups are rows 0-3 and 4-7 of each column
  w = np.array([[0.1, 0.4], [-0.9, 0.2], [0.3, 0.4], [0.5, -0.4],
                [2.0, 1.0], [-0.1, 1.0], [0.0, 1.0], [-3.0, 1.0]], np.float32)
  expected = np.array([[0, 0], [1, 0], [0, 1], [1, 1],     # |.9| |.5|;  three ties at .4: the later two stay
                       [1, 0], [0, 0], [0, 1], [1, 1]],    # |2| |3|;   four ties: the last two stay
                      np.float32)
  params = {"layer": {"kernel": jnp.asarray(w), "bias": jnp.zeros(2)}}
  m = pruning.magnitude(params, masks_lib.init(params), 0.5, pattern=TWO_FOUR)
  np.testing.assert_array_equal(np.asarray(m["layer"]["kernel"]), expected)
  np.testing.assert_array_equal(np.asarray(m["layer"]["bias"]), np.ones(2))


@pytest.mark.parametrize("pattern", [nm.NM(2, 4), nm.NM(1, 8)], ids=str)
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_conv_and_dense_kernels_keep_the_n_best_of_every_m_input_channels(pattern, scope):
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 6)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.normal(size=(24, 5)), jnp.float32), "bias": jnp.zeros(5)}}
  m = pruning.magnitude(params, masks_lib.init(params), pattern.sparsity, scope, pattern=pattern)
  for name in ("conv", "dense"):
    mask = np.asarray(m[name]["kernel"])
    assert (groups_of(mask, pattern.m).sum(axis=1) == pattern.n).all()
    np.testing.assert_array_equal(mask != 0, best_of_each_group(np.abs(params[name]["kernel"]), pattern.n, pattern.m))


def test_a_schedule_keeps_n_of_every_m_as_its_floor_and_ends_at_exactly_n():
  rng = np.random.default_rng(1)
  params = {"a": {"kernel": jnp.asarray(rng.normal(size=(16, 12)), jnp.float32)},
            "b": {"kernel": jnp.asarray(rng.normal(size=(12, 4)), jnp.float32)}}
  start = masks_lib.init(params)
  _, total = masks_lib.count(start, masks_lib.prunable(params))
  first = pruning.magnitude(params, start, 0.25, pattern=TWO_FOUR)   # 3/4 of the weights stay, anywhere
  assert masks_lib.count(first)[0] == total - round(0.25 * total)
  for name in params:
    kept = np.asarray(first[name]["kernel"]) != 0
    assert (groups_of(kept, 4).sum(axis=1) >= 2).all()
    assert (kept >= best_of_each_group(np.abs(params[name]["kernel"]), 2, 4)).all()   # the floor is in
  moved = jax.tree.map(lambda p: p * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  last = pruning.magnitude(moved, first, 1 / 3, pattern=TWO_FOUR)   # the rest: down to half
  for name in params:
    kept, before = np.asarray(last[name]["kernel"]) != 0, np.asarray(first[name]["kernel"]) != 0
    assert (groups_of(kept, 4).sum(axis=1) == 2).all() and not (kept & ~before).any()   # cumulative
    alive_scores = np.where(before, np.abs(moved[name]["kernel"]), -1.0)
    np.testing.assert_array_equal(kept, best_of_each_group(alive_scores, 2, 4))


def test_the_library_refuses_a_count_below_the_floor_and_a_layer_m_does_not_divide():
  params = {"a": {"kernel": jnp.ones((8, 3))}, "b": {"kernel": jnp.ones((6, 2))}}
  with pytest.raises(ValueError, match="'b/kernel' cannot hold the 2:4 pattern.*is 6, not a multiple of 4"):
    pruning.magnitude(params, masks_lib.init(params), 0.5, pattern=TWO_FOUR)
  params = {"a": {"kernel": jnp.ones((8, 3))}}
  with pytest.raises(ValueError, match="below the 2:4 pattern's 12 .*at most sparsity 0.5"):
    pruning.magnitude(params, masks_lib.init(params), 0.6, pattern=TWO_FOUR)


# -- the methods -------------------------------------------------------------------------------------

def digits(**overrides):
  """An MLP 64-16-10 on the digits under 2:4: every kernel's inputs (64, 16) are multiples of 4."""
  return small_config(**{"data.name": "digits", "data.subset": 200, "model.widths": (16,), "prune.pattern": "2:4",
                         "prune.sparsity": 0.5, "train.epochs": 2, "metrics.ood": (), **overrides})


def kernels(tree) -> dict:
  return {name: np.asarray(leaf["kernel"]) for name, leaf in tree.items()}


def test_oneshot_prunes_the_trained_weights_to_their_two_best_of_every_four():
  exp = experiment.build(digits(method="oneshot"))
  rng = np.random.default_rng(2)   # "trained": theta_0 moved, so the mask is not theta_0's
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(0, 0.1, p.shape), p.dtype), exp.init_params)
  trained = exp.trainer(exp.config.train.epochs).init_state(params, exp.init_batch_stats, masks_lib.init(params),
                                                            exp.key("t"))
  dense_run = common.DenseRun(trained, exp.init_params, exp.init_batch_stats, 1.0, 0, trained, 0)
  ticket = lottery.oneshot_ticket(exp, dense_run, 0.5, "none")
  for name, mask in kernels(ticket.state.masks).items():
    assert (groups_of(mask, 4).sum(axis=1) == 2).all()
    np.testing.assert_array_equal(mask != 0, best_of_each_group(np.abs(params[name]["kernel"]), 2, 4))


def test_prune_at_init_keeps_the_two_best_snip_scores_of_every_four():
  exp = experiment.build(digits(**{"method": "prune_at_init", "prune.criterion": "snip"}))
  ticket = at_init.ticket(exp, 0.5)
  context = common.criterion_context(exp, ticket.name)
  scores = criteria.get("snip")(exp.init_params, masks_lib.init(exp.init_params), context)
  for name, mask in kernels(ticket.state.masks).items():
    assert (groups_of(mask, 4).sum(axis=1) == 2).all()
    np.testing.assert_array_equal(mask != 0, best_of_each_group(scores[name]["kernel"], 2, 4))


def test_iterative_rounds_narrow_to_exactly_two_of_every_four():
  exp = experiment.build(digits(**{"method": "iterative", "iterative.rounds": 3, "train.epochs": 1}))
  out = Collect()
  dense_run = common.DenseRun(None, exp.init_params, exp.init_batch_stats, 1.0, 0,
                              exp.trainer(1).init_state(exp.init_params, exp.init_batch_stats,
                                                        masks_lib.init(exp.init_params), exp.key("t")), 0)
  drive(lottery.iterative_sweep(exp, dense_run, [0.5], out))
  sparsities = [r["sparsity"] for r in out.records]
  assert sparsities[0] < sparsities[1] < sparsities[2] == 0.5   # 1 - 0.5^(r/3), the last exactly the pattern's
  previous = None
  for state in out.states:
    for name, mask in kernels(state.masks).items():
      assert (groups_of(mask, 4).sum(axis=1) >= 2).all()
      assert previous is None or not ((mask != 0) & (previous[name] == 0)).any()
    previous = kernels(state.masks)
  assert all((groups_of(mask, 4).sum(axis=1) == 2).all() for mask in previous.values())


def test_imp_subnetworks_of_the_instability_analysis_narrow_to_exactly_two_of_every_four():
  exp = experiment.build(digits(**{"method": "instability", "train.epochs": 1, "stability.rewind_steps": (0,),
                                   "stability.points": 3, "stability.imp_rounds": (1, 2), "iterative.rate": 0.2}))
  out = Collect()
  run_method(exp, out)
  rounds = {r["imp_round"]: s for r, s in zip(out.records, out.states) if r.get("imp_round")}
  first, last = kernels(rounds[1].masks), kernels(rounds[2].masks)
  kept, total = masks_lib.count(rounds[1].masks, exp.which)
  assert kept == total - round(0.2 * total)   # the rate, above the floor
  for name in first:
    assert (groups_of(first[name], 4).sum(axis=1) >= 2).all()
    assert (groups_of(last[name], 4).sum(axis=1) == 2).all()   # the last listed round: the pattern exactly
    assert not ((last[name] != 0) & (first[name] == 0)).any()   # the masks nest


def test_gradual_pruning_steps_narrow_to_two_of_every_four_inside_the_compiled_step():
  exp = experiment.build(digits(**{"method": "gradual", "gradual.every": 2}))
  hook = sparse_training.gradual_hook(exp, 0.5)
  state = exp.trainer(exp.config.train.epochs).init_state(exp.init_params, exp.init_batch_stats,
                                                          masks_lib.init(exp.init_params), exp.key("t"))
  update = jax.jit(lambda state: hook(state, None, None))   # as the train step runs it: traced counts
  for k in range(hook.n + 1):   # the schedule's pruning steps t0 + k dt, on fixed weights
    state = update(state.replace(step=jnp.asarray(hook.t0 + k * hook.every, jnp.int32)))
    remaining, _ = masks_lib.count(state.masks, exp.which)
    assert remaining == hook.counts[k]
    for name, mask in kernels(state.masks).items():
      assert (groups_of(mask, 4).sum(axis=1) >= 2).all()
  for name, mask in kernels(state.masks).items():
    np.testing.assert_array_equal(mask != 0, best_of_each_group(np.abs(exp.init_params[name]["kernel"]), 2, 4))


def test_static_draws_a_random_two_of_every_four():
  exp = experiment.build(digits(method="static"))
  masks = sparse_training.random_masks(exp, 0.5, "static@0.5")
  for name, mask in kernels(masks).items():
    assert (groups_of(mask, 4).sum(axis=1) == 2).all()
  # random, not the first two of each group: another key draws other pairs (the same pair: 1 in 6)
  assert masks_lib.hamming(masks, sparse_training.random_masks(exp, 0.5, "other"), exp.which) > 0.2
