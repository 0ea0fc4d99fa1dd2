"""The canonical-form convolutions (lth_jax.models.cpu_conv, the CPU default) give the plain lowering's numbers.

Forward, gradients and three masked training steps (one jitted step per batch, and one lax.scan) of a
small Conv-2 and a narrow ResNet-20 (stride-2 and 1x1 shortcut convolutions, BatchNorm) agree with
`lax.conv_general_dilated` as XLA lowers it, to float tolerance. No timing: what makes the scan fast is
checked structurally -- every convolution XLA compiles inside the scan is in the NHWC/HWIO form its
library kernels take.
"""

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, models, pruning
from lth_jax.config import base
from lth_jax.models import cpu_conv, resnet
from lth_jax.training import trainer as train
from tests.helpers import slow

RTOL = 1e-5
BATCH, STEPS = 8, 3


@pytest.fixture
def mode():
  """Sets cpu_conv's mode for the test and restores the previous one."""
  before = cpu_conv._mode
  yield cpu_conv.set_mode
  cpu_conv.set_mode(before)


def _close(a, b, rtol=RTOL):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    u, v = np.asarray(u), np.asarray(v)
    scale = max(np.abs(u).max(), 1e-30)
    assert np.abs(u - v).max() <= rtol * scale, (np.abs(u - v).max(), scale)


def _setup(name, size=8):
  if name == "resnet8":   # He et al.'s CIFAR ResNet at depth 8 (one basic block per stage): BatchNorm, projections
    model = resnet.cifar_resnet(8, num_classes=10, width=4, bottleneck=False)
  else:
    model = models.get(name, num_classes=10, **({"width": 4} if name == "resnet20" else {}))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((BATCH * STEPS, size, size, 3), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, BATCH * STEPS).astype(np.int32))
  variables = model.init(jax.random.key(0), x[:1])
  params = variables["params"]
  mask = pruning.magnitude(params, masks.init(params), 0.5, "global", masks.prunable(params))
  return model, x, y, variables, mask


def _run(name, loop):
  """Forward logits, parameter gradients and params after STEPS masked SGD steps, under the current mode."""
  model, x, y, variables, mask = _setup(name)

  def loss(params):
    logits = model.apply({**variables, "params": params}, x[:BATCH], train=False)
    return (jax.nn.log_softmax(logits) * jax.nn.one_hot(y[:BATCH], 10)).sum() / -BATCH, logits

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  opt = base().optimizer
  opt.name, opt.lr, opt.momentum, opt.schedule = "sgd", 0.05, 0.9, "constant"
  trainer = train.Trainer(model, opt, BATCH, STEPS, epochs=1, loop=loop)
  state = trainer.init_state(variables["params"], variables.get("batch_stats", {}), mask, jax.random.key(1))
  state, _ = trainer.train_epoch(state, x, y)
  return {"loss": value, "logits": logits, "grads": grads, "params": state.params,
          "batch_stats": state.batch_stats}


@pytest.mark.parametrize("name,loop", [("conv2", "steps"), pytest.param("resnet8", "scan", marks=slow),
                                       pytest.param("resnet20", "steps", marks=slow),
                                       pytest.param("resnet20", "scan", marks=slow)])
def test_same_numbers_as_plain_lowering(mode, name, loop):
  mode("off")
  plain = _run(name, loop)
  mode("on")
  fast = _run(name, loop)
  for key in plain:
    _close(plain[key], fast[key])


@pytest.mark.parametrize("dn,strides,padding", [(("NHWC", "HWIO", "NHWC"), (2, 2), ((1, 1), (1, 1))),
                                                (("NCHW", "OIHW", "NCHW"), (1, 1), "SAME"),
                                                (("NHWC", "HWIO", "NHWC"), (2, 2), "VALID")])
