"""The pruning methods as plug-ins, and the cohort that runs them for every seed.

A method is a module that registers its name (`registry.register`), its config check and its program;
`run` runs the configured method for a cohort of seeds (replicates), training what they share together.
"""

from lth_jax.methods import cohort, common, registry  # noqa: F401
# registered in this order, the order the command line lists them in
from lth_jax.methods import lottery, structured, at_init, stability, sparse_training  # noqa: F401,I001
from lth_jax.methods import compare  # noqa: F401,I001
from lth_jax.methods.record import RunRecord  # noqa: F401
from lth_jax.methods.registry import Recorder, check_sizes, get, names, planned_epochs, validate  # noqa: F401
from lth_jax.training.progress import Progress


def run(experiments: list, recorders: list[Recorder]) -> list:
  """config.method for each experiment (one per seed), recorders[i] recording experiments[i]'s runs.

  With several seeds each one's segments are named `seed{seed}/...`, so its checkpoints stay its own.
  With config.train.vmap the seeds' jobs that share a schedule train as one program. One progress bar
  (config.log.progress, on a terminal only) counts every epoch trained against the method's plan.
  """
  config = experiments[0].config
  method = get(config.method)
  programs = [method.run(exp, recorder) for exp, recorder in zip(experiments, recorders)]
  prefixes = [f"seed{exp.seed}/" if len(experiments) > 1 else "" for exp in experiments]
  with Progress(planned_epochs(experiments), enabled=config.log.progress) as progress:
    return cohort.run(programs, config.train.vmap, config.train.log_every, progress, prefixes)
