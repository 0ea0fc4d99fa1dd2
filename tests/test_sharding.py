"""Data-parallel training over 4 (simulated CPU) devices gives the 1-device numbers within float tolerance."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import slow

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, jax, numpy as np
from lth_jax import experiment
from lth_jax.config import base
from lth_jax.methods import common
from tests.helpers import drive, oneshot

def run(num_devices, model):
  c = base()
  c.data.name, c.data.n_samples = "moons", 600
  if model == "resnet":   # BatchNorm statistics must be global-batch statistics on every device
    c.data.name, c.data.subset = "digits", 256
    c.model = type(c.model)({"name": "resnet20", "width": 4})
    c.data.augment = "crop_flip"
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size, c.train.log_every = 2, 32, 64, 0
  c.train.num_devices = num_devices
  c.metrics.ood = ()
  if model == "resnet":
    # A small learning rate: with BatchNorm on 8x8 inputs, 1e-7 differences in reduction order grow fast.
    c.train.epochs, c.optimizer.lr = 1, 0.005
  exp = experiment.build(c)
  out = []
  dense = drive(common.dense(exp, lambda r, s, p: out.append((r, s))))
  if model == "mlp":
    oneshot(exp, dense, 0.7, lambda r, s, p: out.append((r, s)), reset="rewind")
  final = out[-1][1]
  leaves = [np.asarray(x).ravel() for x in jax.tree.leaves((final.params, final.batch_stats))]
  return {"mesh": None if exp.mesh is None else exp.mesh.size, "acc": [r.test_accuracy for r, _ in out],
          "loss": [row["train_loss"] for r, _ in out for row in r.curve],
          "params": np.concatenate(leaves).tolist(),
          "kept": int(sum(np.asarray(m).sum() for m in jax.tree.leaves(final.masks)))}

print(json.dumps({m: [run(1, m), run(4, m)] for m in ("mlp", "resnet")}))
"""


@slow
def test_four_devices_match_one_device():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  for model, (one, four) in results.items():
    assert one["mesh"] is None and four["mesh"] == 4
    assert one["kept"] == four["kept"]
    if model == "mlp":   # the ResNet barely trains in one epoch: its accuracy is too close to chance to compare
      assert max(abs(a - b) for a, b in zip(one["acc"], four["acc"])) <= 0.01
    assert max(abs(a - b) for a, b in zip(one["loss"], four["loss"])) < 1e-3, model
    assert max(abs(a - b) for a, b in zip(one["params"], four["params"])) < 1e-3, model


TICKETS_SCRIPT = r"""
import json, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from lth_jax import masks, models, pruning
from lth_jax.config import base
from lth_jax.training import trainer as train

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype(np.float32)
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
model = models.get("mlp", num_classes=2, widths=(32, 16))
params = model.init(jax.random.key(0), x[:1])["params"]
tickets = [pruning.magnitude(params, masks.init(params), 0.5),
           pruning.random(params, masks.init(params), 0.8, key=jax.random.key(5))]

def run(mesh, which):
  trainer = train.Trainer(model, base().optimizer, batch_size=32, steps_per_epoch=8, epochs=2,
                          eval_batch_size=64, mesh=mesh)
  put = (lambda a: a) if mesh is None else (lambda a: jax.device_put(a, NamedSharding(mesh, PartitionSpec())))
  data = {"train": (put(x), put(y)), "val": (put(x[:64]), put(y[:64])), "test": (put(x[64:128]), put(y[64:128]))}
  states = [trainer.init_state(params, {}, tickets[i], jax.random.key(i)) for i in which]
  # where each device's part of the stacked weights lies after an epoch: which tickets it holds
  held = None
  if len(which) > 1:
    trained, _ = trainer.train_epoch(trainer._stack(states), *data["train"], batched=True)
    held = {s.device.id: list(range(4))[s.index[0]] for s in jax.tree.leaves(trained.params)[0].addressable_shards}
  states, histories = trainer.fit(states, data, 2, [str(i) for i in which])
  return {"held": held, "runs": [{"params": np.concatenate([np.asarray(p).ravel() for p in jax.tree.leaves(s.params)]).tolist(),
           "loss": [row["train_loss"] for row in h], "test": [row["test_accuracy"] for row in h]}
          for s, h in zip(states, histories)]}

separate = run(None, [0])["runs"] + run(None, [1])["runs"]
print(json.dumps({"separate": separate, "tickets": run(Mesh(np.array(jax.devices()[:4]).reshape(2, 2),
                                                            ("tickets", "data")), [0, 1])}))
"""


def test_tickets_split_over_a_mesh_axis_give_the_numbers_of_separate_runs():
  """Two tickets vmapped on a tickets=2,data=2 mesh of 4 (simulated CPU) devices: each ticket lives on its own
  two devices and trains to the numbers of its own run on one device."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-c", TICKETS_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  runs = json.loads(proc.stdout.strip().splitlines()[-1])
  # ticket i on row i of the mesh only, through a compiled epoch: no device holds both
  assert runs["tickets"]["held"] == {"0": [0], "1": [0], "2": [1], "3": [1]}
  for one, split in zip(runs["separate"], runs["tickets"]["runs"]):
    # float32 sums over 16 examples per device instead of 32 on one: rounding differences only
    assert max(abs(a - b) for a, b in zip(one["params"], split["params"])) < 1e-5
    assert max(abs(a - b) for a, b in zip(one["loss"], split["loss"])) < 1e-5
    assert one["test"] == split["test"]
