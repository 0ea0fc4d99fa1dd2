"""Streamed vs in-memory input (config.data.pipeline): training throughput, and where a streamed batch's time goes.

  python benchmarks/stream_throughput.py --data DIR_OR_TARBALL [--subset 2560] [--steps 12] [--batch 64]
      [--repeats 5] [--no_decode] [--out results/stream_throughput]

The experiment is configs/cifar_resnet.py (ResNet-20, batch 64, crop-and-flip augmentation, SGD with Nesterov
momentum) on the CIFAR-10 image folder (or its .tar.gz) at --data, built twice by `experiment.build`: with
data.pipeline=memory (every split on the device, batches gathered there inside jit) and with
data.pipeline=stream (splits in host memory; grain gathers each batch's rows on host threads and
`lth_jax.training.streamed` keeps two batches in flight to the device ahead of the step). --subset keeps
that many training images (data.subset) and --steps times the first that many batches of each epoch, so a
run fits in minutes; with either the figures are marked scaled down (the full run is --subset 0 --steps 0:
45,000 training images, 703 batches of 64 an epoch).

Timed, each in isolation on the same batches (the median of --repeats passes over --steps batches, at least 10,
after one untimed pass, which compiles):

- decode: the image folder decoded from its JPEGs with an empty cache (what the first run on a data set pays,
  once: both pipelines then read the decoded arrays), and the cached arrays read back (every later run);
- host read: grain gathering the batches' rows from the decoded host arrays (`stream.Split.batches`);
- transfer: `jax.device_put` of each host batch, one at a time;
- loader: the two together as the streamed epoch consumes them (`streamed.to_device` over grain's batches);
- augmentation: normalisation + crop-and-flip of a device batch, jitted alone;
- the step: the memory epoch below is the training step (augmentation inside) with no loader at all, its
  batches gathered on the device inside jit.

End to end: `Trainer.train_epoch` over the first --steps batches on the memory splits and on the streamed
split, one trainer, the same initial state, alternating which goes first; streamed/memory is the median over
back-to-back pairs (a pair shares its background load). Results go to OUT/results.json and OUT/results.md.
"""

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

if not __package__:   # `python benchmarks/stream_throughput.py`: import `benchmarks` from the repo root
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.common import Load, epochs_on_copies, median_seconds, pair_ratios, paired_ratio  # noqa: E402
from lth_jax import data as data_lib  # noqa: E402
from lth_jax import experiment, masks  # noqa: E402
from lth_jax.config import from_file  # noqa: E402
from lth_jax.training import step, streamed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cifar_resnet.py")
STREAMED_OVER_MEMORY_TARGET = 0.9   # issue 26: streamed at least 0.9x the memory pipeline's throughput on CPU
# The zoo's ResNet-20 (basic blocks, 272,474 parameters), as benchmarks/bench.py times it. configs/cifar_resnet.py's
# own bottleneck variant trains ~7x slower a step on XLA:CPU (its backward pass), which would only dilute the
# input path's share further.
MODEL = {"name": "resnet20", "width": 16, "bottleneck": False}
PIPELINES = ("memory", "stream")
STAGE_REPEATS = 10   # at least this many passes of each stage: they take milliseconds, so load spikes move them most


def config(data_dir: str, pipeline: str, subset: int, batch: int, model: dict = MODEL):
  """configs/cifar_resnet.py on `data_dir` with data.pipeline=`pipeline` and config.model = `model`."""
  c = from_file(CONFIG)
  c.data.dir, c.data.subset, c.data.pipeline = data_dir, subset, pipeline
  c.train.batch_size = batch
  c.metrics.ood, c.metrics.corruptions, c.metrics.similarity_eps = (), (), ()   # held-out sets: not timed
  c.model = type(c.model)(model)
  return c


