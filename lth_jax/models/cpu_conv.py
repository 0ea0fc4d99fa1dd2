"""Convolutions whose gradients XLA:CPU runs on its fast kernels, inside a `lax.scan` as well as outside.

XLA's CPU backend (jaxlib 0.10) runs a convolution on a library kernel (Eigen, or a YNNPACK fusion) only
when its dimension numbers are the canonical ones -- input NHWC, kernel HWIO, output NHWC, i.e. labels
`b01f_01io->b01f`. JAX's gradients of a convolution are convolutions with other labels (the weight
gradient is `f01b_i01o->01bf`). In a program compiled alone XLA's canonicalisation pass inserts the
transposes that make them canonical; inside a while loop -- every `lax.scan` -- it does not, and the
convolution falls back to a generic loop nest, 20-35x slower: that made scan epochs of convnets on CPU
unusable (results/bench_cpu/conv_options.md). Writing the transposes into the program ourselves makes
every convolution canonical wherever it is compiled, and lets the weight gradient use the YNNPACK kernel
even outside loops (faster than what the canonicalisation pass picks).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` (the models pass it to `nn.Conv`). It
is the same arithmetic: forward, gradients and training agree with the plain lowering to float rounding
(tests/test_fast_conv.py). Whether it is used is decided when a function is traced: "auto" uses it on
the CPU backend only, "on" everywhere, "off" never. The mode is the one of the innermost `using(mode)`
around the trace -- a Trainer traces its steps under its own (`step.Recipe.cpu_conv`, from
`config.train.cpu_conv`), so two experiments in one process keep theirs -- else the process default,
from the environment variable LTH_JAX_CPU_CONV ("auto" without it) or `set_mode`.
"""

import contextlib
import contextvars
import functools
import os

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax import lax

MODES = ("auto", "on", "off")
_mode = os.environ.get("LTH_JAX_CPU_CONV", "auto")   # the process default
_scoped = contextvars.ContextVar("lth_jax_cpu_conv", default=None)   # the innermost `using`'s mode


def _check(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"cpu_conv mode {mode!r}; allowed: {', '.join(MODES)}")


def set_mode(mode: str) -> None:
  """The process default: 'auto' (CPU backend only), 'on' or 'off', for functions traced after the call
  outside any `using`. lth_jax itself never sets it (its trainers trace under their own mode)."""
  global _mode
  _check(mode)
  _mode = mode


@contextlib.contextmanager
def using(mode: str | None):
  """Convolutions traced inside the block take `mode` ('auto', 'on', 'off'); None: the process default."""
  if mode is None:
    yield
    return
  _check(mode)
  token = _scoped.set(mode)
  try:
    yield
  finally:
    _scoped.reset(token)


def enabled() -> bool:
  """Whether a convolution traced now takes the canonical path."""
  mode = _scoped.get() or _mode
  return mode == "on" or (mode == "auto" and jax.default_backend() == "cpu")


def _inverse(perm):
  out = [0] * len(perm)
  for i, p in enumerate(perm):
    out[p] = i
  return tuple(out)


def _canonical_bind(lhs, rhs, *, dimension_numbers, **params):
  """One `conv_general_dilated_p` with its operands transposed to NHWC / HWIO and its output back."""
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  n = len(lhs_spec) - 2
  lhs_perm = (lhs_spec[0], *lhs_spec[2:], lhs_spec[1])      # batch, spatial..., feature
  rhs_perm = (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])      # spatial..., in, out
  out_canon = (0, n + 1, *range(1, n + 1))                  # NHWC as a spec: batch 0, feature last
  canon = lax.ConvDimensionNumbers(out_canon, (n + 1, n, *range(n)), out_canon)
  if (canon.lhs_spec, canon.rhs_spec, canon.out_spec) == (tuple(lhs_spec), tuple(rhs_spec), tuple(out_spec)):
    return lax.conv_general_dilated_p.bind(lhs, rhs, dimension_numbers=dimension_numbers, **params)
  transpose = lambda a, p: a if tuple(p) == tuple(range(a.ndim)) else lax.transpose(a, p)
  out = lax.conv_general_dilated_p.bind(transpose(lhs, lhs_perm), transpose(rhs, rhs_perm),
                                        dimension_numbers=canon, **params)
  # out is (batch, spatial..., feature); the caller's output has batch at out_spec[0], feature at
  # out_spec[1] and spatial dim i at out_spec[2 + i].
  where = (out_spec[0], *out_spec[2:], out_spec[1])   # axis of the caller's output each canonical axis is
  return transpose(out, _inverse(where))


def _eval(jaxpr, consts, *args):
  """Evaluates a (closed) jaxpr, every convolution in it -- nested ones included -- canonicalised."""
  env = {}
  read = lambda v: v.val if isinstance(v, jex.Literal) else env[v]
  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive is lax.conv_general_dilated_p:
      outs = [_canonical_bind(*invals, **eqn.params)]
    elif eqn.primitive.name in ("pjit", "jit") and "jaxpr" in eqn.params:
      closed = eqn.params["jaxpr"]
      outs = _eval(closed.jaxpr, closed.consts, *invals)
    else:
      outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(lhs, rhs, kwargs):
  return _canonical_call(lhs, rhs, kwargs)


