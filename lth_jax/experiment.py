"""Everything a method needs, built once from the config: data on device, model, initial weights, trainers."""

import dataclasses
import fnmatch
import functools
import time
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lth_jax import checks
from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import evaluation
from lth_jax import methods
from lth_jax import models
from lth_jax import training
from lth_jax import user_code
from lth_jax.data import augment, download, lazy, pixels, stream
from lth_jax.errors import UserError, check
from lth_jax.sparsity import criteria
from lth_jax.sparsity import distribution
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import select
from lth_jax.training import state as state_lib
from lth_jax.training import step

# "auto": 8-bit images live on the device as uint8 and are normalised inside jit; "float32": every data set
# is normalised on the host and lives on the device as float32 (4x the memory for images, same numbers).
DEVICE_DTYPES = ("auto", "float32")


def validate(config: ml_collections.ConfigDict) -> None:
  """Reject values no run can use, naming the key and what is allowed; every method checks its own section."""
  checks.validate(config)
  parse_layer_scale(config.prune.layer_scale)
  check(not config.prune.layer_scale or config.prune.scope == "layerwise",
        f"config.prune.layer_scale={tuple(config.prune.layer_scale)} scales each layer's own rate: it needs "
        f"config.prune.scope='layerwise', not {config.prune.scope!r}")
  check(bool(str(config.workdir).strip()), "config.workdir is empty; name a directory for the results, e.g. "
        "--config.workdir=runs/mine (an empty value would write into the current directory)")
  kinds = ("scope",) + distribution.KINDS
  check(config.prune.distribution in kinds,
        f"config.prune.distribution={config.prune.distribution!r}; allowed: {', '.join(kinds)}")
  check(config.prune.distribution == "scope" or not config.prune.layer_scale,
        "config.prune.layer_scale needs config.prune.distribution='scope' (use prune.layer_sparsity with 'map')")
  parse_layer_sparsity(config.prune.layer_sparsity)
  check(config.replicates >= 1, f"config.replicates={config.replicates} must be >= 1")
  check(config.prune.criterion in criteria.names(),
        f"config.prune.criterion={config.prune.criterion!r}; allowed: {', '.join(criteria.names())}")
  check(config.prune.scope in select.SCOPES,
        f"config.prune.scope={config.prune.scope!r}; allowed: {', '.join(select.SCOPES)}")
  check(0.0 <= config.prune.sparsity < 1.0, f"config.prune.sparsity={config.prune.sparsity} must be in [0, 1)")
  check(config.train.loop in training.LOOPS,
        f"config.train.loop={config.train.loop!r}; allowed: {', '.join(training.LOOPS)}")
  check(config.train.cpu_conv in models.cpu_conv.MODES,
        f"config.train.cpu_conv={config.train.cpu_conv!r}; allowed: {', '.join(models.cpu_conv.MODES)}")
  check(config.train.compute_dtype in step.COMPUTE_DTYPES,
        f"config.train.compute_dtype={config.train.compute_dtype!r}; allowed: {', '.join(step.COMPUTE_DTYPES)}")
  augment.get(config.data.augment)   # the name is known
  stream.choose(config.data.pipeline, 0, config.data.device_budget_mb)   # the pipeline is known
  check(config.data.device_dtype in DEVICE_DTYPES,
        f"config.data.device_dtype={config.data.device_dtype!r}; allowed: {', '.join(DEVICE_DTYPES)}")
  check(config.train.eval_every >= 1, f"config.train.eval_every={config.train.eval_every} must be >= 1")
  check(config.train.steps >= 0, f"config.train.steps={config.train.steps} must be >= 0 (0: train.epochs)")
  check(config.train.eval_every_steps >= 0,
        f"config.train.eval_every_steps={config.train.eval_every_steps} must be >= 0 (0: train.eval_every epochs)")
  check(config.train.best_by in evaluation.BEST_BY,
        f"config.train.best_by={config.train.best_by!r}; allowed: {', '.join(evaluation.BEST_BY)}")
  check(config.checkpoint.every >= 1 and config.checkpoint.keep >= 1,
        "config.checkpoint.every and config.checkpoint.keep must be >= 1")
  check(isinstance(config.prune.from_best, bool),
        f"config.prune.from_best={config.prune.from_best!r}; allowed: True, False")
  check(not config.prune.from_best or config.data.val_fraction > 0,
        "config.prune.from_best needs a validation split: set config.data.val_fraction > 0")
  check(0 <= config.prune.rewind_epoch < config.train.epochs,
        f"config.prune.rewind_epoch={config.prune.rewind_epoch} must be in [0, config.train.epochs)")
  check(config.finetune.schedule in state_lib.SCHEDULES,
        f"config.finetune.schedule={config.finetune.schedule!r}; allowed: {', '.join(state_lib.SCHEDULES)}"
        " (step uses config.optimizer.milestones)")
  download.validate(config.data)
  methods.validate(config)


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict:
  """config.model's options for models.get. A key the model does not take is dropped while it holds its
  default (`--config.model.name=resnet20` on a config made for the MLP); set to anything else, it is refused."""
  defaults, taken = config_lib.base().model.to_dict(), models.keys(model_config.name)
  return {k: v for k, v in models.config_kwargs(model_config).items() if k in taken or v != defaults.get(k)}


