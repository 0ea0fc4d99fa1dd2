"""The command line's work: run the configured method, save every ticket, write the reports.

User errors (lth_jax.errors.UserError, bad flags) print one line and exit with status 2.
"""

import dataclasses
import errno
import os
import shlex
import socket
import sys
import time

import jax
import ml_collections
from absl import flags
from absl import logging
from ml_collections import config_flags

from lth_jax import checks
from lth_jax import config as config_lib
from lth_jax import evaluation
from lth_jax import experiment
from lth_jax import methods
from lth_jax import models
from lth_jax import report
from lth_jax import user_code
from lth_jax.errors import UserError
from lth_jax.methods import structured
from lth_jax.training import checkpoint
from lth_jax.training import resume
from lth_jax.training import tensorboard


def fail(message: str):
  print(f"lth_jax: error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv, flag_values: flags.FlagValues = flags.FLAGS):
  """absl's parser, but a bad flag or config key ends in one line and exit status 2."""
  try:
    return flag_values(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])


def define_config(argv, default: str, flag_values: flags.FlagValues = flags.FLAGS):
  """The --config flag (a config file, `--config.a.b=value` overrides), once `check_config_argv` passed argv.

  New attributes are accepted because check_config_argv lets through only the keys of the model
  selected on the command line, which the config file need not have (`--config.model.name=resnet20
  --config.model.width=4` on configs/default.py); every other unknown key was refused there.
  """
  check_config_argv(argv, default)
  return config_flags.DEFINE_config_file("config", default, "Experiment config file.", flag_values=flag_values,
                                         lock_config=False, accept_new_attributes=True, sys_argv=argv)


def _config_path(argv, default: str) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return default


def check_config_argv(argv, default: str) -> None:
  """Fail in one line on a missing config file or a `--config.a.b` key the config does not have.

  ml_collections reports both with a traceback (the overrides are parsed when the flag is defined),
  so this runs before `DEFINE_config_file`. `--config.help` lists every key with its default and meaning.
  """
  if "--config.help" in argv:
    print(config_lib.describe())
    sys.exit(0)
  path = _config_path(argv, default).split(":", 1)[0]
  if not os.path.isfile(path):
    fail(f"--config={path!r}: no such config file (see configs/ for the experiments)")
  try:
    config = config_lib.from_file(path)
  except Exception as e:  # noqa: BLE001  -- any failure of the user's config file is reported, not traced
    fail(f"--config={path!r} could not be loaded: {type(e).__name__}: {e}")
  overrides = [arg[len("--config."):].split("=", 1) for arg in argv if arg.startswith("--config.")]
  model_keys = _model_keys(config, overrides)
  for name, *_ in overrides:
    keys = name.split(".")
    node = config
    for depth, key in enumerate(keys):
      if keys[:depth] == ["model"] and depth == len(keys) - 1 and key in model_keys:
        break   # the selected model's own key, absent from a config made for another model
      if len(keys) == 3 and depth == 2 and keys[1] == "kwargs" and keys[0] in ("model", "data"):
        _check_own_argument(config, overrides, keys[0], key)
        break   # an argument of the user's own model or data source: any name
      if not hasattr(node, "keys") or key not in node:
        where = "config." + ".".join(keys[:depth + 1])
        allowed = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a group)"
        fail(f"{where} is not a config key; keys at this level: {allowed}")
      node = node[key]


def _selected(config, overrides, section: str):
  """config.<section>.name as the command line selects it (the last --config.<section>.name, else the file's)."""
  names = [value[0] for name, *value in overrides if name == f"{section}.name" and value]
  return names[-1] if names else config.get(section, {}).get("name")


def _model_keys(config, overrides) -> set[str]:
  """The keys of the model the command line selects."""
  name = _selected(config, overrides, "model")
  return models.keys(name) if name in models.names() else set()


