"""The fine-tuning loop: epochs over in-memory graphs, AdamW with warm-up and a schedule, early
stopping on the validation metric with the best epoch restored, optional weight EMA.

One epoch::

    for each shuffled batch of the training graphs (seeded by (seed, epoch)):
        lr ← schedule(step) × the parameter group's scale        (warm-up, then cosine | plateau | constant)
        loss ← objective.loss(model(batch))                       (frozen modules stay in eval mode)
        backward, clip the gradient norm, AdamW step, EMA update
    validate (the EMA weights when EMA is on) → early stopping keeps the best weights;
    the plateau schedule sees the same validation number

After the last epoch (or when ``patience`` epochs pass without improvement) the best epoch's
weights are loaded into the model. TensorBoard (when a writer is given) gets ``train/loss``,
``lr`` and every validation metric per epoch; a tqdm bar shows the epoch, train loss and
validation metric.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matforge.training.early_stopping import EarlyStopping
from matforge.training.schedule import LRSchedule, build_optimizer
from matforge.training.weight_gradients import backward_to_weights

if TYPE_CHECKING:  # pragma: no cover
    from matforge.finetune.graph_store import GraphStore
    from matforge.finetune.objective import TaskObjective
    from matforge.finetune.strategies import Strategy
    from matforge.models.model import AtomisticModel


@dataclass
class TrainOptions:
    """Optimisation settings. lr: peak learning rate; warmup_epochs: linear warm-up length;
    schedule: cosine | plateau | constant; patience: epochs without improvement before stopping
    (also the plateau schedule's patience / 2); ema_decay: None (off) or e.g. 0.99."""

    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: int = 5
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    patience: int = 100
    ema_decay: float | None = None
    grad_clip: float = 10.0
    seed: int = 0
    progress: bool = True
    eval_batch_size: int = 256

    def check(self) -> None:
        from matforge.finetune.errors import FinetuneError

        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.warmup_epochs < 0:
            raise FinetuneError(f"epochs, batch_size and patience must be >= 1 and warmup_epochs >= 0 "
                                f"(got {self.epochs}, {self.batch_size}, {self.patience}, {self.warmup_epochs})")
        if not self.lr > 0:
            raise FinetuneError(f"lr must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise FinetuneError(f"schedule {self.schedule!r} is not one of cosine, plateau, constant")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise FinetuneError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    best_value: float
    history: list[dict[str, float]] = field(default_factory=list)


def train(model: "AtomisticModel", objective: "TaskObjective", strategy: "Strategy", train_set: "GraphStore",
          val_set: "GraphStore", options: TrainOptions, writer: Any = None,
          extra_params: list[torch.nn.Parameter] | None = None) -> TrainResult:
    """Run the loop of the module docstring on ``model`` (changed in place: best weights at the end).

    extra_params: parameters to train without weight decay besides the strategy's (fresh embedding
    rows of new elements under a frozen embedding).
    """
    from matforge.training.ema import WeightEMA

    options.check()
    groups = strategy.parameter_groups(model)
    extra_ids = {id(p) for p in extra_params or []}
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in extra_ids]
    if extra_params:
        groups.append({"params": list(extra_params), "lr_scale": 1.0, "weight_decay": 0.0, "name": "new_elements"})
    optimizer = build_optimizer(groups, options.lr, options.weight_decay)
    steps_per_epoch = max(1, -(-len(train_set) // options.batch_size))
    schedule = LRSchedule(optimizer, options.lr, options.epochs * steps_per_epoch,
                          options.warmup_epochs * steps_per_epoch, options.schedule, options.min_lr_ratio,
                          plateau_factor=0.5, plateau_patience=max(1, options.patience // 2))
    ema = WeightEMA(model, options.ema_decay) if options.ema_decay else None
    stopper = EarlyStopping(options.patience, mode="min")
    forward = objective.forward_options(training=True)
    trainable = [p for g in groups for p in g["params"]]
    clip = options.grad_clip if options.grad_clip > 0 else math.inf

    bar = None
    if options.progress:
        from tqdm import tqdm

        bar = tqdm(total=options.epochs, unit="epoch", file=sys.stderr, dynamic_ncols=True, leave=False)
    history: list[dict[str, float]] = []
    step = 0
    epoch = 0
    try:
        for epoch in range(1, options.epochs + 1):
            strategy.set_train_mode(model, True)
            rng = np.random.default_rng([options.seed, epoch])
            total, count = 0.0, 0
            for rows, batch in train_set.batches(options.batch_size, rng):
                step += 1
                lr = schedule.step_to(step)
                loss = objective.loss(model(batch, **forward), batch)
                optimizer.zero_grad(set_to_none=True)
                backward_to_weights(loss, trainable)
                torch.nn.utils.clip_grad_norm_(trainable, clip)
                optimizer.step()
                if ema is not None:
                    ema.update()
                total += float(loss.detach()) * len(rows)
                count += len(rows)
            evaluated = ema.module if ema is not None else model
            evaluated.eval()
            val = objective.metrics(val_set, objective.predict(evaluated, val_set, options.eval_batch_size))
            value = objective.selection_value(val)
            stopper.observe(epoch, value, evaluated)
            schedule.observe(value)
            record = {"epoch": epoch, "train_loss": total / max(1, count), "lr": lr, "val_selection": value,
                      **{f"val_{k}": v for k, v in val.items()}}
            history.append(record)
            if writer is not None:
                writer.add_scalar("train/loss", record["train_loss"], epoch)
                writer.add_scalar("lr", lr, epoch)
                for k, v in val.items():
                    if np.isfinite(v):
                        writer.add_scalar(f"val/{k}", v, epoch)
            if bar is not None:
                bar.set_postfix(loss=f"{record['train_loss']:.4g}", val=f"{value:.4g}", best=f"{stopper.best:.4g}")
                bar.update(1)
            if stopper.should_stop:
                break
    finally:
        if bar is not None:
            bar.close()
    stopper.restore(model)
    model.eval()
    return TrainResult(best_epoch=stopper.best_epoch, epochs_run=epoch, best_value=stopper.best, history=history)
