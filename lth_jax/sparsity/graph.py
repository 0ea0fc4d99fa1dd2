"""Structured pruning of any JAX function of a params pytree, read from its jaxpr.

`channel_groups(fn, params, *example_args)` traces `fn(params, *args)` and returns the groups of coupled
parameter slices, as Torch-Pruning's DependencyGraph does for PyTorch modules: removing channel c of a
group removes, from every member, the positions `slice.index[c]` along `slice.axis`. A conv's output
channels come with the next BatchNorm's scale, bias and statistics and the next layer's input channels;
residual additions put every summed tensor's producer in one group; a concatenation gives each operand's
channels their offset; a flatten into a Dense layer gives each channel its strided block of rows;
depthwise and grouped convolutions tie input to output channels. Channels that reach the output, the
non-param arguments or an operation without a rule are in no group (see `jaxpr_channels`).

`params` is whatever `fn` takes first: for Flax linen the whole variables dict, so BatchNorm statistics
are members too ('batch_stats/bn_0/mean'); trace BatchNorm in eval mode (use_running_average). An NNX
model is `fn = lambda state, x: nnx.merge(graphdef, state)(x)` with `graphdef, state = nnx.split(model)`.

A function that returns `(output, updates)`, where updates are new values of some of params' leaves
(Flax's mutable collections: BatchNorm's running statistics in training), is traced with `updates=True`:
those values are narrowed as the leaves are, instead of fixing their channels as the output does.

`shrink(fn, params, groups, keep)` returns `(narrow_fn, narrow_params)`: `narrow_params` holds only the
kept positions of every member, and `narrow_fn` re-evaluates `fn`'s program equation by equation on
them, every shape the pruned channels touched made narrower (`narrow_function`: the same program from
how many channels each group keeps, all it depends on). It computes what `fn` computes on
`mask(params, groups, keep)` -- every member's pruned slices zero -- to float rounding, for any model
and without model-specific code. The exception is a pruned channel that, though its parameters are
zero, is non-zero where it meets another activation (e.g. x + 1 contracted with an activation): it
would count in the masked function and not in the narrow one.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.extend.core as jex
import numpy as np

from lth_jax.sparsity import jaxpr_channels, masks


@dataclasses.dataclass(frozen=True)
class Slice:
  """Positions of one parameter leaf along one axis: channel c of the group is `index[c]` there."""
  leaf: str     # the leaf's path in params: 'params/conv_0/kernel', 'batch_stats/bn_0/mean'
  axis: int     # non-negative
  index: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class Group:
  """Channels removed together: channel c is removed from every slice at once."""
  size: int
  slices: tuple[Slice, ...]   # sorted by (leaf, axis)

  def leaves(self) -> set[str]:
    """The names of the parameter leaves the group slices."""
    return {s.leaf for s in self.slices}


@dataclasses.dataclass
class _Traced:
  graph: jaxpr_channels.ChannelGraph
  groups: dict   # Group -> its channel root in graph
  out_tree: jax.tree_util.PyTreeDef


def _trace(fn: Callable, params, args, updates: bool = False) -> _Traced:
  """Traces fn(params, *args) and reads its groups; the non-param arguments' axes are pinned."""
  closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(params, *args)
  prog = jaxpr_channels.flatten(closed)
  graph = jaxpr_channels.ChannelGraph(prog, _updated(params, out_shapes, prog) if updates else None)
  n_params = len(jax.tree.leaves(params))
  for v in prog.inputs[n_params:]:
    graph.pin_value(v)
  pinned = graph.pinned_roots()
  first_use = {}
  for i, eqn in enumerate(prog.eqns):
    for v in eqn.invars:
      if not isinstance(v, jex.Literal):
        first_use.setdefault(v, i)
  slices, order = {}, {}
  for (name, leaf), v in zip(masks.named_leaves(params), prog.inputs):
    for axis in range(np.ndim(leaf)):
      for root, idx in graph.columns(graph.node(v, axis)):
        if root in pinned:
          continue
        positions = np.argsort(idx, kind="stable")[np.sum(idx < 0):]   # channel 0's positions first, ...
        index = tuple(map(tuple, positions.reshape(graph.size[root], -1).tolist()))
        slices.setdefault(root, {})[(name, axis)] = Slice(name, axis, index)
        order[root] = min(order.get(root, len(prog.eqns)), first_use.get(v, len(prog.eqns)))
  groups = {Group(graph.size[r], tuple(s[k] for k in sorted(s))): r
            for r, s in sorted(slices.items(), key=lambda item: (order[item[0]], item[0]))}
  return _Traced(graph, groups, jax.tree.structure(out_shapes))