def model_arguments(model: dict) -> dict:
  """Everything the model of `model` (config.model as config.json holds it) is built from: its name, the
  keys that apply to it (`model_kwargs`) and its builder's defaults for the others. Two configs build the
  same model exactly when these are equal, whichever model keys each happens to list."""
  name = model.get("name", config_lib.base().model.name)
  if name not in models.names() and not user_code.is_import_path(name):   # no longer registered: as written
    return dict(model)
  as_config = ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
  return {"name": name, **models.defaults(name), **model_kwargs(as_config)}


def parse_layer_scale(entries) -> dict[str, float]:
  """Per-layer pruning-rate factors from the config: ("output/*=0.5",) -> {"output/*": 0.5}."""
  return _parsed("config.prune.layer_scale", distribution.parse_pattern_map, entries, "FACTOR")


def parse_layer_sparsity(entries) -> dict[str, float]:
  """Per-layer sparsities from the config (config.prune.layer_sparsity): ("output/*=0.5",) -> {"output/*": 0.5}."""
  return _parsed("config.prune.layer_sparsity", distribution.parse_map, entries)


def _parsed(key: str, parse, *args):
  """parse(*args), its ValueError (which speaks of an entry) as a UserError naming the config key."""
  try:
    return parse(*args)
  except ValueError as e:
    raise UserError(f"{key} {e}") from None


