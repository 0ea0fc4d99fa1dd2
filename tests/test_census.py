"""A census of bad inputs: every one stops in one line naming its key (or file), before anything is trained
or written.

Each case runs the command line's `cli.run` in this process (a subprocess per case would import JAX 150
times); `_train` is replaced by a function that fails the test, so an input that is accepted cannot train.
A handful of cases run `python main.py` for real, for the exit status and the one-line format, and the
flag cases go through main.py's own flag parsing (`cli.define_config`, `cli.parse_flags`) in-process.

Asserted for each: lth_jax.errors.UserError (exit status 2 on the command line), a message of one line
holding every expected fragment (the key or file, and the allowed values), and no config.json in the workdir.
"""

import io
import math
import pickle
import struct
import tarfile

import ml_collections
import numpy as np
import PIL.Image
import pytest

from lth_jax import cli
from lth_jax import report
from lth_jax.errors import UserError
from tests.helpers import flag_run, main_py, override, small_config

NAN, INF = math.nan, math.inf


def model(**keys):
  """A config.model of exactly these keys (a config file made for that model)."""
  return ml_collections.ConfigDict(keys)


# (id, overrides of tests.helpers.small_config: moons, an MLP, 4 epochs, fragments the message must hold)
CONFIG_CASES = [
    # top level
    ("seed_negative", {"seed": -1}, ["config.seed=-1", ">= 0"]),
    ("replicates_zero", {"replicates": 0}, ["config.replicates=0", ">= 1"]),
    ("method_unknown", {"method": "bogus"}, ["config.method='bogus'", "allowed: dense"]),
    ("workdir_blank", {"workdir": " "}, ["config.workdir is empty"]),
    ("mode_unknown", {"mode": "bogus"}, ["config.mode='bogus'", "allowed: train, eval"]),
    ("restore_in_train_mode", {"restore": "somewhere"}, ["config.restore", "mode=eval"]),
    ("eval_without_restore", {"mode": "eval"}, ["config.mode=eval needs --config.restore"]),
    ("eval_restore_missing", {"mode": "eval", "restore": "/nonexistent/ticket"}, ["/nonexistent/ticket"]),
    # checkpoint
    ("checkpoint_every_zero", {"checkpoint.every": 0}, ["config.checkpoint.every", ">= 1"]),
    ("checkpoint_keep_zero", {"checkpoint.keep": 0}, ["config.checkpoint.keep", ">= 1"]),
    ("checkpoint_every_negative", {"checkpoint.every": -5}, ["config.checkpoint.every", ">= 1"]),
    # data
    ("data_name_unknown", {"data.name": "bogus"}, ["config.data.name='bogus'", "allowed:"]),
    ("val_fraction_one", {"data.val_fraction": 1.0}, ["config.data.val_fraction=1.0", "[0, 1)"]),
    ("val_fraction_negative", {"data.val_fraction": -0.1}, ["config.data.val_fraction=-0.1", "[0, 1)"]),
    ("val_fraction_nan", {"data.val_fraction": NAN}, ["config.data.val_fraction=nan", "[0, 1)"]),
    ("val_fraction_rounds_to_none", {"data.val_fraction": 0.001}, ["config.data.val_fraction=0.001", "rounds to none"]),
    ("test_fraction_one", {"data.test_fraction": 1.0}, ["config.data.test_fraction=1.0", "[0, 1)"]),
    ("test_fraction_rounds_to_none", {"data.test_fraction": 0.0}, ["test split", "is empty"]),
    ("fractions_leave_no_train", {"data.val_fraction": 0.6, "data.test_fraction": 0.5},
     ["config.data.val_fraction + test_fraction leaves no training examples"]),
    ("moons_no_samples", {"data.n_samples": 0}, ["config.data.n_samples=0", ">= 1"]),
    ("moons_negative_noise", {"data.noise": -1.0}, ["config.data.noise=-1.0", ">= 0"]),
    ("subset_negative", {"data.subset": -1}, ["config.data.subset=-1", ">= 0"]),
    ("subset_beyond_train", {"data.subset": 100000}, ["config.data.subset=100000", "[1, "]),
    ("test_subset_negative", {"data.test_subset": -1}, ["config.data.test_subset=-1", ">= 0"]),
    ("test_subset_beyond_test", {"data.test_subset": 100000}, ["config.data.test_subset=100000", "[1, "]),
    ("augment_unknown", {"data.augment": "bogus"}, ["config.data.augment='bogus'", "allowed: none, crop_flip"]),
    ("augment_tabular", {"data.augment": "crop_flip"}, ["config.data.augment='crop_flip' needs images"]),
    ("device_dtype_unknown", {"data.device_dtype": "float16"}, ["config.data.device_dtype='float16'", "allowed:"]),
    ("pipeline_unknown", {"data.pipeline": "disk"}, ["config.data.pipeline='disk'", "allowed: memory, stream, auto"]),
    ("device_budget_not_positive", {"data.pipeline": "auto", "data.device_budget_mb": 0.0},
     ["config.data.device_budget_mb=0.0", "> 0"]),
    # images decoded on demand (data.image_size)
    ("image_size_negative", {"data.image_size": -1}, ["config.data.image_size=-1", ">= 0"]),
    ("image_size_on_moons", {"data.image_size": 32}, ["config.data.image_size=32", "'moons'", "image_folder"]),
    ("image_size_in_memory", {"data.name": "image_folder", "data.image_size": 32},
     ["config.data.image_size=32", "config.data.pipeline='stream'", "not 'memory'"]),
    ("image_size_float32_on_host", {"data.name": "image_folder", "data.image_size": 32, "data.pipeline": "stream",
                                    "data.device_dtype": "float32"}, ["config.data.device_dtype='float32'", "'auto'"]),
    ("resize_below_image_size", {"data.name": "image_folder", "data.image_size": 32, "data.pipeline": "stream",
                                 "data.resize_size": 16},
     ["config.data.resize_size=16", ">= config.data.image_size=32"]),
    ("crop_scale_above_one", {"data.crop_scale": (0.5, 1.5)}, ["config.data.crop_scale=(0.5, 1.5)", "<= 1"]),
    ("crop_ratio_reversed", {"data.crop_ratio": (1.25, 0.8)}, ["config.data.crop_ratio=(1.25, 0.8)", "low <= high"]),
    ("crop_ratio_one_number", {"data.crop_ratio": (1.0,)}, ["config.data.crop_ratio=(1.0,)", "(low, high)"]),
    ("workers_negative", {"data.workers": -2}, ["config.data.workers=-2", ">= 0"]),
    ("mirror_not_a_url", {"data.mirror": "ftp://example.org"}, ["config.data.mirror", "http://"]),
    ("checksums_missing", {"data.checksums": "/nonexistent/SHA256SUMS"}, ["config.data.checksums", "/nonexistent"]),
    ("tfds_without_name", {"data.name": "tfds"}, ["config.data.tfds_name is empty"]),
    ("cache_dir_unwritable", {"data.name": "mnist", "data.cache_dir": "/proc/lth_jax_cache"},
     ["config.data.cache_dir", "/proc/lth_jax_cache"]),
    ("mnist_dir_missing", {"data.name": "mnist", "data.dir": "/nonexistent/mnist"}, ["/nonexistent/mnist"]),
    ("fashion_dir_missing", {"data.name": "fashion_mnist", "data.dir": "/nonexistent/f"}, ["/nonexistent/f"]),
    ("cifar10_dir_missing", {"data.name": "cifar10", "data.dir": "/nonexistent/c10"},
     ["config.data.dir='/nonexistent/c10'", "does not exist"]),
    ("cifar100_dir_missing", {"data.name": "cifar100", "data.dir": "/nonexistent/c100"},
     ["config.data.dir='/nonexistent/c100'", "does not exist"]),
    ("image_folder_dir_missing", {"data.name": "image_folder", "data.dir": "/nonexistent/imgs"},
     ["config.data.dir='/nonexistent/imgs'", "does not exist"]),
    ("image_folder_dir_empty", {"data.name": "image_folder"}, ["config.data.dir is empty"]),
    ("npz_dir_empty", {"data.name": "npz"}, ["config.data.dir is empty"]),
    ("npz_dir_missing", {"data.name": "npz", "data.dir": "/nonexistent/d.npz"}, ["/nonexistent/d.npz"]),
    # model
    ("model_unknown", {"model.name": "bogus"}, ["config.model.name='bogus' is not a model", "allowed:"]),
    ("mlp_width_zero", {"model.widths": (0,)}, ["config.model.widths=(0,)", ">= 1"]),
    ("mlp_width_negative", {"model.widths": (16, -3)}, ["config.model.widths=(16, -3)", ">= 1"]),
    ("activation_unknown", {"model.activation": "swish"}, ["config.model.activation='swish'", "allowed:"]),
    ("output_activation_unknown", {"model.output_activation": "softmax"},
     ["config.model.output_activation='softmax'", "allowed:"]),
    ("other_models_key", {"model.name": "lenet300_100"}, ["config.model.widths", "does not apply"]),
    ("conv2_on_tabular", {"model": model(name="conv2")}, ["config.model.name='conv2'", "needs images"]),
    ("conv6_on_tabular", {"model": model(name="conv6")}, ["config.model.name='conv6'", "needs images"]),
    ("resnet20_on_tabular", {"model": model(name="resnet20", width=4)}, ["config.model.name='resnet20'", "needs images"]),
    ("vgg11_on_tabular", {"model": model(name="vgg11")}, ["config.model.name='vgg11'", "needs images"]),
    ("resnet_width_zero", {"data.name": "digits", "model": model(name="resnet20", width=0)},
     ["config.model.width=0", ">= 1"]),
    ("resnet18_width_negative", {"data.name": "digits", "model": model(name="resnet18", width=-2)},
     ["config.model.width=-2", ">= 1"]),
    ("resnet_bottleneck_depth", {"data.name": "digits", "model": model(name="resnet32", width=4, bottleneck=True)},
     ["config.model.bottleneck=True", "depth"]),
    ("resnet_block_widths", {"data.name": "digits", "model": model(name="resnet20", width=4, block_widths=(1, 2))},
     ["config.model.block_widths"]),
    ("vgg_widths", {"data.name": "digits", "model": model(name="vgg11", widths=(4, 4))}, ["config.model.widths"]),
    ("dir_for_a_generated_source", {"data.dir": "/data/mnist"},
     ["config.data.dir='/data/mnist' is not read by config.data.name='moons'", "mnist", "npz"]),
    ("vgg11_on_8x8_images", {"data.name": "digits", "model": model(name="vgg11")},
     ["config.model.name=vgg11", "needs at least 32x32 pixels", "8x8"]),
    # train
    ("epochs_zero", {"train.epochs": 0}, ["config.train.epochs=0", ">= 1"]),
    ("epochs_negative", {"train.epochs": -2}, ["config.train.epochs=-2", ">= 1"]),
    ("batch_size_zero", {"train.batch_size": 0}, ["config.train.batch_size=0", ">= 1"]),
    ("batch_size_beyond_train", {"train.batch_size": 100000}, ["config.train.batch_size=100000", "[1, "]),
    ("eval_batch_size_zero", {"train.eval_batch_size": 0}, ["config.train.eval_batch_size=0", ">= 1"]),
    ("eval_batch_size_negative", {"train.eval_batch_size": -8}, ["config.train.eval_batch_size=-8", ">= 1"]),
    ("log_every_negative", {"train.log_every": -1}, ["config.train.log_every=-1", ">= 0"]),
    ("num_devices_negative", {"train.num_devices": -1}, ["config.train.num_devices=-1", ">= 0"]),
    ("num_devices_too_many", {"train.num_devices": 64}, ["config.train.num_devices=64", "devices are available"]),
    ("num_processes_without_distributed", {"train.num_processes": 2},
     ["config.train.num_processes=2", "config.train.distributed=True"]),
    ("process_id_without_distributed", {"train.process_id": 0},
     ["config.train.process_id=0", "config.train.distributed=True"]),
    ("coordinator_without_distributed", {"train.coordinator": "127.0.0.1:1234"},
     ["config.train.coordinator='127.0.0.1:1234'", "config.train.distributed=True"]),
    ("distributed_without_coordinator", {"train.distributed": True},
     ["config.train.distributed=True", "config.train.coordinator=HOST:PORT"]),
    ("coordinator_without_port", {"train.distributed": True, "train.coordinator": "127.0.0.1"},
     ["config.train.coordinator", "'127.0.0.1'", "host:port"]),
    ("coordinator_port_not_a_number", {"train.distributed": True, "train.coordinator": "127.0.0.1:http"},
     ["config.train.coordinator", "host:port"]),
    ("coordinator_port_too_high", {"train.distributed": True, "train.coordinator": "127.0.0.1:70000"},
     ["config.train.coordinator", "[1, 65535]"]),
    ("coordinator_without_host", {"train.distributed": True, "train.coordinator": ":1234"},
     ["config.train.coordinator", "host:port"]),
    ("process_id_beyond_processes", {"train.distributed": True, "train.coordinator": "127.0.0.1:1234",
                                     "train.num_processes": 2, "train.process_id": 2},
     ["config.train.process_id=2", "[0, 1]"]),
    ("process_id_below_minus_one", {"train.distributed": True, "train.coordinator": "127.0.0.1:1234",
                                    "train.process_id": -2}, ["config.train.process_id=-2", ">= -1"]),
    ("num_processes_negative", {"train.distributed": True, "train.coordinator": "127.0.0.1:1234",
                                "train.num_processes": -1}, ["config.train.num_processes=-1", ">= 0"]),
    ("mesh_unknown_axis", {"train.mesh": "model=2"}, ["config.train.mesh='model=2'", "tickets, data"]),
    ("mesh_size_zero", {"train.mesh": "data=0"}, ["config.train.mesh='data=0'", "sizes >= 1"]),
    ("mesh_axis_twice", {"train.mesh": "data=1,data=1"}, ["config.train.mesh='data=1,data=1'", "each axis once"]),
    ("mesh_too_many_devices", {"train.mesh": "data=64"}, ["config.train.mesh='data=64'", "needs 64 devices"]),
    ("mesh_and_num_devices", {"train.mesh": "data=1", "train.num_devices": 1},
     ["config.train.mesh='data=1'", "config.train.num_devices at 0"]),
    ("mesh_tickets_without_vmap", {"train.mesh": "tickets=2"},
     ["config.train.mesh='tickets=2'", "config.train.vmap=True"]),
    ("coordinator_timeout_without_distributed", {"train.coordinator_timeout_s": 5},
     ["config.train.coordinator_timeout_s=5", "config.train.distributed=True"]),
    ("coordinator_timeout_zero", {"train.distributed": True, "train.coordinator": "127.0.0.1:1234",
                                  "train.coordinator_timeout_s": 0}, ["config.train.coordinator_timeout_s=0", ">= 1"]),
    ("loop_unknown", {"train.loop": "bogus"}, ["config.train.loop='bogus'", "allowed:"]),
    ("cpu_conv_unknown", {"train.cpu_conv": "maybe"}, ["config.train.cpu_conv='maybe'", "allowed:"]),
    ("compute_dtype_unknown", {"train.compute_dtype": "float16"}, ["config.train.compute_dtype='float16'", "allowed:"]),
    ("eval_every_zero", {"train.eval_every": 0}, ["config.train.eval_every=0", ">= 1"]),
    # optimizer
    ("optimizer_unknown", {"optimizer.name": "rmsprop"}, ["config.optimizer.name='rmsprop'", "allowed:"]),
    ("lr_negative", {"optimizer.lr": -0.1}, ["config.optimizer.lr=-0.1", "> 0"]),
    ("lr_zero", {"optimizer.lr": 0.0}, ["config.optimizer.lr=0.0", "> 0"]),
    ("lr_nan", {"optimizer.lr": NAN}, ["config.optimizer.lr=nan", "> 0"]),
    ("lr_inf", {"optimizer.lr": INF}, ["config.optimizer.lr=inf", "> 0"]),
    ("momentum_two", {"optimizer.momentum": 2.0}, ["config.optimizer.momentum=2.0", "[0, 1)"]),
    ("momentum_one", {"optimizer.momentum": 1.0}, ["config.optimizer.momentum=1.0", "[0, 1)"]),
    ("momentum_negative", {"optimizer.momentum": -0.5}, ["config.optimizer.momentum=-0.5", "[0, 1)"]),
    ("b1_one", {"optimizer.b1": 1.0}, ["config.optimizer.b1=1.0", "[0, 1)"]),
    ("b2_above_one", {"optimizer.b2": 1.5}, ["config.optimizer.b2=1.5", "[0, 1)"]),
    ("eps_zero", {"optimizer.eps": 0.0}, ["config.optimizer.eps=0.0", "> 0"]),
    ("eps_nan", {"optimizer.eps": NAN}, ["config.optimizer.eps=nan", "> 0"]),
    ("weight_decay_negative", {"optimizer.weight_decay": -1e-4}, ["config.optimizer.weight_decay=-0.0001", ">= 0"]),
    ("weight_decay_inf", {"optimizer.weight_decay": INF}, ["config.optimizer.weight_decay=inf", ">= 0"]),
    ("schedule_unknown", {"optimizer.schedule": "linear"}, ["config.optimizer.schedule='linear'", "allowed:"]),
    ("milestones_decreasing", {"optimizer.milestones": (3, 1)}, ["config.optimizer.milestones=(3, 1)", "increasing"]),
    ("milestones_zero", {"optimizer.milestones": (0, 2)}, ["config.optimizer.milestones=(0, 2)", ">= 1"]),
    ("gamma_zero", {"optimizer.gamma": 0.0}, ["config.optimizer.gamma=0.0", "> 0"]),
    ("gamma_nan", {"optimizer.gamma": NAN}, ["config.optimizer.gamma=nan", "> 0"]),
    ("warmup_negative", {"optimizer.warmup_epochs": -1.0}, ["config.optimizer.warmup_epochs=-1.0", "[0, 4]"]),
    ("warmup_beyond_training", {"optimizer.warmup_epochs": 10.0}, ["config.optimizer.warmup_epochs=10.0", "[0, 4]"]),
    # finetune
    ("finetune_epochs_negative", {"finetune.epochs": -3}, ["config.finetune.epochs=-3", ">= 1"]),
    ("finetune_epochs_zero", {"finetune.epochs": 0}, ["config.finetune.epochs=0", ">= 1"]),
    ("finetune_lr_negative", {"finetune.lr": -0.1}, ["config.finetune.lr=-0.1", ">= 0"]),
    ("finetune_lr_nan", {"finetune.lr": NAN}, ["config.finetune.lr=nan", ">= 0"]),
    ("finetune_schedule_unknown", {"finetune.schedule": "linear"}, ["config.finetune.schedule='linear'", "allowed:"]),
    # prune
    ("sparsity_one", {"prune.sparsity": 1.0}, ["config.prune.sparsity=1.0", "[0, 1)"]),
    ("sparsity_nan", {"prune.sparsity": NAN}, ["config.prune.sparsity=nan", "[0, 1)"]),
    ("criterion_unknown", {"prune.criterion": "l2"}, ["config.prune.criterion='l2'", "allowed:"]),
    ("scope_unknown", {"prune.scope": "local"}, ["config.prune.scope='local'", "allowed:"]),
    ("exclude_everything", {"prune.exclude": ("*",)}, ["config.prune.exclude=('*',)", "no prunable weights"]),
    ("layer_scale_with_global_scope", {"prune.layer_scale": ("output/*=0.5",)},
     ["config.prune.layer_scale", "config.prune.scope='layerwise'"]),
    ("layer_scale_malformed", {"prune.scope": "layerwise", "prune.layer_scale": ("output",)},
     ["config.prune.layer_scale"]),
    ("layer_scale_negative", {"prune.scope": "layerwise", "prune.layer_scale": ("output/*=-1",)},
     ["config.prune.layer_scale"]),
    ("layer_scale_not_a_number", {"prune.scope": "layerwise", "prune.layer_scale": ("output/*=half",)},
     ["config.prune.layer_scale"]),
    ("exclude_matches_nothing", {"prune.exclude": ("outptu/*",)}, ["config.prune.exclude holds 'outptu/*'",
                                                                  "matches no parameter", "hidden_0/kernel"]),
    ("layer_scale_matches_nothing", {"prune.scope": "layerwise", "prune.layer_scale": ("conv_*=0.5",)},
     ["config.prune.layer_scale holds 'conv_*'", "matches no parameter"]),
    ("layer_sparsity_matches_nothing", {"prune.distribution": "map", "prune.layer_sparsity": ("stage1*=0.5",)},
     ["config.prune.layer_sparsity holds 'stage1*'", "matches no parameter"]),
    ("layer_scale_with_erk", {"prune.scope": "layerwise", "prune.distribution": "erk",
                              "prune.layer_scale": ("output/*=0.5",)}, ["config.prune.layer_scale", "'scope'"]),
    ("rewind_epoch_negative", {"prune.rewind_epoch": -1}, ["config.prune.rewind_epoch=-1", "[0, config.train.epochs)"]),
    ("rewind_epoch_at_end", {"prune.rewind_epoch": 4}, ["config.prune.rewind_epoch=4", "[0, config.train.epochs)"]),
    ("control_unknown", {"prune.control": "flip"}, ["config.prune.control='flip'", "allowed:"]),
    ("synflow_iterations_zero", {"prune.synflow_iterations": 0}, ["config.prune.synflow_iterations=0", ">= 1"]),
    ("score_examples_zero", {"prune.score_examples": 0}, ["config.prune.score_examples=0", ">= 1"]),
    ("rewind_step_negative", {"prune.rewind_step": -1}, ["config.prune.rewind_step=-1", ">= 0"]),
    ("rewind_step_and_epoch", {"prune.rewind_step": 3, "prune.rewind_epoch": 1},
     ["config.prune.rewind_step=3", "config.prune.rewind_epoch=1"]),
    ("rewind_step_beyond_dense_run", {"method": "oneshot_reinit", "prune.rewind_step": 100000},
     ["config.prune.rewind_step=100000", "dense run"]),
    ("distribution_unknown", {"prune.distribution": "normal"}, ["config.prune.distribution='normal'", "allowed:"]),
    ("layer_sparsity_malformed", {"prune.distribution": "map", "prune.layer_sparsity": ("output",)},
     ["config.prune.layer_sparsity"]),
    ("layer_sparsity_above_one", {"prune.distribution": "map", "prune.layer_sparsity": ("output/*=1.5",)},
     ["config.prune.layer_sparsity"]),
    ("from_best_without_val", {"prune.from_best": True, "data.val_fraction": 0.0},
     ["config.prune.from_best", "config.data.val_fraction > 0"]),
    ("control_reinit_with_dynamic", {"method": "dynamic", "prune.control": "reinit"},
     ["config.prune.control='reinit'", "dynamic"]),
    ("pattern_unparsable", {"prune.pattern": "2-4"}, ["config.prune.pattern='2-4' is not a pattern", "'N:M'"]),
    ("pattern_n_not_below_m", {"prune.pattern": "4:4"}, ["config.prune.pattern='4:4' is not a pattern", "1 <= N < M"]),
    ("pattern_other_sparsity", {"prune.pattern": "1:2"},
     ["config.prune.pattern='1:2' fixes the sparsity at 1 - 1/2 = 0.5", "config.prune.sparsity=0.5"]),
    ("pattern_m_not_dividing_inputs", {"method": "oneshot", "prune.pattern": "2:4", "prune.sparsity": 0.5},
     ["config.prune.pattern='2:4' cannot apply to hidden_0/kernel", "is 2, not a multiple of 4", "config.prune.exclude"]),
    ("pattern_with_rigl", {"method": "rigl", "prune.pattern": "1:2", "prune.sparsity": 0.5},
     ["config.prune.pattern='1:2' cannot apply to method 'rigl'"]),
    ("pattern_compare_sparsities", {"method": "compare", "prune.pattern": "1:2", "prune.sparsity": 0.5},
     ["config.compare.sparsities=(0.5,)"]),
    ("pattern_with_erk", {"method": "oneshot", "prune.pattern": "1:2", "prune.sparsity": 0.5, "prune.distribution": "erk"},
     ["config.prune.distribution='erk'", "scope, global, uniform"]),
    ("pattern_with_shuffle", {"method": "oneshot", "prune.pattern": "1:2", "prune.sparsity": 0.5, "prune.control": "shuffle"},
     ["config.prune.control='shuffle'", "breaks the groups"]),
    ("pattern_with_iterative_rate", {"method": "iterative", "prune.pattern": "1:2", "prune.sparsity": 0.5,
                                     "iterative.rate": 0.2}, ["config.iterative.rate=0.2", "leave it 0"]),
    # iterative
    ("rounds_zero", {"iterative.rounds": 0}, ["config.iterative.rounds=0", ">= 1"]),
    ("rate_one", {"iterative.rate": 1.0}, ["config.iterative.rate=1.0", "[0, 1)"]),
    ("reset_unknown", {"iterative.reset": "bogus"}, ["config.iterative.reset='bogus'", "allowed: init, rewind, none"]),
    ("round_epochs_negative", {"iterative.round_epochs": -1}, ["config.iterative.round_epochs=-1", ">= 0"]),
    ("final_epochs_negative", {"iterative.final_epochs": -1}, ["config.iterative.final_epochs=-1", ">= 0"]),
    ("random_control_every_negative", {"iterative.random_control_every": -2},
     ["config.iterative.random_control_every=-2", ">= 0"]),
    ("round_epochs_before_rewind", {"iterative.reset": "rewind", "prune.rewind_epoch": 2, "iterative.round_epochs": 1},
     ["config.iterative.round_epochs=1", "config.prune.rewind_epoch=2"]),
    # dynamic
    ("dynamic_at_decreasing", {"dynamic.at": (0.5, 0.2)}, ["config.dynamic.at=(0.5, 0.2)", "(0, 1)"]),
    ("dynamic_at_zero", {"dynamic.at": (0.0,)}, ["config.dynamic.at=(0.0,)", "(0, 1)"]),
    ("dynamic_at_one", {"dynamic.at": (1.0,)}, ["config.dynamic.at=(1.0,)", "(0, 1)"]),
    ("dynamic_at_repeated", {"dynamic.at": (0.5, 0.5)}, ["config.dynamic.at=(0.5, 0.5)", "increasing"]),
    ("dynamic_fraction_one", {"dynamic.fraction": 1.0}, ["config.dynamic.fraction=1.0", "[0, 1)"]),
    # at_init
    ("at_init_rounds_zero", {"at_init.rounds": 0}, ["config.at_init.rounds=0", ">= 1"]),
    ("at_init_rounds_negative", {"at_init.rounds": -1}, ["config.at_init.rounds=-1", ">= 1"]),
    # stability
    ("rewind_steps_empty", {"stability.rewind_steps": ()}, ["config.stability.rewind_steps=()", "increasing"]),
    ("rewind_steps_negative", {"stability.rewind_steps": (-1, 5)}, ["config.stability.rewind_steps=(-1, 5)"]),
    ("rewind_steps_decreasing", {"stability.rewind_steps": (5, 3)}, ["config.stability.rewind_steps=(5, 3)"]),
    ("stability_points_one", {"stability.points": 1}, ["config.stability.points=1", ">= 2"]),
    ("bn_examples_zero", {"stability.bn_examples": 0}, ["config.stability.bn_examples=0", ">= 1"]),
    ("rewind_steps_beyond_dense_run", {"method": "instability", "stability.rewind_steps": (0, 100000)},
     ["config.stability.rewind_steps holds 100000", "iterations"]),
    # slimming
    ("slimming_penalty_negative", {"slimming.penalty": -1e-4}, ["config.slimming.penalty=-0.0001", ">= 0"]),
    ("slimming_ratio_zero", {"slimming.ratio": 0.0}, ["config.slimming.ratio=0.0", "(0, 1)"]),
    ("slimming_ratio_one", {"slimming.ratio": 1.0}, ["config.slimming.ratio=1.0", "(0, 1)"]),
    ("slimming_criterion_unknown", {"slimming.criterion": "gamma"},
     ["config.slimming.criterion='gamma'", "allowed: l1, l2, l1_filter, bn_scale, taylor"]),
    ("slimming_scope_unknown", {"slimming.scope": "rowwise"},
     ["config.slimming.scope='rowwise'", "allowed: auto, global, layerwise"]),
    ("slimming_retrain_from_unknown", {"slimming.retrain_from": "scratch"},
     ["config.slimming.retrain_from='scratch'", "allowed:"]),
    ("slimming_retrain_epochs_negative", {"slimming.retrain_epochs": -1},
     ["config.slimming.retrain_epochs=-1", ">= 0"]),
    ("slimming_by_bn_scale_on_an_mlp", {"method": "slimming"},   # no BatchNorm: l1, l2, ... can prune it
     ["config.slimming.criterion='bn_scale'", "config.model.name='mlp' has none", "allowed: l1, l2, l1_filter, taylor"]),
    ("slimming_epochs_beyond_training", {"method": "slimming", "data.name": "digits",
                                         "model": model(name="resnet20", width=4), "slimming.epochs": (9,)},
     ["config.slimming.epochs=(9,)", "[1, config.train.epochs=4]"]),
    ("slimming_epochs_decreasing", {"method": "slimming", "data.name": "digits",
                                    "model": model(name="resnet20", width=4), "slimming.epochs": (3, 1)},
     ["config.slimming.epochs=(3, 1)", "increasing"]),
    ("slimming_continue_too_short", {"method": "slimming", "data.name": "digits",
                                     "model": model(name="resnet20", width=4), "slimming.retrain_from": "continue",
                                     "slimming.retrain_epochs": 2}, ["config.slimming.retrain_epochs=2"]),
    # early_bird
    ("early_bird_ratio_one", {"early_bird.ratio": 1.0}, ["config.early_bird.ratio=1.0", "(0, 1)"]),
    ("early_bird_window_zero", {"early_bird.window": 0}, ["config.early_bird.window=0", ">= 1"]),
    ("early_bird_epsilon_zero", {"early_bird.epsilon": 0.0}, ["config.early_bird.epsilon=0.0", "(0, 1]"]),
    ("early_bird_epsilon_above_one", {"early_bird.epsilon": 1.5}, ["config.early_bird.epsilon=1.5", "(0, 1]"]),
    ("early_bird_max_epochs_negative", {"early_bird.max_epochs": -1}, ["config.early_bird.max_epochs=-1"]),
    ("early_bird_max_epochs_beyond", {"method": "early_bird", "data.name": "digits",
                                      "model": model(name="resnet20", width=4), "early_bird.max_epochs": 9},
     ["config.early_bird.max_epochs=9", "[0, config.train.epochs=4]"]),
    # gradual
    ("gradual_start_after_end", {"gradual.start": 0.7, "gradual.end": 0.6},
     ["config.gradual.start=0.7", "0 <= start < end <= 1"]),
    ("gradual_end_above_one", {"gradual.end": 1.5}, ["config.gradual.start=0.1 and end=1.5"]),
    ("gradual_every_zero", {"gradual.every": 0}, ["config.gradual.every=0", ">= 1"]),
    ("gradual_initial_above_target", {"gradual.initial_sparsity": 0.9},
     ["config.gradual.initial_sparsity=0.9", "config.prune.sparsity"]),
    ("gradual_no_step_fits", {"method": "gradual", "gradual.every": 100000},
     ["config.gradual", "no pruning step fits", "config.gradual.every"]),
    # sparse
    ("sparse_every_zero", {"sparse.every": 0}, ["config.sparse.every=0", ">= 1"]),
    ("sparse_drop_fraction_above_one", {"sparse.drop_fraction": 1.5}, ["config.sparse.drop_fraction=1.5", "[0, 1]"]),
    ("sparse_drop_fraction_negative", {"sparse.drop_fraction": -0.1}, ["config.sparse.drop_fraction=-0.1", "[0, 1]"]),
    ("sparse_end_zero", {"sparse.end": 0.0}, ["config.sparse.end=0.0", "(0, 1]"]),
    ("sparse_end_above_one", {"sparse.end": 1.5}, ["config.sparse.end=1.5", "(0, 1]"]),
    # compare
    ("compare_no_methods", {"compare.methods": ()}, ["config.compare.methods is empty"]),
    ("compare_unknown_method", {"compare.methods": ("bogus",)}, ["config.compare.methods holds 'bogus'", "allowed:"]),
    ("compare_dense", {"compare.methods": ("dense",)}, ["config.compare.methods holds 'dense'", "allowed:"]),
    ("compare_no_sparsities", {"compare.sparsities": ()}, ["config.compare.sparsities is empty"]),
    ("compare_sparsity_one", {"compare.sparsities": (0.5, 1.0)}, ["config.compare.sparsities holds 1.0", "[0, 1)"]),
    ("compare_sparsity_negative", {"compare.sparsities": (-0.5,)}, ["config.compare.sparsities holds -0.5", "[0, 1)"]),
    # metrics
    ("num_bins_zero", {"metrics.num_bins": 0}, ["config.metrics.num_bins=0", ">= 1"]),
    ("num_bins_negative", {"metrics.num_bins": -15}, ["config.metrics.num_bins=-15", ">= 1"]),
    ("ood_unknown", {"metrics.ood": ("bogus",)}, ["config.metrics.ood holds 'bogus'", "allowed:"]),
    ("ood_far_points_on_images", {"data.name": "digits", "metrics.ood": ("far_points",)},
     ["config.metrics.ood 'far_points'", "tabular"]),
    ("ood_data_set_missing", {"metrics.ood": ("mnist:/nonexistent/ood",)}, ["/nonexistent/ood"]),
    ("corruption_unknown", {"data.name": "digits", "metrics.corruptions": ("rain",)},
     ["config.metrics.corruptions holds 'rain'", "allowed:"]),
    ("corruptions_on_tabular", {"metrics.corruptions": ("contrast",)},
     ["config.metrics.corruptions needs image data"]),
    ("severity_zero", {"metrics.severities": (0, 1)}, ["config.metrics.severities holds 0", "allowed: 1, 2, 3, 4, 5"]),
    ("severity_six", {"metrics.severities": (6,)}, ["config.metrics.severities holds 6", "allowed: 1, 2, 3, 4, 5"]),
    ("shifted_unknown", {"metrics.shifted": ("bogus",)}, ["config.metrics.shifted holds 'bogus'", "allowed:"]),
    ("max_examples_negative", {"metrics.max_examples": -1}, ["config.metrics.max_examples=-1", ">= 0"]),
    ("similarity_eps_negative", {"metrics.similarity_eps": (0.0, -0.1)},
     ["config.metrics.similarity_eps holds -0.1", ">= 0"]),
    ("similarity_eps_nan", {"metrics.similarity_eps": (NAN,)}, ["config.metrics.similarity_eps holds nan", ">= 0"]),
    ("potential_delta_negative", {"metrics.potential_delta": -0.01}, ["config.metrics.potential_delta=-0.01", ">= 0"]),
]