def _updated(params, out_shapes, prog: jaxpr_channels.Program) -> dict[int, int]:
  """{position in prog.outputs: the params input it is the new value of} for fn returning (out, updates)."""
  if not (isinstance(out_shapes, tuple) and len(out_shapes) == 2):
    raise ValueError("with updates=True, fn must return (output, updates)")
  inputs = {name: v for (name, _), v in zip(masks.named_leaves(params), prog.inputs)}
  first = len(jax.tree.leaves(out_shapes[0]))
  out = {}
  for i, (name, _) in enumerate(masks.named_leaves(out_shapes[1]), first):
    if name not in inputs:
      raise ValueError(f"fn's updates hold {name!r}, which params have not")
    out[i] = inputs[name]
  return out


def channel_groups(fn: Callable, params, *example_args, updates: bool = False) -> tuple[Group, ...]:
  """The prunable channel groups of `fn(params, *example_args)`, in the order the program first uses them.

  Args:
    fn: a function of a params pytree and further arguments, traceable by `jax.make_jaxpr`.
    params: its first argument (arrays or `jax.ShapeDtypeStruct`s).
    *example_args: the further arguments (their shapes and dtypes are what matters).
    updates: fn returns (output, updates), where updates holds new values of some of params' leaves under
      the same names (Flax's mutable collections in training: {'batch_stats': ...}). They are narrowed as
      those leaves are, so they do not keep a channel from being pruned as the output does.

  Returns:
    One `Group` per set of coupled channels that may be removed.
  """
  return tuple(_trace(fn, params, example_args, updates).groups)


def _check_keep(groups: Sequence[Group], keep) -> list[np.ndarray]:
  if len(keep) != len(groups):
    raise ValueError(f"keep has {len(keep)} entries for {len(groups)} groups")
  keep = [np.asarray(k, bool) for k in keep]
  for i, (g, k) in enumerate(zip(groups, keep)):
    if k.shape != (g.size,) or not k.any():
      raise ValueError(f"keep[{i}] has shape {k.shape} or keeps no channel; its group has {g.size} channels")
  return keep