def _check_own_argument(config, overrides, section: str, key: str) -> None:
  """--config.<section>.kwargs.<key> sets an argument of a model or data source given as "pkg.module:Name"."""
  name = _selected(config, overrides, section)
  if not user_code.is_import_path(name):
    fail(f"config.{section}.kwargs.{key}: config.{section}.kwargs holds the arguments of your own "
         f"{'model' if section == 'model' else 'data source'}, given as config.{section}.name='pkg.module:Name'; "
         f"config.{section}.name={name!r} is built in")


def prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(os.path.join(workdir, "tickets"), exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")   # processes may share the workdir
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"config.workdir={workdir!r} is not writable: {e.strerror}") from None


def execute(config, argv) -> None:
  """main.py's work once its flags are parsed: run the config; a user error, or a full / unwritable disk under
  the workdir, ends in one line and exit status 2 (any other failure is a bug and keeps its traceback)."""
  try:
    run(config, command_line(argv))
  except UserError as e:
    fail(str(e))
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
      raise
    where = f" ({e.filename})" if e.filename else ""   # a failed flush at close names no file
    fail(f"cannot write under config.workdir={config.workdir!r}: {e.strerror}{where}")


def run(config, command: str = "") -> list[dict]:
  """Run config.method; returns the run records also written to config.workdir/results.json.

  Re-running the same command with the same workdir resumes where the last run stopped.
  """
  if config.mode == "eval":
    return evaluate_ticket(config, command)
  if config.mode != "train":
    raise UserError(f"config.mode={config.mode!r}; allowed: train, eval")
  if config.restore:
    raise UserError("config.restore is read by --config.mode=eval; in train mode a rerun resumes from "
                    "config.workdir's checkpoints")
  checks.validate_distributed(config)   # before jax.distributed.initialize, which would fail with a traceback
  if config.train.distributed:
    initialize_distributed(config.train)
  report.environment()   # the commit and devices as the run starts
  exp = experiment.build(config)
  prepare_workdir(config.workdir)
  with resume.lock(config.workdir, _lock_name()):
    exp.store = resume.prepare(config, config_lib.base().to_dict(), experiment.model_arguments)
    checkpoint.sync("workdir prepared")   # no process writes a checkpoint while process 0 may still clear them
    return _train(exp, config, command)


def initialize_distributed(train) -> None:
  """jax.distributed.initialize with what config.train names; what it leaves empty comes from the environment
  ($JAX_COORDINATOR_ADDRESS) or the cluster (Slurm, Open MPI, TPU pods)."""
  kwargs = {"coordinator_address": train.coordinator or None,
            "num_processes": train.num_processes or None,
            "process_id": None if train.process_id < 0 else train.process_id,
            "initialization_timeout": train.coordinator_timeout_s}
  # CPU devices of different processes talk through gloo; without a CPU collectives implementation a
  # cross-process computation on CPU fails. It must be chosen before the backend starts.
  if str(jax.config.jax_cpu_collectives_implementation or "none") == "none":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  address = checks.coordinator_address(train)
  if address and train.process_id > 0:
    wait_for_coordinator(address, train.coordinator_timeout_s)
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:   # e.g. no coordinator given and no cluster to take one from
    raise UserError(f"config.train.distributed=True: jax.distributed.initialize failed ({str(e).splitlines()[0]}); "
                    "set config.train.coordinator=HOST:PORT, config.train.num_processes and config.train.process_id, "
                    "or run under a cluster manager (Slurm, Open MPI) that provides them") from None


def wait_for_coordinator(address: str, timeout_s: float, poll_s: float = 0.5) -> None:
  """Returns once the coordinator at `address` ("host:port") accepts a TCP connection; UserError after `timeout_s`.

  jax.distributed.initialize aborts the whole process (a C++ check failure, no Python exception) when it
  cannot reach the coordinator in time, so a process other than 0 looks for it first.
  """
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=max(poll_s, 0.1)):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise UserError(f"config.train.coordinator={address!r}: nothing accepted a connection there within "
                        f"{timeout_s} s (config.train.coordinator_timeout_s; {e.strerror or e}); start process 0 "
                        "first, or check the address and port") from None
      time.sleep(poll_s)