@pytest.fixture
def refused(tmp_path, monkeypatch):
  """refused(config) -> the one-line message a UserError stops `cli.run(config)` with, nothing written."""
  def accepted(*args, **kwargs):
    raise AssertionError("the input was accepted: training started")

  monkeypatch.setattr(cli, "_train", accepted)
  monkeypatch.setattr(report, "environment", lambda: {})   # two git calls per case, not needed here
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):   # no cluster to join
    monkeypatch.delenv(name, raising=False)

  def run(config) -> str:
    if config.workdir == "workdir":
      config.workdir = str(tmp_path / "w")
    with pytest.raises(UserError) as caught:
      cli.run(config)
    message = str(caught.value)
    assert "\n" not in message, message
    assert not (tmp_path / "w" / "config.json").exists()
    return message
  return run


@pytest.mark.parametrize("overrides, fragments", [case[1:] for case in CONFIG_CASES],
                         ids=[case[0] for case in CONFIG_CASES])
def test_a_bad_config_value_stops_in_one_line_before_anything_is_written(refused, overrides, fragments):
  message = refused(override(small_config(), **overrides))
  for fragment in fragments:
    assert fragment in message, message


# ------------------------------------------------------------------------------------- data on disk


def save_npz(path, **arrays):
  np.savez(path, **arrays)
  return path


