"""The PyTorch peer: the seeds' training loop and one convolution, in torch.

Imported only where torch is installed (pip install 'lth_jax[bench]'). The same architectures as
lth_jax's models, masks by `torch.nn.utils.prune` (global L1Unstructured, hooks left on as the seeds
train), SGD momentum 0.9, data already in memory as tensors and no DataLoader, so the comparison with
lth_jax is of the training step alone.
"""

import os
import statistics

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from benchmarks.common import SPARSITY, Load, Spec, figure, paired_ratio, normalizer, synthetic_pixels

# -- models: LeNet-300-100, Conv-6 and ResNet-20 as the seed projects write them (NCHW) ---------------


def lenet():
  return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                       nn.Linear(100, 10))


def conv6():
  layers, width = [], 3
  for i, f in enumerate((64, 64, 128, 128, 256, 256)):
    layers += [nn.Conv2d(width, f, 3, padding=1), nn.ReLU()]
    width = f
    if i % 2 == 1:
      layers.append(nn.MaxPool2d(2))
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(256 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 256),
                       nn.ReLU(), nn.Linear(256, 10))


class Block(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:   # 1x1 conv + BN projection, as lth_jax's resnet20
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    out = nn.functional.relu(self.bn1(self.conv1(x)))
    return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
  def __init__(self):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    blocks, cin = [], 16
    for s, width in enumerate((16, 32, 64)):
      for b in range(3):
        blocks.append(Block(cin, width, 2 if s > 0 and b == 0 else 1))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.output = nn.Linear(64, 10)

  def forward(self, x):
    return self.output(self.blocks(self.stem(x)).mean((2, 3)))


def vgg16():
  """lth_jax's VGG-16 (network slimming's CIFAR VGG): 3x3 convs without bias + BN + ReLU, a 2x2 average
  pool to 1x1 and one classifier layer `output` from 512 features."""
  layers, width = [], 3
  for f in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
    if f == "M":
      layers.append(nn.MaxPool2d(2))
      continue
    layers += [nn.Conv2d(width, f, 3, padding=1, bias=False), nn.BatchNorm2d(f), nn.ReLU()]
    width = f
  model = nn.Sequential(*layers, nn.AvgPool2d(2), nn.Flatten())
  model.output = nn.Linear(512, 10)
  return model


MODELS = {"lenet300_100": lenet, "conv6": conv6, "resnet20": ResNet20, "vgg16": vgg16}


# -- setup --------------------------------------------------------------------------------------


def setup(jax_platform: str) -> str:
  """Threads = cores, and the device beside jax's: "cuda" where jax runs on a GPU and torch has one, else "cpu"."""
  torch.set_num_threads(os.cpu_count())
  return "cuda" if jax_platform == "gpu" and torch.cuda.is_available() else "cpu"


def version() -> str:
  return torch.__version__


def _sync(device: str):
  return torch.cuda.synchronize if device == "cuda" else (lambda: None)


# -- the training loop --------------------------------------------------------------------------


def bench(spec: Spec, load: Load, device: str) -> dict:
  """Dense and masked epochs at threads = cores, timed alternately; masked on one thread as well."""
  torch.manual_seed(0)
  pixels_np, y_np = synthetic_pixels(spec)
  x_np = normalizer(pixels_np).host(pixels_np)   # the images lth_jax sees, normalised ahead of time
  x = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))).to(device)   # NCHW
  y = torch.from_numpy(y_np.astype(np.int64)).to(device)
  steps = spec.n_train // spec.batch_size
  sync = _sync(device)
  out, runs = {}, {}
  for kind in ("dense", "masked"):
    model = MODELS[spec.name]().to(device)
    out["params"] = sum(p.numel() for p in model.parameters())
    if kind == "masked":
      prunable = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
      prune.global_unstructured(prunable, pruning_method=prune.L1Unstructured, amount=SPARSITY)
      pruned = sum(int((m.weight_mask == 0).sum()) for m, _ in prunable)
      out["sparsity"] = pruned / sum(m.weight_mask.numel() for m, _ in prunable)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def epoch(model=model, opt=opt, steps=steps):
      model.train()
      order = torch.randperm(spec.n_train, device=device)
      for i in range(steps):
        idx = order[i * spec.batch_size:(i + 1) * spec.batch_size]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
      sync()

    epoch(steps=min(steps, 2))   # oneDNN builds its primitives on the first pass
    runs[kind] = epoch
  times = {"dense": [], "masked": []}
  repeats = min(max(spec.repeats, 3), 5)
  for r in range(repeats):
    for kind in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
      times[kind].append(load.measure(f"{spec.name} torch {kind} epoch", runs[kind]))
  out["dense"], out["masked"] = (figure(spec.n_train, times[k]) for k in ("dense", "masked"))
  out["masked_over_dense"] = paired_ratio(times)
  out["threads"] = torch.get_num_threads()
  # One thread too: OpenMP's barriers stall when other processes hold the cores, so on a shared machine
  # the prescribed threads=cores can be the slower choice; this says how much of the gap that is.
  torch.set_num_threads(1)
  runs["masked"](steps=min(steps, 2))
  out["masked_1thread"] = figure(spec.n_train, [load.measure(f"{spec.name} torch masked epoch, 1 thread",
                                                             runs["masked"]) for _ in range(repeats)])
  torch.set_num_threads(out["threads"])
  print(f"  torch dense {out['dense']['img_s']:,.1f} img/s, masked {out['masked']['img_s']:,.1f} img/s "
        f"({out['threads']} threads); masked, 1 thread {out['masked_1thread']['img_s']:,.1f} img/s", flush=True)
  return out


# -- the conv probe -----------------------------------------------------------------------------


def conv_probe(x_np: np.ndarray, load: Load, device: str) -> dict:
  """The conv probe's torch half: a 3x3 conv (channels as x_np's, NHWC) forward, and forward + weight gradient."""
  out = {"torch_threads": torch.get_num_threads()}
  tx = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))).to(device)
  channels = x_np.shape[-1]
  tconv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
  sync = _sync(device)

  def t_forward():
    with torch.no_grad():
      tconv(tx).sum()
    sync()

  def t_weight_grad():
    tconv.zero_grad()
    tconv(tx).sum().backward()   # input needs no grad: this is forward + weight gradient
    sync()

  for name, fn in (("torch_forward_ms", t_forward), ("torch_forward_weight_grad_ms", t_weight_grad)):
    fn()
    out[name] = 1e3 * statistics.median([load.measure(f"conv probe {name}", fn) for _ in range(3)])
  return out