def decode(data_config, load: Load) -> dict:
  """Seconds to decode the whole image folder with an empty cache (and write the cache), and to read it back."""
  data_config = data_config.copy_and_resolve_references()
  data_config.subset = 0
  loaded = {}
  read = lambda: loaded.update(dataset=data_lib.load(data_config, 0))  # noqa: E731
  with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, {"XDG_CACHE_HOME": cache}):
    out = {"decode_s": load.measure("image folder decode", read),
           "cache_read_s": load.measure("image folder cache read", read)}
  dataset = loaded["dataset"]
  out["images"] = sum(len(s[1]) for s in (dataset.train, dataset.val, dataset.test))
  out["decode_img_s"] = out["images"] / out["decode_s"]
  print(f"  decode: {out['images']:,} images in {out['decode_s']:.1f}s ({out['decode_img_s']:,.0f} img/s, one "
        f"thread, once per data set); the cached arrays read back in {out['cache_read_s']:.2f}s", flush=True)
  return out


def stages(trainer, split, steps: int, repeats: int, load: Load) -> dict:
  """Each stage of a streamed batch timed alone over the same `steps` batches of `split`: img/s and ms a batch."""
  recipe, batch = trainer.recipe, trainer.batch_size
  threads = streamed.READ_THREADS   # the reading threads the trainer's streamed epochs use
  rows = np.random.default_rng(0).permutation(len(split.y))[:steps * batch].reshape(steps, batch)
  host = list(split.batches(rows, threads))
  on_device = [jax.block_until_ready(jax.device_put(b)) for b in host]
  keys = jax.random.split(jax.random.key(0), steps)
  augment = jax.jit(functools.partial(step.batch_inputs, recipe))

  calls = {
      "host_read": lambda: list(split.batches(rows, threads)),
      "transfer": lambda: [jax.block_until_ready(jax.device_put(b)) for b in host],
      "loader": lambda: jax.block_until_ready(list(streamed.to_device(split.batches(rows, threads)))),
      "augmentation": lambda: jax.block_until_ready([augment(k, x) for k, (x, _) in zip(keys, on_device)]),
  }
  out = {"threads": threads, "steps": steps, "batch": batch, "repeats": max(repeats, STAGE_REPEATS)}
  for name, call in calls.items():
    seconds = median_seconds(load, f"stage {name}", call, out["repeats"])
    out[name] = {"img_s": steps * batch / seconds, "ms_per_batch": 1e3 * seconds / steps}
    print(f"  {name}: {out[name]['img_s']:,.0f} img/s, {out[name]['ms_per_batch']:.2f} ms a batch", flush=True)
  return out


def end_to_end(trainer, data: dict, state, steps: int, repeats: int, load: Load) -> dict:
  """Epochs of the first `steps` batches on each pipeline's training split, in back-to-back pairs."""
  epoch = functools.partial(trainer.train_epoch, last=steps)
  args = {"memory": data["memory"], "stream": (data["stream"], None)}
  out = {"first_epoch_s": {}}
  for kind in PIPELINES:   # the first epoch compiles (memory: the gather-and-step; stream: the order and fed step)
    out["first_epoch_s"][kind] = load.measure(f"{kind} warm-up epoch", epochs_on_copies(epoch, *args[kind], state))
  times, cpu = {kind: [] for kind in PIPELINES}, {kind: [] for kind in PIPELINES}
  for r in range(repeats):
    for kind in (PIPELINES if r % 2 == 0 else PIPELINES[::-1]):   # a drift in load hits both alike
      times[kind].append(load.measure(f"{kind} epoch", epochs_on_copies(epoch, *args[kind], state)))
      cpu[kind].append(load.samples[-1]["own_cpu_s"])
  images = steps * trainer.batch_size
  for kind in PIPELINES:
    out[kind] = {"img_s": images / statistics.median(times[kind]), "epoch_s": times[kind], "cpu_s": cpu[kind]}
    print(f"  {kind} epoch of {steps} batches: {out[kind]['img_s']:,.0f} img/s "
          f"(median of {repeats}, first epoch {out['first_epoch_s'][kind]:.1f}s)", flush=True)
  out["stream_over_memory"] = paired_ratio(times, "memory", "stream")
  out["pair_ratios"] = pair_ratios(times, "memory", "stream")
  # The same ratio in this process's CPU seconds (every thread, the loader's included): what another job's
  # share of the cores moves least. None where an epoch was too short to count.
  counted = None not in cpu["memory"] + cpu["stream"]
  out["stream_over_memory_cpu"] = paired_ratio(cpu, "memory", "stream") if counted else None
  print(f"  streamed / memory: {out['stream_over_memory']:.3f} in wall time (pairs: "
        f"{', '.join(f'{r:.2f}' for r in out['pair_ratios'])})" +
        (f", {out['stream_over_memory_cpu']:.3f} in CPU time" if counted else ""), flush=True)
  return out


