"""Every knob with its default. Experiment files under configs/ start from `base()` and override.

`python -m lth_jax.config` (or `python main.py --config.help`) lists every key, its default and the
comment beside it here: the listing is read from `base()` and this file, so it cannot drift.
"""

import importlib.util
import inspect
import re

import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.replicates = 1              # n > 1: the whole run under seeds seed .. seed+n-1 (own init, data order and
  #                               keys; the data split stays seed's), summarised as mean and std over seeds
  c.method = "compare"          # dense | oneshot | oneshot_reinit | oneshot_random | iterative | dynamic | compare
  #                               | prune_at_init (snip / grasp / synflow / magnitude / random at theta_0)
  #                               | slimming | early_bird (channel pruning: any model, physically narrower)
  #                               | gradual | static | set | rigl (pruning during / sparse training from scratch)
  #                               | instability (linear mode connectivity of the dense network and a ticket)
  c.workdir = "workdir"         # results.json, results.md, plots, tickets and checkpoints go here
  c.mode = "train"              # train | eval (evaluate the ticket at `restore` without training)
  c.restore = ""                # mode=eval: a ticket directory, e.g. workdir/tickets/05_iterative_r3_s0.488

  # Every training segment is checkpointed; rerunning the same command resumes where it stopped.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 5        # epochs between checkpoints (and always at the end of a segment)
  c.checkpoint.keep = 2         # checkpoints kept per segment
  c.checkpoint.restart = False  # True: delete the workdir's checkpoints and results and start over

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"        # moons | penguins | digits | mnist | ... | your own source as "pkg.module:load"
  c.data.kwargs = ml_collections.ConfigDict()   # your own source's options (--config.data.kwargs.n=100): it reads
  #                               them as config.kwargs
  c.data.dir = ""               # files for sources that read them; "" = fetch (mnist, fashion_mnist, cifar10/100)
  c.data.val_fraction = 0.15
  c.data.test_fraction = 0.15   # for sources without a test split of their own
  c.data.n_samples = 1000       # moons
  c.data.noise = 0.2            # moons
  c.data.subset = 0             # >0: keep only this many training examples (scaled-down runs)
  c.data.test_subset = 0        # >0: evaluate on a seeded random subset of this many test examples
  c.data.standardize = True     # per-channel mean/std of the training inputs
  c.data.augment = "none"       # none | crop_flip (random crop with 4 pixels of padding, horizontal flip)
  c.data.device_dtype = "auto"  # auto: 8-bit images stay uint8 on the device, normalised inside jit (4x less
  #                               memory, the same numbers) | float32: normalised on the host, float32 there
  c.data.pipeline = "memory"    # memory: every split on the device, batches gathered there | stream: splits stay
  #                               on the host, batches read by grain and prefetched to the device (the same
  #                               numbers) | auto: stream when the splits would take more than device_budget_mb
  c.data.device_budget_mb = 4096.0   # data.pipeline=auto: the device memory the splits may take, in MiB
  c.data.tfds_name = ""         # data.name="tfds": the TFDS data set, e.g. "cifar10", "svhn_cropped"
  c.data.tfds_dir = ""          # where TFDS keeps prepared data ("" = its default); prepared there if TensorFlow is installed
  c.data.tfds_test_split = "test"   # data.name="tfds": the split tested on ("validation" for imagenet2012, whose "test"
  #                                   split has no labels)
  # Images of any size, decoded on demand (ImageNet): image_folder lists the files (tfds its examples), and the
  # streamed pipeline decodes, crops and resizes each batch on host threads (lth_jax.data.lazy).
  c.data.image_size = 0         # >0: image_folder's (tfds's) images become image_size x image_size, decoded batch
  #                               by batch (train: random-resized crop and flip; val/test: shorter side to resize_size,
  #                               centre crop); needs data.pipeline=stream. 0: images as they are, decoded once
  c.data.resize_size = 0        # image_size > 0, evaluation: the shorter side before the centre crop (0: 8/7 of it)
  c.data.crop_scale = (0.08, 1.0)   # image_size > 0, training crops: their fraction of the image's area
  c.data.crop_ratio = (0.75, 4 / 3)   # image_size > 0, training crops: width / height, drawn log-uniformly
  c.data.workers = 0            # image_size > 0: host threads decoding images (0 = one per CPU core)

  # Fetching (issue 15): mnist, fashion_mnist, cifar10 and cifar100 with an empty data.dir are downloaded once,
  # verified against their published checksums and read from the cache afterwards.
  c.data.cache_dir = ""         # where fetched files are kept ("" = $XDG_CACHE_HOME/lth_jax or ~/.cache/lth_jax)
  c.data.mirror = ""            # base URL serving the same file names, replacing the canonical hosts ("" = $LTH_JAX_DATA_MIRROR)
  c.data.checksums = ""         # a file of "sha256  name" lines replacing the published sums ("" = $LTH_JAX_DATA_CHECKSUMS)

  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True      # event files (per-epoch losses, accuracies, lr, sparsity) under workdir/tensorboard/<run>
  c.log.progress = True         # one progress bar over the whole experiment (epochs of every run, ETA); only on a terminal

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"          # a zoo model, or your own as "pkg.module:Name" (a flax.linen or flax.nnx Module class)
  c.model.kwargs = ml_collections.ConfigDict()  # your own model's constructor arguments (--config.model.kwargs.width=64)
  c.model.widths = (128, 64)
  c.model.activation = "relu"
  c.model.output_activation = "identity"

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 30
  c.train.batch_size = 64
  c.train.eval_batch_size = 1000
  c.train.log_every = 10        # epochs between log lines; 0 = quiet
  c.train.num_devices = 0       # data-parallel over this many local devices; 0 = all of them
  c.train.mesh = ""             # the device mesh, e.g. "data=4" or "tickets=2,data=2": batches split over "data",
                                # vmapped tickets (train.vmap) over "tickets"; "" = data over train.num_devices
  c.train.distributed = False   # multi-host: jax.distributed.initialize() and a mesh over all processes' devices
  c.train.coordinator = ""      # distributed: "host:port" of process 0's coordinator ("" = $JAX_COORDINATOR_ADDRESS
  #                               or the cluster's, e.g. Slurm's)
  c.train.num_processes = 0     # distributed: processes in the run (0 = from the cluster environment)
  c.train.process_id = -1       # distributed: this process's index, 0 .. num_processes-1 (-1 = from the cluster)
  c.train.coordinator_timeout_s = 300   # distributed: seconds to wait for every process to reach the coordinator
  c.train.vmap = False          # tickets that share a schedule train together, vmapped in one program: a
                                # one-shot sweep's sparsities, compare's oneshot_reinit and oneshot_random,
                                # and the seeds of `replicates` (which then run in lockstep)
  c.train.loop = "auto"         # "scan" (an epoch is one lax.scan), "steps" (a jitted step per batch); auto: steps on CPU
  c.train.cpu_conv = "auto"     # convolutions and their gradients in the NHWC/HWIO form XLA:CPU's fast kernels take
                                # (lth_jax.models.cpu_conv): "auto" on the CPU backend, "on", "off" (XLA's own lowering)
  c.train.compute_dtype = "float32"   # "bfloat16": mixed precision (params, masks, optimizer state stay float32)
  c.train.eval_every = 1        # epochs between validation/test evaluations (best_epoch is among these)
  c.train.steps = 0             # >0: runs of the full schedule train exactly this many iterations (the papers' unit):
  #                               train.epochs becomes ceil(steps / steps per epoch), the last epoch cut short
  c.train.eval_every_steps = 0  # >0: validation and test every this many iterations (and at the end), not per epoch
  c.train.best_by = "val_accuracy"   # val_accuracy | val_loss (the LTH paper's early stopping): picks best_step
  c.train.test_at_best_only = False  # with eval_every_steps: test figures only where validation improved (and at the
  #                                    end), which is all test_accuracy_at_best_epoch needs, at a third of the cost

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"      # sgd | adam | adamw
  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"   # constant | step | cosine
  c.optimizer.milestones = ()        # epochs at which the step schedule multiplies lr by gamma
  c.optimizer.gamma = 0.1
  c.optimizer.warmup_epochs = 0.0

  # Fine-tuning after one-shot pruning and the rounds of iterative pruning with reset="none".
  c.finetune = ml_collections.ConfigDict()
  c.finetune.epochs = 10
  c.finetune.lr = 0.0           # 0 = config.optimizer.lr
  c.finetune.schedule = "constant"   # constant | cosine | step (at config.optimizer.milestones)

  c.prune = ml_collections.ConfigDict()
  c.prune.sparsity = 0.8        # target fraction of prunable weights removed
  c.prune.criterion = "magnitude"   # the score pruning keeps the highest of: magnitude | random | any registered
  c.prune.scope = "global"      # global | layerwise
  c.prune.exclude = ()          # glob patterns of leaves never pruned, e.g. ("output/*",)
  c.prune.layer_scale = ()      # layerwise only: ("output/*=0.5",) prunes matching leaves at half the rate
  c.prune.rewind_epoch = 0      # 0: rewind to theta_0; k: to the weights after epoch k

  c.iterative = ml_collections.ConfigDict()
  c.iterative.rounds = 5
  c.iterative.rate = 0.0        # fraction of the remaining weights per round; 0 = reach prune.sparsity in `rounds`
  c.iterative.reset = "init"    # init | rewind | none
  c.iterative.round_epochs = 0  # epochs of training per round; 0 = train.epochs (reset=none: finetune.epochs)
  c.iterative.final_epochs = 0  # >0: the last round trains this long instead
  c.iterative.random_control_every = 0   # k>0: every k-th round also trains its mask from a random init
  c.iterative.controls = ()     # sanity checks trained beside the ticket on its round's mask, the lineage the
  #                               ticket's: reinit (fresh weights) | shuffle (within layers) | invert (the round's
  #                               selection inverted: of the previous round's survivors the lowest scores stay)
  c.iterative.control_rounds = ()   # rounds that train iterative.controls; () = every round

  c.dynamic = ml_collections.ConfigDict()
  c.dynamic.at = (1 / 3, 2 / 3)   # fractions of training at which to prune
  c.dynamic.fraction = 0.0        # per event; 0 = reach the sparsity after all events

  # Pruning at initialization and the sanity checks of "Missing the Mark" (Frankle et al. 2021).
  c.prune.control = "none"          # none | shuffle (permute each layer's mask) | reinit (fresh weights) | invert
  #                                   (keep the lowest scores): applied to every unstructured method's mask
  c.prune.synflow_iterations = 100  # criterion=synflow: rescorings on the exponential schedule (Tanaka et al.)
  c.prune.score_examples = 256      # training examples the data-driven criteria (snip, grasp) score on
  c.prune.score_batchnorm = "auto"  # BatchNorm while a criterion scores: auto (its authors' mode: snip, grasp
  #                                   train; synflow eval) | train (the scored batch's statistics) | eval (running)
  c.prune.grasp_temperature = 200.0   # GraSP's T: logits / T while scoring (GraSP's and Synaptic-Flow's code: 200)
  c.prune.rewind_step = 0           # k>0: rewind to the dense run's weights after exactly k iterations (not with rewind_epoch)
  c.at_init = ml_collections.ConfigDict()
  c.at_init.rounds = 1              # prune_at_init: prune theta_0 in this many rescorings (synflow: its iterations)
  # Instability analysis (Frankle et al. 2020, linear mode connectivity): method "instability".
  c.stability = ml_collections.ConfigDict()
  c.stability.rewind_steps = (0, 100, 500)   # iterations of the dense run the copies start from
  c.stability.points = 30                    # interpolation points on the line between the two copies
  c.stability.bn_examples = 1000             # training examples BatchNorm statistics are recomputed on
  c.stability.imp_rounds = ()                # () : the ticket is the dense network pruned once to prune.sparsity |
  #                                            (2, 5, ...): IMP with rewinding to each k (iterative.rate per round),
  #                                            the pair analysed at these rounds (Frankle et al. 2020's IMP subnetworks);
  #                                            under prune.pattern n:m the last listed round keeps exactly n of every m

  # Network slimming (Liu et al. 2017): train with lambda * sum|gamma| over the prunable BatchNorm scales,
  # remove channels at each of `epochs` (one branch each), cut them out of the network and retrain it.
  # The channel groups come from the model's traced program (any model); criterion and scope choose the
  # channels for early_bird too.
  c.slimming = ml_collections.ConfigDict()
  c.slimming.penalty = 1e-4         # lambda of the L1 on BN scales (Liu et al.: 1e-4 VGG, 1e-5 ResNets); 0 = none
  c.slimming.ratio = 0.5            # fraction of the prunable channels removed
  c.slimming.epochs = ()            # epochs whose weights are pruned, one branch each; () = the last (train.epochs)
  c.slimming.criterion = "bn_scale"   # bn_scale (|gamma|, Liu et al.) | l1_filter (L1 of the output filters, Li
  #                                     et al.) | l1 | l2 (|w| / w^2 over every kernel slice of the channel's group)
  #                                     | taylor (|sum w * dL/dw| over the group, Molchanov et al. 2019)
  c.slimming.scope = "auto"         # global (one ranking over all groups) | layerwise (each group removes `ratio`
  #                                   of its own) | auto: layerwise for l1_filter, global for the others
  c.slimming.retrain_from = "pruned"  # pruned (the kept weights of the pruning epoch) | init (a fresh random init)
  #                                     | continue (the kept weights, the schedule resumed at the pruning epoch)
  c.slimming.retrain_epochs = 0     # epochs of retraining the narrower network; 0 = train.epochs

  # Early-Bird tickets (You et al. 2020): train with slimming.penalty; after each epoch the channel mask for
  # `ratio` (slimming.criterion, slimming.scope); draw the ticket when it is within `epsilon` (normalised
  # Hamming) of each of the last `window` masks; prune and shrink there, retrain as slimming.retrain_from /
  # slimming.retrain_epochs say.
  c.early_bird = ml_collections.ConfigDict()
  c.early_bird.ratio = 0.5          # fraction of the prunable channels removed
  c.early_bird.window = 4           # earlier masks each new one is compared with (4: the paper's queue of 5)
  c.early_bird.epsilon = 0.1        # the ticket is drawn when every distance is below this
  c.early_bird.max_epochs = 0       # no ticket by this epoch: prune there (recorded detected=false); 0 = train.epochs

  # Per-layer sparsity distributions, gradual magnitude pruning and dynamic sparse training (README:
  # "Prune during training and sparse training").
  c.prune.distribution = "scope"   # scope (prune.scope, prune.layer_scale) | global | uniform | erk
  #                                  | uniform_first_dense (RigL's uniform: the first layer dense, unmasked)
  #                                  | map (prune.layer_sparsity): how a pruning target is shared among layers
  c.prune.layer_sparsity = ()      # distribution=map: ("output/*=0.2",) per-layer sparsity; the rest prune.sparsity
  c.prune.pattern = "unstructured"   # unstructured | "N:M" (e.g. "2:4"): of every M consecutive weights along a
  #                                    kernel's input axis N stay; the sparsity is 1 - N/M (prune.sparsity must equal it)
  c.gradual = ml_collections.ConfigDict()   # Zhu & Gupta 2017: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
  c.gradual.start = 0.1            # t0 as a fraction of training
  c.gradual.end = 0.6              # the last pruning step (t0 + n dt) as a fraction of training
  c.gradual.every = 50             # dt: steps between pruning steps
  c.gradual.initial_sparsity = 0.0   # s_i
  c.sparse = ml_collections.ConfigDict()    # static | set | rigl: sparse from scratch, mask per prune.distribution
  c.sparse.every = 100             # dt: steps between drop-and-grow updates
  c.sparse.drop_fraction = 0.3     # alpha: fraction of each layer's weights dropped at step 0, cosine-decayed
  c.sparse.end = 0.75              # t_end as a fraction of training: no updates after it

  c.compare = ml_collections.ConfigDict()
  c.compare.methods = ("oneshot", "oneshot_reinit", "oneshot_random", "iterative", "dynamic")
  c.compare.sparsities = (0.5, 0.8, 0.9)

  c.metrics = ml_collections.ConfigDict()
  c.metrics.num_bins = 15              # equal-width confidence bins for ECE / MCE / UCE
  c.metrics.ood = ("uniform_noise", "gaussian_noise")   # + "far_points" (tabular), "NAME" / "NAME:DIR" data sets
  c.metrics.corruptions = ()           # CIFAR-10-C style, e.g. ("gaussian_noise", "contrast"); images only
  c.metrics.severities = (1, 2, 3, 4, 5)
  c.metrics.shifted = ()               # labelled shifted test sets: "tfds:cifar10_corrupted/contrast_5", "NAME[:DIR]"
  c.metrics.max_examples = 2000        # test examples for OOD, corruption and similarity figures; 0 = all
  c.metrics.similarity_eps = (0.0, 0.1, 0.5)   # uniform noise radii, in units of the inputs' std
  c.metrics.potential_delta = 0.005    # prune potential: largest sparsity with error within this of dense

  # -- issue 17: fidelity to the seeds -------------------------------------------------------------
  c.prune.from_best = False     # prune the weights of the best validation accuracy (among evaluated epochs), not the last
  return c


