"""A network made physically narrower by `sparsity.graph`, as a Flax module: the Trainer trains and evaluates it.

`Shrunk(Network(full), groups, sizes)` computes what the linen module `full` computes with channel group i
narrowed to sizes[i] channels (`graph.narrow_function` of `full`'s program: no model-specific code). In eval
mode that is full's eval-mode program; in training, with the batch_stats collection mutable, its training
program, BatchNorm on the batch's statistics and the running statistics returned updated and narrowed
(`graph.channel_groups(..., updates=True)`). `groups` must be groups of both programs (`groups`).

Its variables are full's under the same names, holding only the kept channels (what `graph.narrow` makes of
full's variables), so masks, checkpoints and leaf-name patterns read them as full's. Initialising it
initialises `full` and keeps the first sizes[i] channels of each group: a fresh draw from full's
initialisation (fan-ins of full width); the init output is full's, which Flax discards.
"""

import dataclasses
import functools

import flax
import flax.linen as nn
import jax
import numpy as np

from lth_jax.sparsity import graph


@dataclasses.dataclass(frozen=True)
class Network:
  """A linen module held by value: Flax adopts a module-valued field as a submodule, this it leaves alone."""
  module: nn.Module


def functions(module: nn.Module, variables) -> tuple:
  """(eval_fn, train_fn, updates): module.apply in eval mode and in training, as `graph` takes them.

  train_fn returns (logits, {'batch_stats': ...}) (`updates` True) when `variables` hold batch statistics.
  """
  def eval_fn(v, x):
    return module.apply(v, x, train=False)
  if "batch_stats" not in variables:
    return eval_fn, lambda v, x: module.apply(v, x, train=True), False
  return eval_fn, lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]), True


def groups(module: nn.Module, variables, x) -> tuple[graph.Group, ...]:
  """The channel groups of module's eval-mode program that its training program has too, in program order."""
  eval_fn, train_fn, updates = functions(module, variables)
  trained = set(graph.channel_groups(train_fn, variables, x, updates=updates))
  return tuple(g for g in graph.channel_groups(eval_fn, variables, x) if g in trained)


@functools.lru_cache(maxsize=32)
def _program(network: Network, groups: tuple, sizes: tuple, example: jax.ShapeDtypeStruct, train: bool,
             mutable: bool):
  full = network.module
  variables = jax.eval_shape(functools.partial(full.init, train=False), jax.random.key(0), example)
  eval_fn, train_fn, updates = functions(full, variables)
  if not train:
    return graph.narrow_function(eval_fn, variables, groups, sizes)
  return graph.narrow_function(train_fn, variables, groups, sizes, updates=updates and mutable)


class Shrunk(nn.Module):
  """`network.module` with channel group i narrowed to sizes[i] channels (see the module docstring)."""
  network: Network
  groups: tuple   # of graph.Group
  sizes: tuple    # of int, one per group

  @nn.compact
  def __call__(self, x, train: bool = False):
    full = self.network.module
    if self.is_initializing():
      out, variables = full.init_with_output(self.make_rng("params"), x, train=False)
      keep = [np.arange(g.size) < n for g, n in zip(self.groups, self.sizes)]
      for collection, tree in graph.narrow(flax.core.unfreeze(variables), self.groups, keep).items():
        for name, value in tree.items():
          self.put_variable(collection, name, value)
      return out
    variables = flax.core.unfreeze(self.variables)
    mutable = "batch_stats" in variables and self.is_mutable_collection("batch_stats")
    example = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    fn = _program(self.network, self.groups, self.sizes, example, train, mutable)
    if not (train and mutable):
      return fn(variables, x)
    out, updated = fn(variables, x)
    for name, value in updated["batch_stats"].items():
      self.put_variable("batch_stats", name, value)
    return out