def images(n, size=8, channels=1, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def labels(n, classes=2):
  return np.arange(n) % classes


def npz_arrays(n_train=40, n_test=10, **replace):
  arrays = {"x_train": images(n_train), "y_train": labels(n_train), "x_test": images(n_test, seed=1),
            "y_test": labels(n_test)}
  arrays.update(replace)
  return {k: v for k, v in arrays.items() if v is not None}


def write_idx(path, array: np.ndarray, magic_code=0x08, cut: int = 0):
  header = struct.pack(">HBB", 0, magic_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.astype(">u1").tobytes()
  path.write_bytes(data[:len(data) - cut] if cut else data)


def mnist_dir(tmp_path, n_train=30, n_test=10, **change):
  """The four MNIST IDX files of random 28x28 pixels; `change` maps a file name to 'missing', 'garbage',
  'cut', 'magic' or 'count'."""
  folder = tmp_path / "mnist"
  folder.mkdir()
  parts = {"train-images-idx3-ubyte": images(n_train, 28)[..., 0], "train-labels-idx1-ubyte": labels(n_train, 10),
           "t10k-images-idx3-ubyte": images(n_test, 28)[..., 0], "t10k-labels-idx1-ubyte": labels(n_test, 10)}
  for name, array in parts.items():
    how = change.get(name.replace("-", "_"))
    if how == "missing":
      continue
    if how == "garbage":
      (folder / f"{name}.gz").write_bytes(b"not gzip at all")
    elif how == "cut":
      write_idx(folder / name, array, cut=5)
    elif how == "magic":
      write_idx(folder / name, array, magic_code=0x42)
    elif how == "count":
      write_idx(folder / name, array[:-1])
    else:
      write_idx(folder / name, array)
  return folder


def png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def image_tree(tmp_path, layout: dict) -> str:
  """layout: relative path -> bytes (or an (H, W, 3) array, written as PNG) under tmp_path/images."""
  root = tmp_path / "images"
  for relative, content in layout.items():
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(content) if isinstance(content, np.ndarray) else content)
  root.mkdir(exist_ok=True)
  return str(root)


def rgb(size=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def good_tree(**extra):
  layout = {f"{split}/{c}/{i}.png": rgb(seed=i) for split in ("train", "test") for c in ("cat", "dog")
            for i in range(3)}
  layout.update(extra)
  return {k: v for k, v in layout.items() if v is not None}


def cifar_batch(n=10, **replace):
  batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": list(np.arange(n) % 10)}
  batch.update(replace)
  return pickle.dumps(batch, protocol=2)


def cifar_dir(tmp_path, **members):
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for name in names:
    content = members.get(name, cifar_batch())
    if content is not None:
      (folder / name).write_bytes(content)
  return str(folder)


def tar_gz(tmp_path, name: str, files: dict) -> str:
  path = tmp_path / name
  with tarfile.open(path, "w:gz") as archive:
    for member, content in files.items():
      info = tarfile.TarInfo(member)
      info.size = len(content)
      archive.addfile(info, io.BytesIO(content))
  return str(path)


def npz_case(**arrays):
  return lambda tmp: {"data.name": "npz", "data.dir": str(save_npz(tmp / "d.npz", **npz_arrays(**arrays)))}


def file_case(name, content: bytes, source="npz"):
  def make(tmp):
    (tmp / name).write_bytes(content)
    return {"data.name": source, "data.dir": str(tmp / name)}
  return make


LAZY = {"data.name": "image_folder", "data.image_size": 8, "data.pipeline": "stream"}

# (id, make(tmp_path) -> overrides, fragments); "{dir}" in a fragment stands for the data.dir made
DATA_CASES = [
    # npz
    ("npz_not_a_zip", file_case("d.npz", b"garbage"), ["{dir}", "not a readable .npz"]),
    ("npz_empty_file", file_case("d.npz", b""), ["{dir}", "not a readable .npz"]),
    ("npz_missing_y_test", npz_case(y_test=None), ["{dir}", "lacks y_test"]),
    ("npz_int64_inputs", npz_case(x_train=np.zeros((40, 4), np.int64)), ["{dir}", "x_train is int64"]),
    ("npz_float_labels", npz_case(y_train=np.zeros(40, np.float32)), ["{dir}", "y_train must be non-negative integer"]),
    ("npz_negative_labels", npz_case(y_train=-np.ones(40, np.int64)), ["{dir}", "y_train must be non-negative"]),
    ("npz_length_mismatch", npz_case(y_train=labels(39)), ["{dir}", "x_train"]),
    ("npz_test_shape_differs", npz_case(x_test=images(10, size=6)), ["{dir}", "x_test has examples of shape"]),
    ("npz_five_dims", npz_case(x_train=np.zeros((40, 2, 2, 2, 2), np.uint8)), ["{dir}", "x_train"]),
    ("npz_mixed_dtypes", npz_case(x_test=np.zeros((10, 8, 8, 1), np.float32)), ["{dir}", "x_test is float32"]),
    ("npz_x_val_without_y_val", npz_case(x_val=images(5)), ["{dir}", "lacks y_val"]),
    ("npz_one_class", npz_case(y_train=np.zeros(40, np.int64), y_test=np.zeros(10, np.int64)),
     ["{dir}", "classification needs at least 2"]),
    ("npz_stray_test_label", npz_case(y_test=np.array([0, 1] * 4 + [0, 42])), ["{dir}", "labels hold"]),
    ("npz_nan_inputs", npz_case(x_train=np.full((40, 4), np.nan, np.float32), x_test=np.zeros((10, 4), np.float32)),
     ["{dir}", "non-finite"]),
    ("npz_too_few_for_val", npz_case(n_train=2), ["{dir}", "config.data.val_fraction=0.15", "rounds to none"]),
    ("npz_no_train_examples", npz_case(n_train=0), ["{dir}", "x_train holds no examples"]),
    ("npz_no_test_examples", npz_case(n_test=0), ["{dir}", "x_test holds no examples"]),
    ("npz_empty_val", npz_case(x_val=images(0), y_val=labels(0)), ["{dir}", "val split", "rounds to none"]),
    ("npz_batch_beyond_train", lambda tmp: {**npz_case(n_train=20)(tmp), "train.batch_size": 64},
     ["config.train.batch_size=64", "[1, 17]"]),
    ("npz_directory_not_file", lambda tmp: {"data.name": "npz", "data.dir": str(tmp)}, ["{dir}", "npz"]),
    # idx (mnist, fashion_mnist)
    ("idx_dir_without_files", lambda tmp: {"data.name": "mnist", "data.dir": str(mnist_dir(tmp, **{
        f: "missing" for f in ("train_images_idx3_ubyte", "train_labels_idx1_ubyte",
                               "t10k_images_idx3_ubyte", "t10k_labels_idx1_ubyte")}))},
     ["{dir}/train-images-idx3-ubyte (or .gz) not found", "config.data.dir"]),
    ("idx_missing_test_labels", lambda tmp: {"data.name": "mnist", "data.dir": str(
        mnist_dir(tmp, t10k_labels_idx1_ubyte="missing"))}, ["{dir}/t10k-labels-idx1-ubyte (or .gz) not found"]),
    ("idx_truncated", lambda tmp: {"data.name": "mnist", "data.dir": str(
        mnist_dir(tmp, train_images_idx3_ubyte="cut"))}, ["{dir}/train-images-idx3-ubyte", "IDX data is"]),
    ("idx_bad_magic", lambda tmp: {"data.name": "mnist", "data.dir": str(
        mnist_dir(tmp, train_labels_idx1_ubyte="magic"))}, ["{dir}/train-labels-idx1-ubyte", "bad IDX magic"]),
    ("idx_count_mismatch", lambda tmp: {"data.name": "fashion_mnist", "data.dir": str(
        mnist_dir(tmp, t10k_labels_idx1_ubyte="count"))}, ["{dir}/t10k-images-idx3-ubyte", "labels"]),
    ("idx_corrupt_gzip", lambda tmp: {"data.name": "mnist", "data.dir": str(
        mnist_dir(tmp, train_images_idx3_ubyte="garbage"))}, ["{dir}/train-images-idx3-ubyte.gz", "cannot read"]),
    ("idx_dir_is_a_file", file_case("mnist.bin", b"x", source="mnist"), ["config.data.dir=", "is not a directory"]),
    ("idx_too_few_for_val", lambda tmp: {"data.name": "mnist", "data.dir": str(mnist_dir(tmp, n_train=3))},
     ["config.data.val_fraction=0.15", "rounds to none"]),
    # image folder
    ("image_folder_empty", lambda tmp: {"data.name": "image_folder", "data.dir": image_tree(tmp, {})},
     ["no images in", "config.data.dir="]),
    ("image_folder_no_test", lambda tmp: {"data.name": "image_folder", "data.dir": image_tree(tmp, {
        k: v for k, v in good_tree().items() if k.startswith("train")})}, ["test/<class>/", "config.data.dir="]),
    ("image_folder_corrupt_png", lambda tmp: {"data.name": "image_folder", "data.dir": image_tree(
        tmp, good_tree(**{"train/cat/bad.png": b"not a png"}))}, ["train/cat/bad.png", "cannot decode"]),
    ("image_folder_mixed_sizes", lambda tmp: {"data.name": "image_folder", "data.dir": image_tree(
        tmp, good_tree(**{"train/dog/big.png": rgb(size=12)}))}, ["train/dog/big.png is 12x12x3", "same size"]),
    ("image_folder_classes_differ", lambda tmp: {"data.name": "image_folder", "data.dir": image_tree(
        tmp, good_tree(**{"test/bird/0.png": rgb()}))}, ["the test classes differ", "only in test: ['bird']"]),
    ("image_folder_two_trees", lambda tmp: {"data.name": "image_folder", "data.dir": image_tree(
        tmp, {**good_tree(), **{f"copy/{k}": v for k, v in good_tree().items()}})}, ["more than one train/test tree"]),
    ("image_folder_not_an_archive", file_case("images.zip", b"PK", source="image_folder"),
     ["{dir}", "not an archive"]),
    ("image_folder_corrupt_archive", file_case("images.tar.gz", b"\x1f\x8b garbage", source="image_folder"),
     ["{dir}", "cannot read the archive"]),
    # an image folder decoded on demand (data.image_size): refused when listed, before any image is decoded
    ("lazy_image_folder_missing", lambda tmp: {**LAZY, "data.dir": str(tmp / "imagenet")},
     ["{dir}", "does not exist"]),
    ("lazy_image_folder_empty", lambda tmp: {**LAZY, "data.dir": image_tree(tmp, {})}, ["no images in", "{dir}"]),
    ("lazy_image_folder_unreadable_jpeg", lambda tmp: {**LAZY, "data.dir": image_tree(
        tmp, good_tree(**{"train/dog/n02_9.JPEG": b"\xff\xd8 not a jpeg"}))},
     ["train/dog/n02_9.JPEG", "cannot decode"]),
    ("lazy_image_folder_archive", lambda tmp: {**LAZY, "data.dir": tar_gz(tmp, "imagenet.tar", {
        k: png(v) for k, v in good_tree().items()})}, ["{dir} is an archive", "extract it"]),
    # CIFAR pickles
    ("cifar_garbage_batch", lambda tmp: {"data.name": "cifar10", "data.dir": cifar_dir(
        tmp, data_batch_1=b"garbage")}, ["{dir}/data_batch_1", "not a CIFAR python batch"]),
    ("cifar_missing_test_batch", lambda tmp: {"data.name": "cifar10", "data.dir": cifar_dir(
        tmp, test_batch=None)}, ["lacks cifar-10-batches-py/test_batch"]),
    ("cifar_batch_without_data", lambda tmp: {"data.name": "cifar10", "data.dir": cifar_dir(
        tmp, data_batch_2=pickle.dumps({b"labels": [0]}, protocol=2))}, ["{dir}/data_batch_2", "no b'data' key"]),
    ("cifar_pickle_runs_code", lambda tmp: {"data.name": "cifar10", "data.dir": cifar_dir(
        tmp, data_batch_3=pickle.dumps(print, protocol=2))}, ["{dir}/data_batch_3", "not a CIFAR python batch"]),
    ("cifar_corrupt_archive", file_case("cifar-10-python.tar.gz", b"\x1f\x8b garbage", source="cifar10"),
     ["{dir}", "cannot read the archive"]),
    ("cifar_archive_missing_batches", lambda tmp: {"data.name": "cifar10", "data.dir": tar_gz(
        tmp, "cifar-10-python.tar.gz", {"cifar-10-batches-py/data_batch_1": cifar_batch()})},
     ["{dir}", "lacks cifar-10-batches-py/data_batch_2"]),
    ("cifar100_folder_without_batches", lambda tmp: {"data.name": "cifar100", "data.dir": str(tmp)},
     ["{dir} holds neither train nor cifar-100-python/"]),
    ("cifar_file_not_an_archive", file_case("cifar.bin", b"x", source="cifar10"), ["{dir}", "not an archive"]),
]


@pytest.mark.parametrize("make, fragments", [case[1:] for case in DATA_CASES], ids=[case[0] for case in DATA_CASES])
def test_bad_data_files_stop_in_one_line_naming_the_file(refused, tmp_path, monkeypatch, make, fragments):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # image_folder caches what it decodes
  overrides = make(tmp_path)
  config = override(small_config(**{"model.widths": (8,)}), **overrides)
  message = refused(config)
  for fragment in fragments:
    assert fragment.format(dir=overrides.get("data.dir", "")) in message, message


# ------------------------------------------------------------------------- flags, as main.py parses them

FLAG_CASES = [
    ("unknown_key", ["--config.nosuchkey=1"], "config.nosuchkey is not a config key"),
    ("unknown_log_key", ["--config.log.colour=1"], "config.log.colour is not a config key; keys at this level:"),
    ("log_tensorboard_not_bool", ["--config.log.tensorboard=maybe"], "config.log.tensorboard"),
    ("log_progress_not_bool", ["--config.log.progress=2x"], "config.log.progress"),
    ("epochs_not_int", ["--config.train.epochs=abc"], "config.train.epochs"),
    ("lr_not_a_number", ["--config.optimizer.lr=fast"], "config.optimizer.lr"),
    ("missing_config_file", ["--config=configs/nosuchfile.py"], "no such config file"),
    ("other_models_key", ["--config.model.width=4"], "config.model.width is not a config key"),
    ("key_below_a_value", ["--config.seed.x=1"], "config.seed.x is not a config key; keys at this level: none"),
]


@pytest.mark.parametrize("args, fragment", [case[1:] for case in FLAG_CASES], ids=[case[0] for case in FLAG_CASES])
def test_bad_flags_stop_in_one_line(capsys, args, fragment):
  status, err, _ = flag_run(["main.py", *args], capsys)
  assert status == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("lth_jax: error: ") and fragment in lines[0], err


def test_a_switched_models_own_keys_are_settable_on_the_command_line(capsys, refused):
  """configs/default.py is made for the MLP; switching to resnet20 takes resnet20's keys (issue 23, item 7)."""
  status, err, config = flag_run(["main.py", "--config.model.name=resnet20", "--config.model.width=4",
                                  "--config.model.bottleneck=False", "--config.data.name=digits"], capsys)
  assert status is None, err
  assert (config.model.name, config.model.width, config.model.bottleneck) == ("resnet20", 4, False)
  # the model the run builds (experiment.build's call; the MLP's keys at their defaults are left out)
  from lth_jax import experiment, models
  net = models.get(config.model.name, num_classes=10, **experiment.model_kwargs(config.model))
  assert (net.width, net.stage_sizes) == (4, (3, 3, 3))
  # a key of no model is still refused, and so is another model's key that is not at its default
  status, err, _ = flag_run(["main.py", "--config.model.name=resnet20", "--config.model.depth=3"], capsys)
  assert status == 2 and "config.model.depth is not a config key" in err
  status, err, config = flag_run(["main.py", "--config.model.name=resnet20", "--config.model.widths=(8,)",
                                  "--config.data.name=digits"], capsys)
  assert status is None
  assert "config.model.widths does not apply to model 'resnet20'" in refused(config)


# ---------------------------------------------------------------------- the real command line, a few times

SUBPROCESS_CASES = [
    (["--config.train.eval_batch_size=0"], "config.train.eval_batch_size=0 must be an integer >= 1"),
    (["--config.train.distributed=True"], "config.train.distributed=True"),
    (["--config.optimizer.momentum=2.0"], "config.optimizer.momentum=2.0 must be a finite number in [0, 1)"),
]


def test_the_command_line_exits_2_with_one_line_and_writes_nothing(tmp_path):
  for args, fragment in SUBPROCESS_CASES:
    workdir = tmp_path / "w"
    proc = main_py(f"--config.workdir={workdir}", "--config.data.name=moons", *args,
                   env={"JAX_COORDINATOR_ADDRESS": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lth_jax: error: ") and fragment in lines[0], proc.stderr[-2000:]
    assert not (workdir / "config.json").exists()


def test_the_census_covers_every_config_section():
  """Every key group of base() (and the top level) has bad inputs above."""
  from lth_jax.config import base
  groups = {key for key, value in base().items() if isinstance(value, ml_collections.ConfigDict)}
  touched = {key.split(".")[0] if key.split(".")[0] in groups else "top"
             for _, overrides, _ in CONFIG_CASES for key in overrides}
  touched |= {"log"} if any("--config.log." in args[0] for _, args, _ in FLAG_CASES) else set()
  groups.add("top")
  assert groups <= touched, sorted(groups - touched)
  assert len(CONFIG_CASES) + len(DATA_CASES) + len(FLAG_CASES) + len(SUBPROCESS_CASES) >= 150


def test_a_process_waits_for_its_coordinator_and_stops_in_one_line_when_it_never_answers():
  """jax.distributed.initialize aborts the process when the coordinator cannot be reached; processes other
  than 0 look for it first: they go on as soon as something listens there, and stop with a UserError
  naming the key when nothing does."""
  import socket
  with socket.socket() as listening:
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    cli.wait_for_coordinator(f"127.0.0.1:{listening.getsockname()[1]}", timeout_s=5)   # returns: it answers
  with socket.socket() as closed:   # a port nothing listens on: its socket is bound but never listens
    closed.bind(("127.0.0.1", 0))
    with pytest.raises(UserError, match=r"config.train.coordinator='127.0.0.1:\d+': nothing accepted a connection "
                                        r"there within 0.2 s \(config.train.coordinator_timeout_s"):
      cli.wait_for_coordinator(f"127.0.0.1:{closed.getsockname()[1]}", timeout_s=0.2, poll_s=0.05)