def from_file(path) -> ml_collections.ConfigDict:
  """The config an experiment file builds (its `get_config()`): what a config under configs/ starts from when
  it shares another's protocol, e.g. from_file(pathlib.Path(__file__).with_name("mnist_lenet.py"))."""
  spec = importlib.util.spec_from_file_location("lth_jax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flat(config, prefix: str = "") -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and value:
      flat.update(_flat(value, f"{prefix}{key}."))
    elif isinstance(value, ml_collections.ConfigDict):   # an empty group of free keys (model.kwargs)
      flat[f"{prefix}{key}"] = {}
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def describe() -> str:
  """One line per key of `base()`: key = default  # its comment in base() (continued comment lines joined).

  A comment line continues the assignment above it when its text is indented deeper than a comment of
  the function body's own (`  # Section...`), which starts a new section instead.
  """
  meanings, last = {}, None
  for line in inspect.getsource(base).splitlines():
    assignment = re.match(r"(\s*)c\.([\w.]+)\s*=[^#]*(?:#\s*(.*))?$", line)
    comment = re.match(r"(\s*#\s*)(.*)$", line)
    if assignment:
      indent, last = len(assignment.group(1)), assignment.group(2)
      meanings[last] = assignment.group(3) or ""
    elif comment and last and meanings.get(last) and len(comment.group(1)) > indent + 2:
      meanings[last] += " " + comment.group(2)
    else:
      last = None
  rows = [(key, repr(value), meanings.get(key, "")) for key, value in _flat(base()).items()]
  width = min(48, max(len(f"{k} = {v}") for k, v, _ in rows))
  return "\n".join(f"{f'{k} = {v}':<{width}}  # {m}".rstrip(" #") for k, v, m in rows)


if __name__ == "__main__":
  print(describe())