def _removed(groups: Sequence[Group], keep: Sequence[np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
  """{(leaf, axis): sorted positions removed} over all groups."""
  out = {}
  for g, k in zip(groups, keep):
    for s in g.slices:
      gone = np.asarray([p for c in np.flatnonzero(~k) for p in s.index[c]], int)
      out[(s.leaf, s.axis)] = np.union1d(out.get((s.leaf, s.axis), np.zeros(0, int)), gone)
  return out


def channel_mask(params, groups: Sequence[Group], keep: Sequence) -> dict:
  """0/1 pytree (structure, shapes and dtypes of params): 0 on every removed channel's slices.

  Args:
    params: the pytree the groups were traced with.
    groups: groups from `channel_groups` (any subset).
    keep: one bool array per group, True for a kept channel; at least one per group.
  """
  removed = _removed(groups, _check_keep(groups, keep))

  def leaf_mask(path, leaf):
    name, m = masks.leaf_name(path), np.ones(np.shape(leaf), np.asarray(leaf).dtype)
    for axis in range(m.ndim):
      gone = removed.get((name, axis))
      if gone is not None:
        m[(slice(None),) * axis + (gone,)] = 0
    return jax.numpy.asarray(m)
  return jax.tree_util.tree_map_with_path(leaf_mask, params)


def mask(params, groups: Sequence[Group], keep: Sequence):
  """params with every removed channel's slices zero (what `shrink`'s narrow function computes on)."""
  return masks.apply(params, channel_mask(params, groups, keep))


def narrow(params, groups: Sequence[Group], keep: Sequence):
  """params holding only the kept positions of every group member; other leaves unchanged."""
  removed = _removed(groups, _check_keep(groups, keep))

  def leaf_narrow(path, leaf):
    name = masks.leaf_name(path)
    cut = {axis: removed[(name, axis)] for axis in range(np.ndim(leaf)) if (name, axis) in removed}
    if not cut:
      return leaf
    traced = isinstance(leaf, jax.core.Tracer)
    xp = jax.numpy if traced else np   # concrete leaves are cut on the host: no op compiled per shape
    leaf = leaf if traced else np.asarray(leaf)
    for axis, gone in cut.items():
      leaf = xp.take(leaf, np.setdiff1d(np.arange(np.shape(leaf)[axis]), gone), axis=axis)
    return leaf if traced else jax.numpy.asarray(leaf)
  return jax.tree_util.tree_map_with_path(leaf_narrow, params)


def shrink(fn: Callable, params, groups: Sequence[Group], keep: Sequence,
           updates: bool = False) -> tuple[Callable, dict]:
  """(narrow_fn, narrow_params): fn's program with the removed channels taken out of every shape.

  Args:
    fn: the function the groups were read from, `fn(params, *args)`.
    params: its full-width params.
    groups: groups from `channel_groups(fn, params, ...)` (any subset).
    keep: one bool array per group, True for a kept channel; at least one per group.
    updates: fn returns (output, updates) (see `channel_groups`); narrow_fn returns them narrowed.

  Returns:
    narrow_fn(narrow_params, *args), jittable, equal to fn(mask(params, groups, keep), *args) to float
    rounding (see the module docstring), for arguments of any shape fn accepts; and narrow_params.
  """
  keep = _check_keep(groups, keep)
  narrow_fn = narrow_function(fn, params, groups, [int(k.sum()) for k in keep], updates)
  return narrow_fn, narrow(params, groups, keep)


def narrow_function(fn: Callable, params, groups: Sequence[Group], sizes: Sequence[int],
                    updates: bool = False) -> Callable:
  """fn's program with group i narrowed to sizes[i] channels: `shrink`'s narrow_fn, for any narrow params.

  Which channels were kept does not change the program, only how many: a shrunk network saved as its
  narrow params runs again from the full-width `fn` and these sizes.

  Args:
    fn: the function the groups were read from, `fn(params, *args)`.
    params: its full-width params (arrays or `jax.ShapeDtypeStruct`s); narrow_fn traces fn at their
      shapes and at the dtypes of the params it is called with.
    groups: groups from `channel_groups(fn, params, ...)` (any subset).
    sizes: the channels each group keeps, from 1 to its size.
    updates: fn returns (output, updates) (see `channel_groups`).

  Returns:
    narrow_fn(narrow_params, *args), jittable.
  """
  if len(sizes) != len(groups) or any(not 1 <= int(n) <= g.size for g, n in zip(groups, sizes)):
    raise ValueError(f"sizes={tuple(sizes)} must give each of the {len(groups)} groups from 1 to its channels")
  shapes = [np.shape(leaf) for leaf in jax.tree.leaves(params)]
  params_tree = jax.tree.structure(params)

  @functools.lru_cache(maxsize=8)
  def traced_at(dtypes, arg_tree, arg_structs):
    full = jax.tree.unflatten(params_tree, [jax.ShapeDtypeStruct(s, d) for s, d in zip(shapes, dtypes)])
    traced = _trace(fn, full, jax.tree.unflatten(arg_tree, arg_structs), updates)
    missing = [i for i, g in enumerate(groups) if g not in traced.groups]
    if missing:
      raise ValueError(f"groups {missing} are not channel groups of fn traced at these argument shapes")
    return traced, {traced.groups[g]: int(n) for g, n in zip(groups, sizes)}

  def narrow_fn(narrow_params, *args):
    leaves, arg_tree = jax.tree.flatten(args)
    param_leaves = jax.tree.leaves(narrow_params)
    dtypes = tuple(jax.numpy.result_type(p) for p in param_leaves)
    traced, kept = traced_at(dtypes, arg_tree, tuple(_struct(x) for x in leaves))
    outs = _evaluate(traced.graph, kept, param_leaves + leaves)
    return jax.tree.unflatten(traced.out_tree, outs)
  return narrow_fn


def _struct(x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x))


def _evaluate(graph: jaxpr_channels.ChannelGraph, kept: dict[int, int], inputs: list) -> list:
  """Runs graph's program on narrowed inputs, each equation's shape parameters narrowed to match."""
  prog = graph.prog
  env = dict(zip(prog.inputs, inputs))
  env.update(prog.consts)
  read = lambda v: v.val if isinstance(v, jex.Literal) else env[v]

  def shape(v):
    return tuple(graph.narrow_size(graph.node(v, a), kept) for a in range(len(prog.shapes[v])))
  for eqn in prog.eqns:
    params = _narrow_params(eqn, shape, prog.shapes)
    outs = eqn.primitive.bind(*map(read, eqn.invars), **params)
    for v, o in zip(eqn.outvars, outs if eqn.primitive.multiple_results else [outs]):
      env[v] = o
  return [read(v) for v in prog.outputs]


def _narrow_params(eqn: jaxpr_channels.Eqn, shape: Callable, full_shapes: list) -> dict:
  """The equation's params that name shapes, recomputed from its narrowed operands and results."""
  name, p = eqn.primitive.name, dict(eqn.params)
  if name == "reshape":
    p["new_sizes"] = shape(eqn.outvars[0])
  elif name == "broadcast_in_dim":
    p["shape"] = shape(eqn.outvars[0])
  elif name == "conv_general_dilated":
    lhs, rhs = eqn.invars
    dn = p["dimension_numbers"]
    p["feature_group_count"] = shape(lhs)[dn.lhs_spec[1]] // shape(rhs)[dn.rhs_spec[1]]
  elif name == "split":
    p["sizes"] = tuple(shape(v)[p["axis"]] for v in eqn.outvars)
  elif name == "slice":
    out, full = shape(eqn.outvars[0]), full_shapes[eqn.outvars[0]]
    p["limit_indices"] = tuple(n if n != f else lim for n, f, lim in zip(out, full, p["limit_indices"]))
  return p