def _train(exp, config, command: str) -> list[dict]:
  """The training half of `run`, once the workdir is checked and locked."""
  logging.info("%s on %s (%d train / %d val / %d test) with %s on %s", config.method, config.data.name,
               exp.n_train, len(exp.data["val"][1]), len(exp.data["test"][1]), config.model.name,
               jax.devices()[0].platform)
  by_replicate = [[] for _ in range(config.replicates)]

  def recorder(replicate: int):
    seed = config.seed + replicate
    prefix = f"seed{seed}_" if config.replicates > 1 else ""

    def record(run: methods.RunRecord, state, rewind_params) -> None:
      mine = by_replicate[replicate]
      name = f"{prefix}{len(mine):02d}_{run.method}_r{run.round}_s{run.sparsity:.3f}"
      run = dataclasses.replace(run, seed=seed, ticket=os.path.join("tickets", name))
      # a shrunk network's full-width model and kept channels go beside its ticket: it reloads without the config
      checkpoint.save_ticket(os.path.join(config.workdir, "tickets", name), state, rewind_params,
                             ticket_metadata(run.extra))   # every process: Orbax coordinates the write
      mine.append(run.as_dict())
      if not checkpoint.is_primary():   # the other processes hold the same numbers; process 0 writes them
        return
      if config.log.tensorboard:   # the curve again, for TensorBoard: workdir/tensorboard/<ticket name>
        tensorboard.write_run(os.path.join(config.workdir, "tensorboard", name), run.curve)
      report.write_json(config.workdir, config, sum(by_replicate, []), complete=False, command=command,
                        timing=timing())
      logging.info("%s%-15s round %d  sparsity %.3f  test acc %.4f  (before retrain %s)  best epoch %s  ECE %.4f",
                   f"seed {seed}: " if prefix else "", run.method, run.round, run.sparsity, run.test_accuracy,
                   _fmt(run.accuracy_before_retrain), run.best_epoch, run.figures["ece"])
    return record

  started, restored = exp.now(), exp.restored_s

  def timing() -> dict:
    """The run's wall time so far and, of it, the training read back from checkpoints (`Experiment.now`)."""
    return {"wall_time_s": exp.now() - started, "restored_s": exp.restored_s - restored}

  methods.run([exp.replicate(i) for i in range(config.replicates)], [recorder(i) for i in range(config.replicates)])
  runs = sum(by_replicate, [])
  if not checkpoint.is_primary():
    return runs
  took = timing()
  report.write_all(config.workdir, config, runs, command, timing=took)
  print(report.markdown_table(runs))
  print(f"\n{len(runs)} runs in {took['wall_time_s']:.1f}s; results in {config.workdir}/results.md")
  return runs


def evaluate_ticket(config, command: str) -> list[dict]:
  """Evaluate a saved ticket (config.restore) without training: sparsity, accuracy and every metric.

  Writes results.json / results.md with one run (method "eval") and the masked weights as ticket.npz.
  A shrunk ticket (slimming, early_bird) is evaluated as the network saved with it (`ticket_model`).
  """
  if not config.restore:
    raise UserError("config.mode=eval needs --config.restore=PATH, a ticket directory (workdir/tickets/...)")
  report.environment()   # the commit and devices as the run starts
  config, full_width, layer_channels = ticket_model(config)
  exp = experiment.build(config)
  if full_width is not None and full_width.get("num_classes", exp.num_classes) != exp.num_classes:
    raise UserError(f"config.restore={config.restore!r} is a ticket for {full_width['num_classes']} classes; "
                    f"config.data ({config.data.name!r}) has {exp.num_classes} classes")
  model = exp.model if full_width is None else structured.shrunk_model(
      exp, {g: int(kept) for g, (kept, _) in layer_channels.items()})
  prepare_workdir(config.workdir)
  with resume.lock(config.workdir, _lock_name()):
    return _evaluate(exp, config, command, model, full_width, layer_channels)