def targets(result: dict) -> list:
  """Issue 26's throughput targets, met or not, from the measured figures."""
  e2e, stage = result["end_to_end"], result["stages"]
  r, loader = e2e["stream_over_memory"], stage["loader"]["img_s"] / e2e["memory"]["img_s"]
  cpu = e2e["stream_over_memory_cpu"]
  return [{"target": f"streamed >= {STREAMED_OVER_MEMORY_TARGET:g}x memory throughput (CPU, median paired epochs)",
           "value": round(r, 3), "met": r >= STREAMED_OVER_MEMORY_TARGET,
           "note": f"wall-time pairs {', '.join(f'{p:.2f}' for p in e2e['pair_ratios'])}" +
                   (f"; in this process's CPU seconds {cpu:.3f}" if cpu else "")},
          {"target": f"the loader is never the bottleneck with the host's {result['meta']['cpu_count']} cores: "
                     f"the loader alone ({stage['threads']} grain threads + transfer) at least as fast as the "
                     "memory epoch (the step with no loader)", "value": round(loader, 2), "met": loader >= 1}]


def run(data_dir: str, subset: int, steps: int, batch: int, repeats: int, with_decode: bool = True,
        model: dict = MODEL) -> dict:
  """The benchmark's core: the experiments built both ways, the stages, the end-to-end epochs, the machine."""
  started, load = time.perf_counter(), Load()
  exps = {kind: experiment.build(config(data_dir, kind, subset, batch, model)) for kind in PIPELINES}
  exp = exps["memory"]
  full_steps = exp.steps_per_epoch
  steps = min(steps, full_steps) if steps else full_steps
  scaled = steps < full_steps or bool(subset)
  print(f"{exp.config.model.name} on {exp.n_train:,} training images ({data_dir}), batch {batch}: {steps} of "
        f"{full_steps} batches an epoch timed" + (" -- SCALED DOWN" if scaled else ""), flush=True)
  assert isinstance(exps["stream"].data["train"], streamed.HostSplit)
  trainer = exp.trainer(exp.config.train.epochs)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks.init(exp.init_params), jax.random.key(0))
  result = {"meta": {**report.machine(), "versions": report.versions(), "command": "", "data": data_dir,
                     "config": "configs/cifar_resnet.py", "model": exp.config.model.to_dict(),
                     "train_images": exp.n_train, "batch": batch, "steps_timed": steps, "steps_per_epoch": full_steps,
                     "repeats": repeats, "loop": trainer.loop, "scaled_down": scaled,
                     "load_avg_start": os.getloadavg()}}
  if with_decode:
    print("decode", flush=True)
    result["decode"] = decode(exp.config.data, load)
  print("stages", flush=True)
  result["stages"] = stages(trainer, exps["stream"].data["train"], steps, repeats, load)
  print("end to end", flush=True)
  result["end_to_end"] = end_to_end(trainer, {k: e.data["train"] for k, e in exps.items()}, state, steps, repeats,
                                    load)
  result["meta"].update(load.summary(), load_avg_end=os.getloadavg(), wall_s=time.perf_counter() - started)
  result["targets"] = targets(result)
  result["load_samples"] = load.samples
  for t in result["targets"]:
    print(f"{t['target']}: {t['value']} -- {'met' if t['met'] else 'NOT met'}", flush=True)
  return result