@dataclasses.dataclass(eq=False)
class Experiment:
  config: ml_collections.ConfigDict
  data: dict                 # split -> (x, y) on the device, or a stream.Split on the host (data.pipeline);
  #                            x uint8 pixels or float model inputs (`inputs`)
  num_classes: int
  model: Any
  init_params: Any           # theta_0: what lottery tickets rewind to
  init_batch_stats: Any
  which: Any                 # bool pytree of prunable leaves
  layer_scale: dict          # leaf-name pattern -> factor on the layer-wise pruning rate
  raw_test: tuple            # (x, y) test split before normalisation (numpy; images as floats in [0, 1], or a
  #                            lazy.LazyImages: index it, then pixels.to_float)
  normalizer: pixels.Normalizer   # per-channel mean / std of the training inputs
  mesh: Any = None           # jax.sharding.Mesh over the devices in use; None for one device
  store: Any = None          # checkpoint.SegmentStore; None: no checkpoints (library use, tests)
  replica: int = 0           # replicate i runs under seed config.seed + i (see `replicate`)
  family: Any = None         # the replica-0 experiment whose data, trainers and held-out sets it shares
  # compiled trainers by what sets them apart (`trainer`, `cached`); one dict per family, so replicates
  # share them and they go with the experiment
  trainers: dict = dataclasses.field(default_factory=dict, repr=False)

  def normalize(self, x) -> np.ndarray:
    """Inputs as the model sees them, on the host: what OOD and corrupted sets go through too."""
    return self.normalizer.host(x)

  def inputs(self, x) -> jax.Array:
    """Model inputs of some of `data`'s x (uint8 pixels are normalised as the compiled steps do)."""
    return self.normalizer(jnp.asarray(x))

  def key(self, purpose: str) -> jax.Array:
    """A key per purpose, so a run's randomness does not depend on which runs came before it."""
    return jax.random.fold_in(jax.random.key(self.seed), zlib.crc32(purpose.encode()))

  @property
  def seed(self) -> int:
    return self.config.seed + self.replica

  @property
  def model_kwargs(self) -> dict:
    """config.model as `model` was built from it: another model's keys at their defaults left out."""
    return model_kwargs(self.config.model)

  def replicate(self, i: int) -> "Experiment":
    """The same experiment under seed config.seed + i: its own theta_0, data order and every other key.

    The data (split and subset drawn with config.seed) and the held-out evaluation sets stay those of
    this experiment, and so do its trainers (the same `trainers` dict): equal trainers are what lets
    their training run as one vmapped program (lth_jax.methods.cohort).
    """
    if i == self.replica:
      return self
    base = self.family or self
    other = dataclasses.replace(base, replica=i, family=base)
    other.init_params, other.init_batch_stats = other.init_variables(other.key("init"))
    other.__dict__["evaluator"] = base.evaluator.for_experiment(other)   # the cached_property's slot
    return other

  @property
  def n_train(self) -> int:
    return int(self.data["train"][0].shape[0])

  @property
  def steps_per_epoch(self) -> int:
    """Iterations in an epoch of the training split: what every trainer of this experiment takes."""
    return training.steps_per_epoch(self.n_train, self.config.train.batch_size)

  def init_variables(self, key):
    variables = self.model.init(key, self.inputs(self.data["train"][0][:1]), train=False)
    return variables["params"], variables.get("batch_stats", {})

  @functools.cached_property
  def evaluator(self):
    return evaluation.Evaluator(self)

  @property
  def restored_s(self) -> float:
    """Seconds of training read back from checkpoints so far: what those epochs took when they ran."""
    return self.store.credited_s if self.store is not None else 0.0

  def now(self) -> float:
    """time.time() plus `restored_s`: `started = exp.now()` ... `exp.now() - started` times a resumed run as
    the work it holds, not as its read-back."""
    return time.time() + self.restored_s

  def record(self, state, history: list, method: str, round_: int, dense_accuracy: float | None,
             before: float | None, started: float, trainer=None) -> methods.RunRecord:
    """The run's RunRecord, every figure evaluated (lth_jax.evaluation.record)."""
    return evaluation.record(self, state, history, method, round_, dense_accuracy, before, started, trainer)

  def cached(self, key, build: Callable[[], Any]):
    """build() the first time `key` (hashable) is asked for by this experiment or a replicate; then the same."""
    if key not in self.trainers:
      self.trainers[key] = build()
    return self.trainers[key]

  def trainer(self, epochs: int, finetune: bool = False, model=None, mask_update=None) -> training.Trainer:
    """`new_trainer`'s trainer, built once per experiment family and arguments."""
    return self.cached(("trainer", epochs, finetune, model, mask_update),
                       lambda: self.new_trainer(epochs, finetune, model, mask_update))

  def new_trainer(self, epochs: int, finetune: bool = False, model=None, mask_update=None) -> training.Trainer:
    """A trainer whose schedule spans `epochs`; `finetune` swaps in config.finetune's lr and schedule.

    `model` (default: exp.model) trains another network on the same data, e.g. one rebuilt narrower.
    `mask_update` (hashable; equal ones share the trainer): see lth_jax.training.step.Recipe.
    """
    opt = ml_collections.ConfigDict(self.config.optimizer.to_dict())
    if finetune:
      opt.lr = self.config.finetune.lr or opt.lr
      opt.schedule, opt.warmup_epochs = self.config.finetune.schedule, 0
    return training.Trainer(self.model if model is None else model, opt, self.config.train.batch_size,
                            self.steps_per_epoch, epochs,
                            self.config.train.eval_batch_size, augment.get(self.config.data.augment), self.mesh,
                            store=self.store, eval_every=self.config.train.eval_every,
                            eval_every_steps=self.config.train.eval_every_steps,
                            test_at_best_only=self.config.train.test_at_best_only, best_by=self.config.train.best_by,
                            last_step=(self.config.train.steps or None) if epochs == self.config.train.epochs else None,
                            loop=self.config.train.loop, compute_dtype=self.config.train.compute_dtype,
                            which=self.which if model is None else None,
                            mask_update=mask_update, normalize=self.normalizer,
                            cpu_conv=self.config.train.cpu_conv)


MESH_AXES = (training.trainer.TICKETS, "data")


