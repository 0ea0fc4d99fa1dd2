"""The benchmark's report: the machine it ran on, the targets, and OUT/results.md."""

import json
import os
import platform
import statistics

import flax
import jax
import jaxlib
import numpy as np
import optax

from benchmarks.common import FULL, K, LENET_TORCH_TARGET, LOAD_LIMIT, MASKED_TARGET, SPARSITY

# -- the machine ----------------------------------------------------------------------------------


def versions(torch_version: str | None = None) -> dict:
  """The versions the figures were measured with (torch's where it is installed)."""
  out = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}
  if torch_version is not None:
    out["torch"] = torch_version
  return out


def machine() -> dict:
  """What a result was measured on: CPU model and cores, OS, jax and its device."""
  return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "jax": jax.__version__, "device": str(jax.devices()[0])}


def write_results(out_dir: str, result: dict, markdown: str) -> None:
  """OUT/results.json (`result`) and OUT/results.md (`markdown`)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(result, f, indent=1, default=float)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(markdown)
  print(f"wrote {out_dir}/results.json and results.md")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


# -- targets and the markdown report ----------------------------------------------------------------


def targets(results: dict) -> list:
  """The targets met or not (None: reported only), from the measured figures."""
  out = []
  for name, m in results["models"].items():
    r = m["lth_jax"]["masked_over_dense"]
    out.append({"target": f"{FULL[name].label}: lth_jax masked within 3% of dense (masked/dense >= "
                          f"{1 - MASKED_TARGET:g})", "value": round(r, 3), "met": r >= 1 - MASKED_TARGET})
  lenet = results["models"].get("lenet300_100", {})
  if lenet.get("lth_jax_over_torch") is not None:
    r = lenet["lth_jax_over_torch"]
    out.append({"target": f"LeNet-300-100 (CPU): lth_jax masked >= 1.5x torch masked ({lenet['torch']['threads']} "
                          "threads)", "value": round(r, 2), "met": r >= LENET_TORCH_TARGET})
    r = lenet["lth_jax_over_torch_best"]
    out.append({"target": "LeNet-300-100 (CPU): lth_jax masked >= 1.5x torch masked at its faster thread count",
                "value": round(r, 2), "met": r >= LENET_TORCH_TARGET})
  resnet = results["models"].get("resnet20", {})
  if resnet.get("lth_jax_over_torch") is not None:
    out.append({"target": "ResNet-20: lth_jax masked / torch masked (reported, no target)",
                "value": round(resnet["lth_jax_over_torch"], 3), "met": None})
  return out


def _num(v, ratio=False) -> str:
  if v is None:
    return "–"
  if ratio:
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"
  return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def _duration(seconds: float) -> str:
  return f"{seconds:.1f} s" if seconds >= 1 else f"{1e3 * seconds:.2f} ms"


def _batched_op(name: str) -> str:
  return "batched matmuls" if name == "lenet300_100" else "grouped convolutions"


def _analysis(results: dict) -> list:
  """The 'what limits it' paragraphs, from the measured figures."""
  lines, probe, cpu = [], results.get("conv_probe"), results["meta"]["platform"] == "cpu"
  for name, m in results["models"].items():
    label, j, t, b, convnet = FULL[name].label, m["lth_jax"], m.get("torch"), m["batch_size"], name != "lenet300_100"
    loops, r = j["loops"], j["loops"]["scan_over_steps"]
    text = f"per batch of {b}: {_duration(b / j['masked']['img_s'])} in lth_jax masked (loop: {j['loop']})"
    if t:
      text += (f", {_duration(b / t['masked']['img_s'])} in torch masked with {t['threads']} threads and "
               f"{_duration(b / t['masked_1thread']['img_s'])} with 1")
    text += (f". On the loop diagnostic's {loops['steps_per_epoch']}-batch epoch one `lax.scan` runs at "
             f"{_num(r, True)}x the speed of one jitted step per batch")
    if r < 0.5:
      text += ": the scan's while loop is the limit"
      if cpu and convnet:
        text += (" (inside it XLA CPU emits generic loop kernels for convolutions not in its canonical form; "
                 "lth_jax.models.cpu_conv writes them canonical, so check train.cpu_conv)")
    elif r < 0.9:
      text += ": the scan is the slower loop"
    elif r <= 1.1:
      text += ": within 10%, so dispatching each step from Python costs little next to a batch's work"
    else:
      text += ": the scan saves the per-step dispatch"
    faster = "scan" if r > 1 else "steps"
    text += (f"; loop=\"auto\" picked {j['loop']}, loop=\"{faster}\" is faster here." if j["loop"] != faster and
             abs(r - 1) > 0.1 else ".")
    g = m.get("lth_jax_over_torch_best")
    if g is not None:
      if g > 1.2:
        text += f" lth_jax masked is {g:.1f}x as fast as torch masked at its faster thread count"
        text += (": the step (three small GEMMs) is compiled with the mask and optimizer arithmetic into one "
                 "program, while torch runs it op by op (autograd, SGD's per-parameter loop, the prune hooks)."
                 if not convnet else ".")
      elif g < 1 / 1.2:
        text += f" Torch masked at its faster thread count is {1 / g:.1f}x as fast as lth_jax masked"
        text += (" (see the conv probes below)." if convnet and probe else ".")
      else:
        text += " lth_jax masked and torch masked at its faster thread count are within 20%."
    text += (f" Masked/dense: {j['masked_over_dense']:.2f} in lth_jax (the same programs, the masks multiplied in "
             "either way)" + (f", {t['masked_over_dense']:.2f} in torch (prune hooks recompute weight_orig * mask "
                              "every forward)." if t else "."))
    if t and t["masked_1thread"]["img_s"] > 1.2 * t["masked"]["img_s"]:
      text += (f" Torch with {t['threads']} threads is {t['masked_1thread']['img_s'] / t['masked']['img_s']:.1f}x "
               "slower than with 1: its OpenMP regions wait at barriers for any thread another process has "
               "pre-empted; the threads=cores figure needs an idle machine.")
    lines.append(f"- **{label}** — {text}")
    if "img_s" in j["vmap"]:
      v = j["vmap_speedup"]
      lines.append(f"  Vmapping K={K} tickets gives {v:.2f}x the throughput of training them one after another"
                   + (": one program of K-times-wider operations keeps the cores busier than K small ones." if v > 1.05
                      else "." if v > 0.95 else
                      f": the batched program ({_batched_op(name)} over the ticket axis) is slower than K plain "
                      "ones."))
    else:
      lines.append(f"  Vmapped K={K} not measured: {j['vmap']['skipped']} (raise it to measure).")
  for name, p in (probe or {}).items():
    c = p["shape"][-1]
    text = (f"- **Conv probe {name}** ({c}->{c} 3x3 conv at 32x32, batch {p['shape'][0]}, "
            f"{p['torch_threads'] or '–'} torch threads): forward {p['xla_forward_ms']:.1f} ms in XLA's own "
            f"lowering, {p['lth_jax_forward_ms']:.1f} ms on lth_jax's CPU path; weight gradient "
            f"{p['xla_weight_grad_ms']:.1f} ms / {p['lth_jax_weight_grad_ms']:.1f} ms alone"
            + (f", {p['xla_weight_grad_in_scan_ms']:.1f} ms" if "xla_weight_grad_in_scan_ms" in p else ", not timed")
            + f" / {p['lth_jax_weight_grad_in_scan_ms']:.1f} ms per trip inside a scan")
    if "torch_forward_ms" in p:
      text += (f"; torch forward {p['torch_forward_ms']:.1f} ms, forward + weight gradient "
               f"{p['torch_forward_weight_grad_ms']:.1f} ms")
    lines.append(text + ".")
  e2e = results.get("end_to_end")
  if e2e:
    lines.append(f"- **End to end** ({e2e['runs']} runs, {e2e['epochs_trained']} epochs of training): "
                 f"{e2e['wall_s']:.1f}s, which includes compiling each trainer and every run's evaluation "
                 "(calibration, OOD, similarity figures), not only training.")
  return lines


def write_markdown(results: dict, path: str) -> None:
  meta, models_, lines = results["meta"], results["models"], []
  title = "# lth_jax training throughput" + (" (quick smoke mode: figures not comparable)" if results["quick"] else "")
  lines += [title,
            "", f"`{meta['command']}` — {meta['date']}", "",
            f"Device: {meta['device']} · CPU: {meta['cpu_model']}, {meta['cpu_count']} cores · "
            + " · ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
  loops = sorted({m["lth_jax"]["loop"] for m in models_.values()})
  lines += ["Synthetic 8-bit images of the real shapes, on the device before timing (lth_jax: uint8, normalised "
            "inside the compiled step as by default; torch: the same images normalised ahead of time, as floats); images/s is the median over timed "
            "epochs after untimed warm-up epochs (the first compiles); masked/dense is the median over back-to-back "
            "(dense, masked) pairs. lth_jax epochs are `Trainer.train_epoch` with the default loop "
            f"(loop: {', '.join(loops)}), each on its own copy of the state; sequential K={K} is {K} single-ticket "
            "epochs one after another, vmapped one batched epoch of all. Timed epochs per figure: " + "; ".join(
                f"{FULL[n].label}: {m['images']:,} images/epoch, batch {m['batch_size']} "
                f"({m['lth_jax']['steps_per_epoch']} steps), {m['repeats']} for dense and masked, "
                f"{min(m['repeats'], 5)} for K={K}, {min(max(m['repeats'], 3), 5)} for torch"
                for n, m in models_.items()) + f". Masks: {SPARSITY:.0%} global magnitude over every "
            f"conv and dense kernel in both frameworks; K={K} tickets each have their own init and mask."
            + (f" Torch runs with torch.set_num_threads({meta['torch_threads']}) unless a column says otherwise."
               if meta["torch_threads"] else ""), ""]
  samples = results["load"]["samples"]
  if results["load"]["warnings"]:
    others = [s["others_cpu_share"] for s in samples if s["others_cpu_share"] is not None]
    lines += [f"**Noisy:** the 1-minute load average was above {LOAD_LIMIT} before "
              f"{len(results['load']['warnings'])} of {len(samples)} measurements (max "
              f"{max(s['load_avg_1m'] for s in samples):.2f}; it counts this benchmark's own threads too). Other "
              "processes took " + (f"{statistics.median(others):.0%} of the CPUs (median over measurements, max "
                                   f"{max(others):.0%})" if others else "an unknown share of the CPUs") + ".", ""]
  lines += [f"| model | lth_jax dense img/s | lth_jax masked img/s | masked/dense | vmapped K={K} img/s (total) | "
            f"sequential K={K} img/s | vmap speedup | torch masked img/s | lth_jax/torch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, m in models_.items():
    j, t = m["lth_jax"], m.get("torch")
    seq = _num(j["sequential"]["img_s"]) + (" (derived)" if j["sequential"].get("derived") else "")
    vmap = _num(j["vmap"]["img_s"]) if "img_s" in j["vmap"] else "skipped"
    lines.append(f"| {FULL[name].label} | {_num(j['dense']['img_s'])} | {_num(j['masked']['img_s'])} | "
                 f"{_num(j['masked_over_dense'], True)} | {vmap} | {seq} | {_num(j['vmap_speedup'], True)} | "
                 f"{_num(t['masked']['img_s']) if t else '–'} | {_num(m.get('lth_jax_over_torch'), True)} |")
  lines += ["", "Diagnostics. First epoch: lth_jax's first warm-up epoch, compiling included. Loops: a dense epoch of "
            "the first batches (loop epoch) as one `lax.scan` (loop=\"scan\", compiled ahead of time, timed without "
            "warm-up) vs one jitted step per batch (loop=\"steps\"); scan / steps is their throughput ratio.", "",
            "| model | first epoch s | loop epoch | scan img/s | steps img/s | scan / steps | torch dense img/s | "
            "torch masked/dense | torch masked, 1 thread, img/s | lth_jax / torch at its faster thread count | "
            "params (jax / torch) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, m in models_.items():
    j, t = m["lth_jax"], m.get("torch")
    loops = j["loops"]
    cells = [FULL[name].label, f"{j['first_epoch_s']:.1f}",
             f"{loops['images']:,} images ({loops['steps_per_epoch']} batches)", _num(loops["scan"]["img_s"]),
             _num(loops["steps"]["img_s"]), _num(loops["scan_over_steps"], True)]
    if t:
      cells += [_num(t["dense"]["img_s"]), _num(t["masked_over_dense"], True), _num(t["masked_1thread"]["img_s"]),
                _num(m["lth_jax_over_torch_best"], True), f"{j['params']:,} / {t['params']:,}"]
    else:
      cells += ["–"] * 4 + [f"{j['params']:,} / –"]
    lines.append("| " + " | ".join(cells) + " |")
  if any("rigl" in m["lth_jax"] for m in models_.values()):
    lines += ["", "RigL step vs dense step (the 80% global magnitude mask, SGD): the same batches, epochs timed in "
              "back-to-back pairs; rigl/dense is the median pair's throughput ratio. Every 1: a drop-and-grow "
              "update at every step (the cost of an update); every 100: RigL's cadence (lax.cond skips it between).",
              "", "| model | dense img/s | RigL every 1 img/s | rigl/dense | RigL every 100 img/s | rigl/dense |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, m in models_.items():
      r = m["lth_jax"].get("rigl")
      if r:
        lines.append(f"| {FULL[name].label} | {_num(r['every_1']['dense_img_s'])} | {_num(r['every_1']['img_s'])} | "
                     f"{_num(r['every_1']['over_dense'], True)} | {_num(r['every_100']['img_s'])} | "
                     f"{_num(r['every_100']['over_dense'], True)} |")
  memory = results.get("data_memory")
  if memory:
    lines += ["", "On-device data: a whole data set's images (train + val + test) placed on the device as "
              "experiment.build does by default (uint8 pixels, normalised inside jit) and as normalised float32 "
              "(`data.device_dtype=float32`); bytes of the placed arrays (the allocator's count where the backend "
              "gives one).", "", "| data set | images | uint8 MiB | float32 MiB | float32 / uint8 |", "|---|---:|---:|---:|---:|"]
    for name, m in memory.items():
      u8, f32 = (m[k]["allocator_bytes"] or m[k]["nbytes"] for k in ("uint8", "float32"))
      lines.append(f"| {name} {'x'.join(map(str, m['shape']))} | {m['images']:,} | {u8 / 2**20:,.1f} | "
                   f"{f32 / 2**20:,.1f} | {f32 / u8:.1f} |")
  e2e = results.get("end_to_end")
  if e2e:
    lines += ["", f"End to end: {e2e['config']}: {e2e['runs']} runs, {e2e['wall_s']:.1f}s wall."]
  lines += ["", "Targets:", ""]
  for t in results["targets"]:
    verdict = "reported" if t["met"] is None else ("met" if t["met"] else "NOT met")
    lines.append(f"- {t['target']}: {t['value']} — {verdict}")
  if results.get("skipped"):
    lines += [""] + [f"- skipped: {s}" for s in results["skipped"]]
  lines += ["", "## What limits it", ""] + _analysis(results)
  lines += ["", f"Total benchmark wall time {results['wall_s']:.0f}s."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