STAGE_LABELS = {"host_read": "host read (grain gathers the rows)", "transfer": "transfer (device_put, one at a time)",
                "loader": "loader: host read + transfer as the epoch consumes them",
                "augmentation": "augmentation (normalise + crop-and-flip of a device batch, jitted alone)"}


def markdown(result: dict) -> str:
  """results.md: the machine, the end-to-end figures, the stages and the targets."""
  m, e2e, st = result["meta"], result["end_to_end"], result["stages"]
  scale = (f"**Scaled down**: {m['train_images']:,} training images (`--subset`), the first {m['steps_timed']} of "
           f"{m['steps_per_epoch']} batches of each epoch timed; a full run is `--subset 0 --steps 0`."
           if m["scaled_down"] else "Full epochs of the whole training split.")
  lines = ["# Streamed vs in-memory input: throughput and where the time goes", "",
           f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, jax {m['jax']} on {m['device']}; {m['load_note']} "
           f"(load average {m['load_avg_start'][0]:.2f} at the start, {m['load_avg_end'][0]:.2f} at the end). The "
           "figures are one noisy sample on a shared machine: ratios measured back to back mean more than the "
           "absolute rates.", "",
           f"Command: `{m['command']}` ({m['wall_s']:.0f} s wall).", "",
           f"Experiment: {m['config']} ({m['model']['name']}, batch {m['batch']}, crop-and-flip augmentation) on "
           f"`{m['data']}`, built with data.pipeline=memory and with data.pipeline=stream; loop={m['loop']}. "
           f"{scale}", "",
           "## End to end", "",
           f"`Trainer.train_epoch` over {m['steps_timed']} batches, median of {m['repeats']} epochs after one warm-up "
           "(which compiles); streamed / memory is the median over back-to-back pairs.", "",
           "| pipeline | img/s | epoch s (in run order) | CPU s of this process | first epoch s |",
           "| --- | ---: | --- | --- | ---: |"]
  seconds = lambda values: ", ".join("-" if v is None else f"{v:.2f}" for v in values)  # noqa: E731
  for kind in PIPELINES:
    lines.append(f"| {kind} | {e2e[kind]['img_s']:,.0f} | {seconds(e2e[kind]['epoch_s'])} | "
                 f"{seconds(e2e[kind]['cpu_s'])} | {e2e['first_epoch_s'][kind]:.1f} |")
  cpu = e2e["stream_over_memory_cpu"]
  lines += ["", f"Streamed / memory: **{e2e['stream_over_memory']:.3f}** in wall time (the pairs: "
            f"{', '.join(f'{p:.2f}' for p in e2e['pair_ratios'])})" +
            (f"; **{cpu:.3f}** in this process's CPU seconds (every thread, grain's included), which another "
             "job's share of the cores moves far less than wall time." if cpu else "."), "",
            "## Stages, each timed alone", "",
            f"The same {st['steps']} batches of {st['batch']}, median of {st['repeats']} passes after one untimed "
            f"pass; grain reads with {st['threads']} threads (the trainer's).", "",
            "| stage | img/s | ms a batch |", "| --- | ---: | ---: |"]
  for name, label in STAGE_LABELS.items():
    lines.append(f"| {label} | {st[name]['img_s']:,.0f} | {st[name]['ms_per_batch']:.2f} |")
  lines.append(f"| training step (augmentation inside): the memory epoch, batches gathered on the device, no loader | "
               f"{e2e['memory']['img_s']:,.0f} | {1e3 * st['batch'] / e2e['memory']['img_s']:.2f} |")
  d = result.get("decode")
  if d:
    lines += ["", f"Decode, once per data set: {d['images']:,} JPEGs decoded with an empty cache in {d['decode_s']:.1f} s "
              f"({d['decode_img_s']:,.0f} img/s on one thread); every later run reads the decoded arrays back in "
              f"{d['cache_read_s']:.2f} s. Neither pipeline decodes during training: both start from the decoded "
              "arrays in host memory."]
  lines += ["", "## Targets", ""]
  lines += [f"- {t['target']}: {t['value']} -- {'met' if t['met'] else 'NOT met'}" +
            (f" ({t['note']})" if t.get("note") else "") for t in result["targets"]]
  lines += ["", "## Where the time goes", ""] + analysis(result)
  return "\n".join(lines) + "\n"


