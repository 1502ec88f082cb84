"""What a fine-tuning run minimises and how it is scored, per task.

Regression (B structures, target y, prediction ŷ = mean + std · o in the target's units, the
normaliser (mean, std) fitted on the training split, ``L`` the element-wise loss of
:mod:`matforge.models.losses`: mae, mse or huber)::

    loss = (1/B) Σ_b L((ŷ_b − y_b) / std, 0)             (normalised units)

Binary classification, labels y ∈ {0, 1}: binary cross-entropy of the head's class-1 log
probability (CGCNN's two-class log-softmax, or log σ(z) of a single logit)::

    loss = −(1/B) Σ_b [ y_b log p_b + (1 − y_b) log(1 − p_b) ]

Potential (``efs``, ``energy_forces``, ``energy``): the pre-training objective
(:class:`matforge.models.objectives.EnergyObjective`: energy per atom, forces, stress by autograd,
default weights 1, 10, 100).

Validation metric for early stopping (lower is better): regression MAE; classification log loss;
potential Σ_k w_k MAE_k over its components.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from matforge.finetune.metrics import classification_metrics, regression_metrics
from matforge.models.losses import elementwise

if TYPE_CHECKING:  # pragma: no cover
    from matforge.finetune.graph_store import GraphStore
    from matforge.models.model import AtomisticModel


class TaskObjective:
    """Loss, forward options and evaluation of one task (module docstring)."""

    def __init__(self, task: str, target: str, loss_kind: str = "mae", huber_delta: float = 0.01) -> None:
        self.task = task
        self.target = target
        self.loss_kind = loss_kind
        self.huber_delta = huber_delta
        self.std = 1.0
        self.energy_objective = None
        if task == "potential":
            from matforge.models.objectives import EnergyObjective

            self.energy_objective = EnergyObjective(target, loss_kind=loss_kind, huber_delta=huber_delta)

    # -- training ----------------------------------------------------------------------------------
    def forward_options(self, training: bool) -> dict[str, bool]:
        if self.energy_objective is not None:
            return self.energy_objective.forward_options(training)
        return {}

    def loss(self, out: dict[str, Tensor], batch: Any) -> Tensor:
        if self.energy_objective is not None:
            return self.energy_objective.loss(out, batch)
        y = batch.y[:, 0].to(out["properties"].dtype)
        if self.task == "classification":
            return -(y * class1_log_prob(out) + (1 - y) * class0_log_prob(out)).mean()
        diff = (out["properties"][:, 0] - y) / self.std
        return elementwise(self.loss_kind, diff, torch.zeros_like(diff), self.huber_delta).mean()

    # -- evaluation --------------------------------------------------------------------------------
    def predict(self, model: "AtomisticModel", store: "GraphStore", batch_size: int = 256) -> dict[str, Any]:
        """Predictions of ``model`` (in its current mode) on every graph of ``store``:
        ``{"prediction": (n,), "sums": {metric: (Σ|err|, count)}}`` (sums for potentials)."""
        pred = np.zeros(len(store))
        sums: dict[str, list[float]] = {}
        options = self.forward_options(training=False)
        with torch.set_grad_enabled(bool(options.get("forces") or options.get("stress"))):
            for rows, batch in store.batches(batch_size):
                out = model(batch, **options)
                if self.energy_objective is not None:
                    per_atom = out["energy"].detach() / batch.natoms.to(out["energy"].dtype)
                    pred[rows] = per_atom.double().cpu().numpy()
                    for name, term in self.energy_objective.metrics(out, batch).items():
                        acc = sums.setdefault(name, [0.0, 0.0])
                        acc[0] += float(term.sum)
                        acc[1] += float(term.count)
                else:
                    pred[rows] = out["properties"][:, 0].detach().double().cpu().numpy()
        return {"prediction": pred, "sums": sums}

    def metrics(self, store: "GraphStore", predicted: dict[str, Any]) -> dict[str, float]:
        """Metrics of a :meth:`predict` result against the store's labels (physical units)."""
        pred = predicted["prediction"]
        if self.task == "classification":
            return classification_metrics(store.values, pred)
        if self.task == "regression":
            return regression_metrics(store.values, pred)
        have = np.isfinite(store.values)
        out = regression_metrics(store.values[have], pred[have]) if have.any() else {}
        for name, (total, count) in predicted["sums"].items():
            out[name] = total / count if count > 0 else float("nan")
        return out

    def selection_value(self, metrics: dict[str, float]) -> float:
        """The validation number early stopping minimises (module docstring)."""
        if self.task == "classification":
            return metrics["log_loss"]
        if self.task == "regression":
            return metrics["mae"]
        assert self.energy_objective is not None
        names = self.energy_objective.METRIC_NAMES
        weights = self.energy_objective.weights()
        return float(sum(w * metrics.get(names[k], 0.0) for k, w in weights.items()
                         if np.isfinite(metrics.get(names[k], np.nan))))


def class1_log_prob(out: dict[str, Tensor]) -> Tensor:
    """log p(class 1) per structure from a head's ``logits``: (B, 2) log-softmax or (B, 1) logit."""
    logits = out["logits"]
    return logits[:, 1] if logits.shape[1] == 2 else F.logsigmoid(logits[:, 0])


def class0_log_prob(out: dict[str, Tensor]) -> Tensor:
    logits = out["logits"]
    return logits[:, 0] if logits.shape[1] == 2 else F.logsigmoid(-logits[:, 0])