def mesh_shape(spec: str) -> dict:
  """{axis: size} of config.train.mesh, e.g. "tickets=2,data=2" -> {"tickets": 2, "data": 2}; {} for ""."""
  shape = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    axis, _, size = part.partition("=")
    check(axis in MESH_AXES and axis not in shape and size.isdigit() and int(size) >= 1,
          f"config.train.mesh={spec!r} must be AXIS=SIZE pairs separated by commas, each axis once, from "
          f"{', '.join(MESH_AXES)}, sizes >= 1, e.g. 'data=4' or 'tickets=2,data=2'")
    shape[axis] = int(size)
  return shape


def device_mesh(train_config) -> jax.sharding.Mesh | None:
  """The mesh config.train.mesh names, or one "data" axis over `train.num_devices` devices (0 = all); None
  when that is one device. A "tickets" axis of size > 1 splits the vmapped tickets (train.vmap) over it.

  With `train.distributed` the mesh spans every process's devices (after jax.distributed.initialize).
  """
  available = jax.devices() if train_config.distributed else jax.local_devices()
  shape = mesh_shape(train_config.mesh)
  check(not (shape and train_config.num_devices), f"config.train.mesh={train_config.mesh!r} names the devices "
        f"used; leave config.train.num_devices at 0 (it is {train_config.num_devices})")
  tickets, n = shape.get(training.trainer.TICKETS, 1), shape.get("data", 1)
  if not shape:
    n = train_config.num_devices or len(available)
  check(tickets == 1 or train_config.vmap, f"config.train.mesh={train_config.mesh!r} splits vmapped tickets; "
        "set config.train.vmap=True too, or drop the tickets axis")
  key = "config.train.mesh" if shape else "config.train.num_devices"
  check(1 <= tickets * n <= len(available),
        f"{key}={train_config.mesh if shape else train_config.num_devices!r} needs {tickets * n} devices; "
        f"{len(available)} devices are available")
  check(train_config.batch_size % n == 0 and train_config.eval_batch_size % n == 0,
        f"config.train.batch_size={train_config.batch_size} and eval_batch_size={train_config.eval_batch_size} "
        f"must be multiples of the {n} devices a batch is split over ({key})")
  if tickets > 1:
    return jax.sharding.Mesh(np.array(available[:tickets * n]).reshape(tickets, n), MESH_AXES)
  return jax.sharding.Mesh(np.array(available[:n]), ("data",)) if n > 1 else None


def _on_devices(x: np.ndarray, mesh) -> jax.Array:
  """A copy of `x` on every device of `mesh` (one device without a mesh).

  make_array_from_callback also works across processes, where each host holds the same data.
  """
  if mesh is None:
    return jnp.asarray(x)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def build(config: ml_collections.ConfigDict) -> Experiment:
  validate(config)
  dataset = data_lib.load(config.data, config.seed)
  splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
  check_val_split(config.data, dataset)
  # Images decoded on demand (data.image_size): statistics from a sample, the test split left undecoded.
  on_demand = isinstance(dataset.train[0], lazy.LazyImages)
  x_stats = dataset.train[0].sample(lazy.STATISTICS_EXAMPLES, config.seed) if on_demand else dataset.train[0]
  normalizer = pixels.Normalizer(*pixels.statistics(x_stats, config.data.standardize))
  model = models.get(config.model.name, num_classes=dataset.num_classes, input_shape=dataset.input_shape,
                     **model_kwargs(config.model))
  raw_test = (dataset.test[0] if on_demand else pixels.to_float(dataset.test[0]), dataset.test[1])
  exp = Experiment(config, {}, dataset.num_classes, model, None, None, None,
                   parse_layer_scale(config.prune.layer_scale), raw_test, normalizer)
  exp.mesh = device_mesh(config.train)
  if config.train.steps:   # the resolved length, which config.json records and every method reads
    config.train.epochs = -(-config.train.steps // training.steps_per_epoch(len(dataset.train[1]),
                                                                            config.train.batch_size))
  # memory: the whole data set goes to the device(s) once; batches are gathered from it inside jit. stream:
  # it stays on the host and the trainer feeds it batch by batch. 8-bit images go as uint8 and are
  # normalised inside jit either way (data.device_dtype=float32: normalised here).
  keep_pixels = config.data.device_dtype == "auto"
  inputs = {k: (x if keep_pixels and x.dtype == np.uint8 else exp.normalize(x), np.asarray(y, np.int32))
            for k, (x, y) in splits.items()}
  nbytes = sum(x.nbytes + y.nbytes for x, y in inputs.values())
  if on_demand or stream.choose(config.data.pipeline, nbytes, config.data.device_budget_mb) == "stream":
    exp.data = {k: stream.Split(x, y) for k, (x, y) in inputs.items()}
  else:
    exp.data = {k: (_on_devices(x, exp.mesh), _on_devices(y, exp.mesh)) for k, (x, y) in inputs.items()}
  if config.data.augment != "none":
    check(exp.data["train"][0].ndim == 4,
          f"config.data.augment={config.data.augment!r} needs images (N, H, W, C); {config.data.name!r} is not")
  exp.init_params, exp.init_batch_stats = init_for_data(exp)
  check_patterns(config, exp.init_params)
  exp.which = masks_lib.prunable(exp.init_params, tuple(config.prune.exclude))
  if config.prune.distribution == "uniform_first_dense":   # RigL's uniform: the first layer stays dense, unmasked
    first = distribution.first_layer(exp.init_params, exp.which)
    exp.which = masks_lib.prunable(exp.init_params, tuple(config.prune.exclude) + (first,))
  _, total = masks_lib.count(masks_lib.init(exp.init_params), exp.which)
  if total == 0:
    raise UserError(f"config.prune.exclude={tuple(config.prune.exclude)} leaves no prunable weights")
  if config.train.vmap and jax.default_backend() == "cpu" and any(w.ndim == 4 for w in jax.tree.leaves(exp.init_params)):
    logging.warning("config.train.vmap=True on the CPU: vmapped convolutions become grouped convolutions, which "
                    "XLA:CPU runs several times slower than training the states one after another (vmap=False)")
  check_ready(exp)
  return exp


