"""What pruning buys: parameter counts, multiply-adds and wall-clock inference time.

Definitions follow ShrinkBench (Blalock et al. 2020, `shrinkbench/metrics`):
- compression ratio = all parameters / non-zero parameters (biases and norms included);
- FLOPs = multiply-adds of the conv and dense layers for ONE input example: a conv costs
  H_out * W_out * k_h * k_w * C_in * C_out (its kernel's size at every output position), a dense layer
  in * out; BatchNorm, activations, pooling and biases are not counted. With masks, only non-zero weights
  count: H_out * W_out * nnz(kernel) for a conv, nnz(kernel) for a dense layer;
- theoretical speedup = dense FLOPs / non-zero FLOPs.

FLOPs come from tracing the model (`nn.intercept_methods` under `jax.eval_shape`: shapes only, nothing
is computed), so every Conv and Dense a model calls is counted with its real output size, without
per-architecture formulas. The interception sees flax.linen layers only: for a model that calls none (an
NNX model behind `nnx.bridge.ToLinen`) the FLOP figures are None, not counted, rather than a wrong 0.
"""

import math
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _params(variables):
  """Accept a variables dict ({'params': ..., 'batch_stats': ...}) or the params alone."""
  return variables["params"] if "params" in variables else variables


def count_params(params) -> int:
  """All parameters in `params` (a params pytree or a Flax variables dict), pruned or not."""
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(_params(params)))


def count_nonzero(params, masks=None) -> int:
  """Non-zero entries of params (times masks, when given): what a sparse format would store."""
  params = _params(params)
  if masks is not None:
    params = jax.tree.map(lambda p, m: np.asarray(p) * np.asarray(m), params, masks)
  return sum(int(np.count_nonzero(leaf)) for leaf in jax.tree.leaves(params))


def compression_ratio(params, masks) -> float:
  """All parameters over the non-zero ones under `masks` (`count_nonzero`): 1 for a dense network."""
  return count_params(params) / count_nonzero(params, masks)


def _trace(model, input_shape) -> list[tuple[str, int]]:
  """(layer path, output positions) for every Conv / Dense call on one example of `input_shape`.

  Positions are the output's size without batch and feature axes: H_out * W_out for a 2-D conv, 1 for a
  dense layer on a flat input.
  """
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
      calls.append(("/".join(context.module.path), math.prod(out.shape[1:-1])))
    return out

  x = jnp.zeros((1, *input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x))  # batch statistics are not needed
  return calls


def layer_flops(model, params, input_shape, masks=None) -> list[dict]:
  """Per Conv/Dense call: layer, positions, dense multiply-adds and non-zero ones (= dense without masks).

  `input_shape` is one example's shape without the batch axis, e.g. (32, 32, 3) (Dataset.input_shape).
  """
  kernels = flax.traverse_util.flatten_dict(_params(params), sep="/")
  mask_leaves = flax.traverse_util.flatten_dict(masks, sep="/") if masks is not None else {}
  rows = []
  for layer, positions in _trace(model, input_shape):
    kernel = kernels[f"{layer}/kernel"]
    size = math.prod(kernel.shape)  # works for shapes alone (jax.eval_shape) when there are no masks
    nonzero = size
    if masks is not None:
      nonzero = int(np.count_nonzero(np.asarray(kernel) * np.asarray(mask_leaves[f"{layer}/kernel"])))
    rows.append({"layer": layer, "positions": positions, "dense": positions * size,
                 "nonzero": positions * nonzero})
  return rows


def flops(model, params, input_shape, masks=None) -> int:
  """Multiply-adds for one example; with masks, only those of non-zero weights (ShrinkBench)."""
  return sum(row["nonzero"] for row in layer_flops(model, params, input_shape, masks))


def theoretical_speedup(model, params, input_shape, masks) -> float:
  """Dense FLOPs over the FLOPs of the weights alive under `masks`, as `layer_flops` counts them."""
  rows = layer_flops(model, params, input_shape, masks)
  return sum(r["dense"] for r in rows) / sum(r["nonzero"] for r in rows)


def time_inference(apply_fn, variables, x, repeats: int = 20, warmup: int = 2) -> float:
  """Median seconds per call of apply_fn(variables, x), waiting for the result (block_until_ready).

  Pass a jitted apply_fn; the `warmup` calls before timing absorb compilation and are not counted.
  """
  for _ in range(warmup):
    jax.block_until_ready(apply_fn(variables, x))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(apply_fn(variables, x))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def figures(model, params, input_shape, masks=None, dense_model=None, dense_params=None) -> dict:
  """One network's ShrinkBench figures: parameters and multiply-adds, all and non-zero, and the compression
  ratio and theoretical speedup against the dense network it was pruned from.

  That network is the same one by default (a masked network); a network rebuilt narrower passes the
  full-width `dense_model` and `dense_params`, so its ratio and speedup count the removed channels too.
  """
  rows = layer_flops(model, params, input_shape, masks)
  all_flops, nonzero_flops = sum(r["dense"] for r in rows), sum(r["nonzero"] for r in rows)
  nonzero_params = count_nonzero(params, masks)
  if dense_model is None:
    dense_flops, dense_count = all_flops, count_params(params)
  else:
    dense_flops, dense_count = flops(dense_model, dense_params, input_shape), count_params(dense_params)
  counted = bool(rows)   # else no layer was seen: the FLOPs are unknown (None), not 0
  return {"params": count_params(params), "nonzero_params": nonzero_params,
          "flops": all_flops if counted else None, "nonzero_flops": nonzero_flops if counted else None,
          "compression_ratio": dense_count / nonzero_params,
          "theoretical_speedup": dense_flops / nonzero_flops if counted and nonzero_flops else None}