def _evaluate(exp, config, command: str, model, full_width, layer_channels) -> list[dict]:
  """The eval run of the ticket at config.restore, as `model`; a shrunk one is cut from `full_width`, keeping
  `layer_channels` (both None for a ticket of config.model itself)."""
  ticket = checkpoint.load_ticket(config.restore)
  variables = jax.eval_shape(lambda: model.init(exp.key("eval"), exp.inputs(exp.data["train"][0][:1]), train=False))
  checkpoint.check_compatible(ticket["params"], variables["params"], config.restore)
  trainer = exp.trainer(config.train.epochs, model=None if full_width is None else model)
  state = trainer.init_state(ticket["params"], ticket["batch_stats"] or exp.init_batch_stats, ticket["masks"],
                             exp.key("eval"))
  run = evaluation.record(exp, state, [], "eval", 0, None, None, exp.now(), trainer=trainer)
  if full_width is not None:
    run = dataclasses.replace(run, **structured.rebuilt_counts(exp, state)).with_extra(
        layer_channels={g: list(n) for g, n in layer_channels.items()}, full_width_model=full_width)
  runs = [dataclasses.replace(run, ticket=config.restore).as_dict()]
  if not checkpoint.is_primary():
    return runs
  checkpoint.export_npz(os.path.join(config.workdir, "ticket.npz"), state.params, state.masks)
  report.write_all(config.workdir, config, runs, command)
  print(report.markdown_table(runs))
  print(f"\nticket {config.restore}: sparsity {runs[0]['sparsity']:.4f}, test accuracy {runs[0]['test_accuracy']:.4f}; "
        f"masked weights in {config.workdir}/ticket.npz")
  return runs


def ticket_model(config):
  """(config, full_width, layer_channels): for a shrunk ticket at config.restore, config.model replaced by the
  network it was cut from (`full_width`: models.get's arguments, saved beside it) and the channels each of its
  groups kept ({group: (kept, total)}); an ordinary ticket (no metadata) returns the config and two Nones.

  No key of config.model is kept for a shrunk ticket: one its network leaves at its default, or another
  model's key, would build a network the ticket does not fit. The data stay the config's; results.json
  records the full-width model.
  """
  metadata = checkpoint.load_metadata(config.restore)
  if metadata is None:
    return config, None, None
  if "layer_channels" not in metadata or "full_width" not in metadata:
    raise UserError(f"the {checkpoint.METADATA} beside config.restore={config.restore!r} names no full-width model "
                    "and kept channels (a ticket rebuilt by an older lth_jax); rerun its training to save it anew")
  full_width = dict(metadata["full_width"])
  logging.info("the model comes from the ticket at %s, not config.model: %s narrowed", config.restore,
               ", ".join(f"{k}={v}" for k, v in full_width.items()))
  return _with_model(config, full_width), full_width, dict(metadata["layer_channels"])


def ticket_metadata(fields: dict) -> dict | None:
  """What goes beside a shrunk ticket (model.json): under "full_width" models.get's arguments for the network it
  was cut from, under "layer_channels" {group: [kept, total]}; None for a ticket of the config's own model."""
  if fields.get("layer_channels") is None or fields.get("full_width_model") is None:
    return None
  return {"full_width": fields["full_width_model"], "layer_channels": fields["layer_channels"]}


def _with_model(config, model_kwargs: dict):
  config = config.copy_and_resolve_references()   # the caller's config stays as given
  config.model = ml_collections.ConfigDict({k: v for k, v in model_kwargs.items() if k != "num_classes"})
  return config


def _lock_name() -> str:
  """Each process of a multi-host run holds its own lock on the shared workdir."""
  return resume.LOCK if jax.process_count() == 1 else f"{resume.LOCK}.{jax.process_index()}"


def _fmt(value) -> str:
  return "–" if value is None else f"{value:.4f}"


def command_line(argv) -> str:
  return " ".join(shlex.quote(a) for a in ["python", os.path.basename(argv[0]), *argv[1:]])
