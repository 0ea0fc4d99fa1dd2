"""XLA:CPU options for convnet training, measured A/B interleaved: one subprocess per XLA_FLAGS setting.

  python benchmarks/conv_options.py --rounds 3 --probes conv,resnet20,conv6 [--options plain,canonical,...]
  python benchmarks/conv_options.py --worker PROBE          (one measurement; XLA_FLAGS from the environment)

XLA reads its flags when the backend initialises, so each (option, probe) pair is a fresh process; the
driver alternates the options within each round so background load hits all of them alike, and reports
per-option medians and ratios to the baseline (the median over rounds of the per-round ratio). Each
worker also prints a checksum of its numbers (conv gradient, losses after 3 steps) so a fast option that
changes the results shows up. Results: results/bench_cpu/conv_options.md (written by hand from this output).

Probes: conv (ResNet-20's 16->16 3x3 conv at 32x32, batch 64: forward and weight gradient, NHWC and
NCHW), resnet20 / conv6 (one jitted masked train step at batch 64 through lth_jax's Trainer, loop=steps),
scan_resnet20 / scan_conv6 (a 2-batch epoch as one lax.scan, loop=scan, per step).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# name -> environment of the worker. "plain": lax.conv_general_dilated as XLA lowers it (LTH_JAX_CPU_CONV=off);
# "canonical": lth_jax.models.cpu_conv (every convolution and its gradients in NHWC/HWIO form). The XLA flag
# options run the plain lowering under the flags the issue probed.
_OFF = {"LTH_JAX_CPU_CONV": "off"}
OPTIONS = {
    "plain": {**_OFF, "XLA_FLAGS": ""},
    "canonical": {"LTH_JAX_CPU_CONV": "on", "XLA_FLAGS": ""},
    "onednn_cc": {**_OFF, "XLA_FLAGS": "--xla_cpu_experimental_onednn_custom_call=true"},
    "onednn_cc_use": {**_OFF, "XLA_FLAGS": "--xla_cpu_experimental_onednn_custom_call=true --xla_cpu_use_onednn=true"},
    "xnnpack": {**_OFF, "XLA_FLAGS": "--xla_cpu_use_xnnpack=true"},
    "no_ynn_conv": {**_OFF, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
}


def _time(fn, reps):
  """Median seconds of `reps` calls of fn (which blocks), after one untimed call."""
  fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def worker_conv(reps):
  import jax
  import jax.numpy as jnp
  import numpy as np
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from lth_jax.models import cpu_conv   # lax.conv_general_dilated itself unless LTH_JAX_CPU_CONV says otherwise
  x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 32, 32, 16), dtype=np.float32))
  w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 16, 16), dtype=np.float32) * 0.1)
  out = {}
  for layout, dn, xx, ww in (("nhwc", ("NHWC", "HWIO", "NHWC"), x, w),
                             ("nchw", ("NCHW", "OIHW", "NCHW"), x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1))):
    def f(w, x, dn=dn):
      y = cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
      return (y * y).sum() * 1e-3
    fwd = jax.jit(f)
    wgrad = jax.jit(jax.grad(f))
    both = jax.jit(jax.grad(f, argnums=(0, 1)))
    out[f"{layout}_fwd_ms"] = 1e3 * _time(lambda: fwd(ww, xx).block_until_ready(), reps)
    out[f"{layout}_wgrad_ms"] = 1e3 * _time(lambda: wgrad(ww, xx).block_until_ready(), reps)
    out[f"{layout}_wgrad_dgrad_ms"] = 1e3 * _time(lambda: jax.block_until_ready(both(ww, xx)), reps)
    g = np.asarray(wgrad(ww, xx))
    if layout == "nchw":
      g = g.transpose(2, 3, 1, 0)
    out[f"{layout}_wgrad_sum"] = float(np.abs(g).sum())
    out[f"{layout}_wgrad_first"] = float(g.reshape(-1)[0])

    def in_scan(w, xs, wgrad=wgrad):   # the same weight gradient inside a 2-trip scan
      return jax.lax.scan(lambda w, xb: (w - 1e-3 * wgrad(w, xb), None), w, xs)[0]
    scan = jax.jit(in_scan)
    xs = jnp.stack([xx, xx])
    out[f"{layout}_wgrad_in_scan_ms"] = 1e3 * _time(lambda: scan(ww, xs).block_until_ready(), max(1, reps // 2)) / 2
  return out


def worker_train(name, reps, loop):
  import functools
  import jax
  import jax.numpy as jnp
  import numpy as np
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks.bench import _opt_config, _ticket
  from lth_jax import models, training
  batch, steps = 64, (2 if loop == "scan" else 4)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch * steps, 32, 32, 3), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch * steps).astype(np.int32))
  model = models.get(name, num_classes=10)
  trainer = training.Trainer(model, _opt_config(), batch, steps, epochs=10, loop=loop)
  init = jax.jit(functools.partial(model.init, train=False))
  params, batch_stats, mask, _ = _ticket(init, x, jax.random.key(0))
  state = trainer.init_state(params, batch_stats, mask, jax.random.key(1))
  start = time.perf_counter()
  copy = lambda: jax.block_until_ready(jax.tree.map(lambda a: a.copy(), state))
  s, m = trainer.train_epoch(copy(), x, y)   # compiles; also the numbers to compare
  jax.block_until_ready(s)
  first_s = time.perf_counter() - start
  out = {"first_epoch_s": first_s, "loss": float(m["loss"]) if "loss" in m else None,
         "param_abs_sum": float(sum(np.abs(np.asarray(p)).sum() for p in jax.tree.leaves(s.params)))}
  times = []
  for _ in range(reps if loop == "steps" else max(1, reps // 3)):
    fresh = copy()
    t0 = time.perf_counter()
    jax.block_until_ready(trainer.train_epoch(fresh, x, y))
    times.append(time.perf_counter() - t0)
  out["step_ms"] = 1e3 * statistics.median(times) / steps
  return out


def worker(probe, reps):
  if probe == "conv":
    return worker_conv(reps)
  if probe.startswith("scan_"):
    return worker_train(probe[5:], reps, "scan")
  return worker_train(probe, reps, "steps")


def drive(options, probes, rounds, reps):
  results = {}   # (probe, option) -> list of dicts
  print(f"uptime at start: {os.popen('uptime').read().strip()}", flush=True)
  for r in range(rounds):
    order = options if r % 2 == 0 else options[::-1]
    for probe in probes:
      for opt in order:
        env = {**os.environ, **OPTIONS[opt], "JAX_PLATFORMS": "cpu"}
        p = subprocess.run([sys.executable, __file__, "--worker", probe, "--reps", str(reps)], env=env,
                           capture_output=True, text=True)
        if p.returncode:
          print(f"round {r} {probe} {opt}: FAILED {p.stderr.strip().splitlines()[-1:]}", flush=True)
          continue
        out = json.loads(p.stdout.strip().splitlines()[-1])
        out["load1"] = os.getloadavg()[0]
        results.setdefault((probe, opt), []).append(out)
        print(f"round {r} {probe} {opt}: {json.dumps(out)}", flush=True)
  print(f"uptime at end: {os.popen('uptime').read().strip()}", flush=True)
  print("\nmedians (ratio = median over rounds of first-option/option time: >1 means the option is faster)")
  for probe in probes:
    base = results.get((probe, options[0]), [])
    for opt in options:
      runs = results.get((probe, opt), [])
      if not runs:
        continue
      line = []
      for k in runs[0]:
        if not k.endswith("_ms"):
          continue
        med = statistics.median(o[k] for o in runs)
        rat = ""
        if base and opt != options[0]:
          rat = f" (x{statistics.median(b[k] / o[k] for b, o in zip(base, runs)):.2f})"
        line.append(f"{k}={med:.1f}{rat}")
      extra = {k: runs[0][k] for k in runs[0] if k.endswith(("_sum", "_first", "loss")) or k == "first_epoch_s"}
      print(f"{probe:14s} {opt:14s} " + " ".join(line) + f"  {extra}", flush=True)
  return results


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--worker")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--probes", default="conv")
  ap.add_argument("--options", default=",".join(OPTIONS))
  args = ap.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.reps)))
  else:
    drive(args.options.split(","), args.probes.split(","), args.rounds, args.reps)


if __name__ == "__main__":
  main()