def analysis(result: dict) -> list:
  """A paragraph from the measured figures: what a streamed batch costs beside the step, and what limits it."""
  st, e2e = result["stages"], result["end_to_end"]
  batch = st["batch"]
  per_batch = {k: 1e3 * batch / e2e[k]["img_s"] for k in PIPELINES}
  step_ms = per_batch["memory"]   # the memory epoch: the step, gathering its batch on the device
  loader, ratio = st["loader"]["ms_per_batch"], e2e["stream_over_memory"]
  text = (f"A batch of {batch} takes {step_ms:.1f} ms in the memory epoch, i.e. the training step with no loader "
          f"(augmentation, inside it, takes {st['augmentation']['ms_per_batch']:.2f} ms jitted alone). "
          f"The loader, host read and transfer overlapped as the streamed epoch consumes them, needs {loader:.2f} ms a "
          f"batch (alone, the host read takes {st['host_read']['ms_per_batch']:.2f} ms and a blocking transfer "
          f"{st['transfer']['ms_per_batch']:.2f} ms), and runs on grain's threads ahead of the step. Streamed, a "
          f"batch takes {per_batch['stream']:.1f} ms (paired ratio {ratio:.3f}). ")
  d = result.get("decode")
  if d:
    text += (f"Even a loader that decoded the JPEGs every epoch would keep up: one thread decodes "
             f"{d['decode_img_s']:,.0f} img/s, {d['decode_img_s'] / e2e['memory']['img_s']:,.0f}x what the step "
             "consumes here. ")
  if loader > step_ms:
    text += "The loader alone is slower than the step: it is the bottleneck of the streamed epoch."
  elif ratio >= STREAMED_OVER_MEMORY_TARGET:
    text += (f"The step is the bottleneck of both pipelines: the loader's work is {100 * loader / step_ms:.2g}% of "
             "a step's and overlaps it.")
  elif min(e2e["pair_ratios"]) < 1 < max(e2e["pair_ratios"]):
    cpu = e2e["stream_over_memory_cpu"]
    text += ("The loader alone keeps up with the step and the back-to-back pairs fall on both sides of 1" +
             (f" (in CPU seconds, which the background load moves less, streamed / memory is {cpu:.3f})" if cpu
              else "") + ": at this machine's noise the two pipelines cannot be told apart, and a shortfall of the "
             "median is not evidence of a slow loader. An idle machine would settle it.")
  else:
    text += ("The loader alone keeps up with the step, yet every streamed epoch was slower: the loader's threads "
             "and the step compete for the host's cores, or the pipeline stalls between batches.")
  return [text]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="CIFAR-10 as an image folder or its .tar.gz")
  parser.add_argument("--subset", type=int, default=2560, help="training images kept (data.subset); 0: all")
  parser.add_argument("--steps", type=int, default=12, help="batches timed of each epoch; 0: the whole epoch")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each pipeline")
  parser.add_argument("--no_decode", action="store_true", help="skip timing the cold decode of the image folder")
  parser.add_argument("--out", default="results/stream_throughput")
  args = parser.parse_args(argv)
  result = run(args.data, args.subset, args.steps, args.batch, args.repeats, not args.no_decode)
  result["meta"]["command"] = "python benchmarks/stream_throughput.py " + " ".join(
      argv if argv is not None else sys.argv[1:])
  report.write_results(args.out, result, markdown(result))


if __name__ == "__main__":
  main()