def _canonical_call(lhs, rhs, kwargs):
  closed = jax.make_jaxpr(functools.partial(lax.conv_general_dilated, **dict(kwargs)))(lhs, rhs)
  return _eval(closed.jaxpr, closed.consts, lhs, rhs)[0]


def _conv_fwd(lhs, rhs, kwargs):
  return _canonical_call(lhs, rhs, kwargs), (lhs, rhs)


def _conv_bwd(kwargs, residuals, g):
  lhs, rhs = residuals
  kwargs = dict(kwargs)
  conv = functools.partial(lax.conv_general_dilated, **kwargs)
  if _by_rows(lhs, rhs, g, kwargs):   # JAX's rule for the input's gradient only; the kernel's by matmuls
    (d_lhs,) = _canonical_vjp(lambda x: conv(x, rhs), (lhs,), g)
    return d_lhs, _weight_grad_by_rows(lhs, g, rhs, kwargs)
  return tuple(_canonical_vjp(conv, (lhs, rhs), g))


def _canonical_vjp(fn, primals, g):
  """JAX's gradients of `fn` at `primals` for the cotangent g, every convolution in them canonical."""
  _, vjp = jax.vjp(fn, *primals)
  closed = jax.make_jaxpr(vjp)(g)
  return _eval(closed.jaxpr, closed.consts, g)


def _plain_2d(lhs, rhs, kwargs) -> bool:
  """An NHWC / HWIO 2-D convolution, ungrouped and undilated: what `_weight_grad_by_rows` computes."""
  ones = lambda v: v is None or all(d == 1 for d in v)
  return (lhs.ndim == 4 and kwargs["feature_group_count"] == 1 and kwargs["batch_group_count"] == 1
          and ones(kwargs["lhs_dilation"]) and ones(kwargs["rhs_dilation"])
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs["dimension_numbers"])
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))


def _by_rows(lhs, rhs, g, kwargs) -> bool:
  """Whether the weight gradient goes by kernel-row matmuls: where that measured faster on XLA:CPU.

  XLA's own weight-gradient convolution is slow for few input channels, strided windows and wide
  layers on large maps (Conv-6's 64->64 at 32x32: 958 ms vs 144 ms, batch 64) and as fast or faster
  elsewhere (ResNet-20's 16->16 at 32x32: 18 vs 28 ms); results/bench_cpu/conv_options.md, section 6.
  """
  if not _plain_2d(lhs, rhs, kwargs):
    return False
  c_in, c_out = rhs.shape[2], rhs.shape[3]
  strided = any(s != 1 for s in (kwargs["window_strides"] or (1, 1)))
  return c_in < 8 or strided or (c_in * c_out >= 64 * 64 and g.shape[1] * g.shape[2] >= 32 * 32)


def _weight_grad_by_rows(lhs, g, rhs, kwargs):
  """d(loss)/d(kernel) of an NHWC / HWIO convolution, one matmul per kernel row.

  dW[i, j, c, o] = sum over n, h, w of x_pad[n, h * s + i, w * s + j, c] * g[n, h, w, o]. For kernel row
  i the kw windows' inputs are laid side by side on the channel axis (kw times the input's memory, not
  kh * kw as whole im2col) and contracted with g over (n, h, w) by one matmul.
  """
  (kh, kw), strides = rhs.shape[:2], kwargs["window_strides"] or (1, 1)
  padding = kwargs["padding"]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), strides, padding)
  x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  n, out_h, out_w, c_out = g.shape
  g2 = g.reshape(-1, c_out)
  rows = []
  for i in range(kh):
    windows = [lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1,
                                            x.shape[3]), (1, strides[0], strides[1], 1)) for j in range(kw)]
    cols = jnp.concatenate(windows, axis=-1).reshape(-1, kw * x.shape[3])
    rows.append(lax.dot_general(cols, g2, (((0,), (0,)), ((), ())), precision=kwargs["precision"],
                                preferred_element_type=jnp.float32))
  return jnp.stack(rows).reshape(rhs.shape).astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides=None, padding="VALID", lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, on the canonical path when `enabled()` (see the module docstring)."""
  kwargs = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                precision=precision, preferred_element_type=preferred_element_type)
  if not enabled():
    return lax.conv_general_dilated(lhs, rhs, **kwargs)
  hashable = tuple((k, _freeze(v)) for k, v in kwargs.items())
  return _conv(lhs, rhs, hashable)


def _freeze(v):
  """kwargs as a hashable static argument (padding and strides may come as lists)."""
  if isinstance(v, lax.ConvDimensionNumbers):
    return v
  if isinstance(v, (list, tuple)):
    return tuple(_freeze(x) for x in v)
  return v
