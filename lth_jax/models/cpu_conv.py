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
(tests/test_fast_conv.py). Whether it is used is decided when a function is traced (`set_mode`, from
`config.train.cpu_conv`, or the environment variable LTH_JAX_CPU_CONV for the default): "auto" uses it on
the CPU backend only, "on" everywhere, "off" never.
"""

import functools
import os

import jax
import jax.extend.core as jex
from jax import lax

MODES = ("auto", "on", "off")
_mode = os.environ.get("LTH_JAX_CPU_CONV", "auto")   # the default; config.train.cpu_conv sets it per run


def set_mode(mode: str) -> None:
  """'auto' (CPU backend only), 'on' or 'off'. Applies to functions traced after the call."""
  global _mode
  if mode not in MODES:
    raise ValueError(f"cpu_conv mode {mode!r}; allowed: {', '.join(MODES)}")
  _mode = mode


def enabled() -> bool:
  """Whether a convolution traced now takes the canonical path."""
  return _mode == "on" or (_mode == "auto" and jax.default_backend() == "cpu")


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
  _, vjp = jax.vjp(functools.partial(lax.conv_general_dilated, **dict(kwargs)), lhs, rhs)
  closed = jax.make_jaxpr(vjp)(g)
  return tuple(_eval(closed.jaxpr, closed.consts, g))


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
