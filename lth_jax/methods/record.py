"""A run's record: the stable fields of results.json's `runs`, typed.

Tools read these names, so they never change once written. `figures` holds the evaluation's figures
(compression, calibration, OOD, corruptions, similarity: see lth_jax.evaluation) and `extra` what
a method adds of its own (rate_per_round, prune_events, the structured fields...). Neither may reuse
a stable name or each other's: `as_dict` refuses, so a method cannot overwrite a field by accident.
A method that means to set a stable field sets it by name (`dataclasses.replace`).
"""

import dataclasses


@dataclasses.dataclass
class RunRecord:
  method: str
  round: int
  sparsity: float                 # prunable weights removed
  model_sparsity: float           # all parameters removed
  params_remaining: int
  params_total: int
  test_accuracy: float
  accuracy_drop: float | None     # the dense run's test accuracy minus this run's
  accuracy_before_retrain: float | None
  best_epoch: int | None          # the epoch holding the best evaluation (config.train.best_by: LTH early stopping)
  best_val_accuracy: float | None
  test_accuracy_at_best_epoch: float | None   # test accuracy at the best evaluation (best_step)
  epochs_trained: int
  wall_time_s: float
  curve: list                     # per-epoch history rows
  figures: dict = dataclasses.field(default_factory=dict)
  extra: dict = dataclasses.field(default_factory=dict)
  best_step: int | None = None    # the global iteration of the best evaluation (every train.eval_every_steps)
  best_val_loss: float | None = None
  seed: int | None = None         # set by whoever records the run
  ticket: str | None = None

  def with_extra(self, **fields) -> "RunRecord":
    """A copy with method-specific fields added; a stable or figure name is refused."""
    record = dataclasses.replace(self, extra={**self.extra, **fields})
    record.as_dict()
    return record

  def as_dict(self) -> dict:
    """results.json's entry: the stable fields, figures and extras side by side (no name twice)."""
    stable = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("figures", "extra")}
    for source, fields in (("figures", self.figures), ("extra", self.extra)):
      clash = sorted(set(fields) & set(stable))
      if clash:
        raise ValueError(f"the run record's {source} reuse the stable field(s) {', '.join(clash)}")
    clash = sorted(set(self.figures) & set(self.extra))
    if clash:
      raise ValueError(f"the run record's extra fields reuse figure names: {', '.join(clash)}")
    out = {k: v for k, v in stable.items() if k not in ("wall_time_s", "curve", "seed", "ticket")}
    out.update(self.figures)
    out.update(self.extra)
    out.update({"wall_time_s": self.wall_time_s, "curve": self.curve})
    if self.seed is not None:
      out["seed"] = self.seed
    if self.ticket is not None:
      out["ticket"] = self.ticket
    return out
