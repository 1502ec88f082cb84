"""The multi-property ("combined") objective. ``L`` is the element-wise loss of
:mod:`matforge.models.losses`.

``combined`` (multi-property, Deng, Park & Sy) — a PropertyHead predicts P named scalars ``y``
(``batch.y`` (B, P), ``batch.y_mask``); each property has a fitted normaliser (mean_p, std_p) and a
weight::

    property:<p> = mean over structures with label p   L(y_pred,p/std_p, y_p/std_p)   (normalised)

(the mean cancels in the difference). Metrics are in physical units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from matforge.models.fitting import describe_dataset, fit_properties
from matforge.models.losses import Term
from matforge.models.objectives import Objective, _field

if TYPE_CHECKING:  # pragma: no cover
    from matforge.models.base import Backbone
    from matforge.models.heads import Head
    from matforge.models.model import AtomisticModel


class PropertyObjective(Objective):
    """``combined``: several named scalar properties, each normalised and weighted, labels masked."""

    name = "combined"

    def __init__(self, properties: Sequence[str], *, property_weights: dict[str, float] | None = None,
                 pooling: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = [str(p) for p in properties]
        if not names:
            raise ValueError("objective 'combined' needs at least one property name")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate property names in {names}")
        unknown = sorted(set(property_weights or {}) - set(names))
        if unknown:
            raise ValueError(f"property_weights name properties that are not learnt: {unknown} (properties: {names})")
        self.names = names
        self.pooling = pooling
        self._weights = {n: float((property_weights or {}).get(n, 1.0)) for n in names}
        self.mean = torch.zeros(len(names), dtype=torch.float64)
        self.std = torch.ones(len(names), dtype=torch.float64)

    @property
    def properties(self) -> tuple[str, ...]:
        return tuple(self.names)

    def build_heads(self, backbone: "Backbone") -> dict[str, "Head"]:
        from matforge.models.heads import PropertyHead

        return {"properties": PropertyHead(backbone.embedding_dim, self.names, pooling=self.pooling,
                                           hidden=self.head_hidden, mean=self.mean.tolist(), std=self.std.tolist())}

    def _fit(self, sample: Any, dataset: Any) -> dict[str, Any]:
        return {"properties": fit_properties(sample, self.names, describe_dataset(dataset))}

    def apply_fit(self, model: "AtomisticModel", fitted: dict[str, Any]) -> None:
        super().apply_fit(model, fitted)
        if "properties" in fitted:
            stats = fitted["properties"]
            missing = [n for n in self.names if n not in stats]
            if missing:
                raise ValueError(f"fitted normalisers lack properties {missing}")
            self.mean = torch.tensor([float(stats[n]["mean"]) for n in self.names], dtype=torch.float64)
            self.std = torch.tensor([float(stats[n]["std"]) for n in self.names], dtype=torch.float64)
            self._head(model, "properties").set_normalization(self.mean.tolist(), self.std.tolist())

    def weights(self) -> dict[str, float]:
        return {f"property:{n}": w for n, w in self._weights.items()}

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "properties": list(self.names), "pooling": self.pooling}

    def _labels(self, outputs: dict[str, Tensor], batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        pred = outputs["properties"]
        y = _field(batch, "y", self.name)
        mask = _field(batch, "y_mask", self.name).to(torch.bool)
        if y.shape != pred.shape or mask.shape != pred.shape:
            raise ValueError(f"batch.y {tuple(y.shape)} / y_mask {tuple(mask.shape)} do not match the predicted "
                             f"properties {tuple(pred.shape)}: build graphs with GraphConfig(properties={self.names})")
        return pred, y.to(pred.dtype), mask

    def label_masks(self, batch: Any) -> dict[str, tuple[Tensor, tuple[int, ...]]]:
        mask = _field(batch, "y_mask", self.name).to(torch.bool)
        if mask.dim() != 2 or mask.shape[1] != len(self.names):
            raise ValueError(f"batch.y_mask has shape {tuple(mask.shape)}, expected (structures, {len(self.names)}): "
                             f"build graphs with GraphConfig(properties={self.names})")
        return {f"property:{n}": (mask[:, p], (int(mask.shape[0]),)) for p, n in enumerate(self.names)}

    def terms(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        pred, y, mask = self._labels(outputs, batch)
        std = self.std.to(device=pred.device, dtype=pred.dtype)
        diff = (pred - y) / std
        zero = torch.zeros_like(diff)
        return {f"property:{n}": Term.masked(self._loss(diff[:, p], zero[:, p]), mask[:, p])
                for p, n in enumerate(self.names)}

    def metrics(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        pred, y, mask = self._labels(outputs, batch)
        err = (pred.detach() - y).abs()
        return {f"{n}_mae": Term.masked(err[:, p], mask[:, p]) for p, n in enumerate(self.names)}