def check_val_split(data_config, dataset) -> None:
  """The val split may be empty only when data.val_fraction=0 asks for no validation (train and test:
  data.check_sane)."""
  source = f"config.data.name={data_config.name!r}" + (f" ({data_config.dir})" if data_config.get("dir") else "")
  check(len(dataset.val[1]) > 0 or data_config.val_fraction == 0,
        f"the val split of {source} is empty: config.data.val_fraction={data_config.val_fraction} of "
        f"{len(dataset.train[1])} training examples rounds to none; raise it, or set 0 to train without validation")


def init_for_data(exp: Experiment):
  """theta_0 (params, batch_stats) of exp.model on exp.data's inputs; a model that cannot take their shape
  (a convolutional network on tabular data) is refused in one line."""
  try:
    return exp.init_variables(exp.key("init"))
  except UserError:
    raise
  except (TypeError, ValueError, ZeroDivisionError) as e:
    x, config = exp.data["train"][0], exp.config
    need = " (a convolutional network needs images (N, H, W, C))" if x.ndim != 4 else ""
    raise UserError(f"config.model.name={config.model.name!r} cannot take the inputs of config.data.name="
                    f"{config.data.name!r}, of shape {tuple(x.shape[1:])}{need}: {str(e).splitlines()[0]}") from None


def check_patterns(config, params) -> None:
  """Every leaf-name pattern of config.prune matches a parameter of the model: one that matches none (a
  typo, another model's layer) would change nothing, silently."""
  names = [name for name, _ in masks_lib.named_leaves(params)]
  for key, patterns in (("exclude", config.prune.exclude), ("layer_scale", parse_layer_scale(config.prune.layer_scale)),
                        ("layer_sparsity", distribution.parse_map(config.prune.layer_sparsity))):
    for pattern in patterns:
      check(any(fnmatch.fnmatch(name, pattern) for name in names),
            lambda: f"config.prune.{key} holds {pattern!r}, which matches no parameter of config.model.name="
            f"{config.model.name!r}; its parameters: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")


def check_ready(exp: Experiment) -> None:
  """Build now what would otherwise first be built after the dense network has trained, so its errors
  come before any epoch and before the workdir records the config: the trainers (optimizer, schedules,
  batch size against the training set) and the evaluator's held-out sets (config.metrics)."""
  # Uncached: the trainers a run keeps are made once `exp.store` is set (after the workdir is checked).
  exp.new_trainer(exp.config.train.epochs)
  exp.new_trainer(exp.config.train.epochs, finetune=True)
  exp.evaluator  # noqa: B018  -- a cached property: built here, used by every record
  methods.common.rewind_step(exp)   # config.prune.rewind_step inside the dense run
  methods.common.check_pattern_fits(exp)   # config.prune.pattern's m divides every pruned layer's inputs
  methods.check_sizes(exp)