def test_other_layouts_and_vmap(mode, dn, strides, padding):
  """Any dimension numbers, and vmapped over tickets (what train.vmap runs), agree as well."""
  mode("on")
  rng = np.random.default_rng(0)
  c_in, c_out = 5, 7
  x = jnp.asarray(rng.standard_normal((4, 9, 9, c_in), dtype=np.float32))
  w = jnp.asarray(rng.standard_normal((2, 3, 3, c_in, c_out), dtype=np.float32))   # two tickets' kernels
  if dn[0] == "NCHW":
    x, w = x.transpose(0, 3, 1, 2), w.transpose(0, 4, 3, 1, 2)

  def loss(conv, w, x):
    return jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn)).sum()
  grad = lambda conv: jax.jit(jax.vmap(jax.value_and_grad(functools.partial(loss, conv), (0, 1)), (0, None)))
  _close(grad(jax.lax.conv_general_dilated)(w, x), grad(cpu_conv.conv_general_dilated)(w, x))


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3), (1, 1), "SAME"), ((3, 3), (2, 2), "SAME"),
                                                     ((3, 2), (2, 1), ((0, 1), (1, 0))), ((1, 1), (2, 2), "VALID"),
                                                     ((3, 3), (1, 1), "VALID")])
def test_weight_gradient_by_rows_is_the_convolutions(kernel, strides, padding):
  """The kernel-row matmuls give the weight gradient JAX's own rule gives, for any padding and stride."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 9, 8, 4), dtype=np.float32))
  w = jnp.asarray(rng.standard_normal((*kernel, 4, 6), dtype=np.float32))
  kwargs = dict(window_strides=strides, padding=padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None)
  out, vjp = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, **kwargs), w)
  g = jnp.asarray(rng.standard_normal(out.shape, dtype=np.float32))
  _close(vjp(g)[0], cpu_conv._weight_grad_by_rows(x, g, w, kwargs))


def test_weight_gradient_by_rows_where_measured_faster(mode):
  """Few input channels, strides and wide layers on large maps go by rows; ResNet-20's 16->16 does not."""
  mode("on")
  kwargs = lambda strides: dict(window_strides=strides, padding="SAME", lhs_dilation=None, rhs_dilation=None,
                                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=1,
                                batch_group_count=1, precision=None, preferred_element_type=None)
  by_rows = lambda hw, c_in, c_out, s=1: cpu_conv._by_rows(
      jnp.zeros((2, hw, hw, c_in)), jnp.zeros((3, 3, c_in, c_out)), jnp.zeros((2, hw // s, hw // s, c_out)),
      kwargs((s, s)))
  assert by_rows(32, 3, 64) and by_rows(32, 64, 64) and by_rows(32, 16, 32, s=2)
  assert not by_rows(32, 16, 16) and not by_rows(8, 256, 256) and not by_rows(16, 128, 128)
  # and the gradient a model takes uses it: one matmul per kernel row, no weight-gradient convolution
  x, w = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 4))
  grad = jax.make_jaxpr(jax.grad(lambda w: cpu_conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()))(w)
  assert str(grad).count("dot_general") == 3


def test_scan_compiles_only_canonical_convolutions(mode):
  """Inside a lax.scan XLA:CPU leaves non-canonical convolutions to a generic loop nest (20-35x slower)."""
  # 32x32 images: on smaller ones ResNet-20's last stage is 2x2, under its 3x3 kernels, and XLA's
  # algebraic simplifier swaps such a convolution's operands into another form on purpose.
  model, x, y, variables, mask = _setup("resnet20", size=32)

  def epoch(params, xs):
    def body(p, xb):
      g = jax.grad(lambda p: model.apply({**variables, "params": p}, xb, train=False).sum())(p)
      return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), None
    return jax.lax.scan(body, params, xs)[0]

  xs = x.reshape(STEPS, BATCH, *x.shape[1:])
  # a fresh function each time: jit's trace cache would otherwise keep the first mode's program
  labels = lambda: set(re.findall(r"convolution\(.*?dim_labels=([^,\s]+)",
                                  jax.jit(lambda *a: epoch(*a)).lower(variables["params"], xs).compile().as_text()))
  mode("on")
  assert labels() == {"b01f_01io->b01f"}
  mode("off")   # the reason for the module: if XLA canonicalises inside loops one day, this says so
  assert labels() - {"b01f_01io->b01f"}, "XLA now canonicalises convolutions inside loops: cpu_conv may go"


def test_modes(mode):
  mode("auto")
  assert cpu_conv.enabled() == (jax.default_backend() == "cpu")
  with pytest.raises(ValueError):
    cpu_conv.set_mode("fast")
  env = {**os.environ, "LTH_JAX_CPU_CONV": "off", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", "from lth_jax.models import cpu_conv; print(cpu_conv.enabled())"],
                       env=env, capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.strip() == "False"
