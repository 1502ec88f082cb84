"""Pre-training objectives: which heads a model needs, what the trainer must compute, and the loss.

An :class:`Objective` is the contract between the trainer and the models package:

* ``build_heads(backbone)`` gives the heads (``AtomisticModel(backbone, heads)``);
* ``needs_forces`` / ``needs_stress`` / ``create_graph`` say what ``AtomisticModel.forward`` must
  compute when training (:meth:`Objective.forward_options`);
* ``record_transform()`` is the transform the loader applies to each record before its graph is
  built (the denoising objectives' :class:`~matforge.datasets.noise.PositionNoise`), or None;
* ``fit(train_dataset, model)`` fits element references and normalisers once (rank 0) and returns
  them as a JSON-able dict; ``apply_fit(model, fitted)`` sets the same on the other ranks;
* ``terms(outputs, batch)`` returns loss components as partial means (:class:`~matforge.models.losses.Term`),
  ``weights()`` their weights, and :func:`combine` (with counts all-reduced across ranks) the total;
* ``counts(batch)`` gives the terms' counts from the batch alone (``label_masks``), before the
  forward pass, so the trainer's all-reduce of them runs while the model does;
* ``metrics(outputs, batch)`` returns validation errors as (Σ|error|, count) in physical units.

Every objective returns the same term and metric names for every batch (count 0 where a batch has
no such label), so all ranks run the same collectives.

Objectives (B structures, N atoms; ``L`` is the element-wise loss of :mod:`matforge.models.losses`)
--------------------------------------------------------------------------------------------------
``energy``, ``energy_forces``, ``efs`` — supervised on labels, forces and stress by autograd::

    energy  = mean over structures with an energy of   L(E_pred/N, E/N)          (eV/atom)
    forces  = mean over force components of atoms of structures with forces  L(F_pred, F)   (eV/Å)
    stress  = mean over the 9 components of structures with stress            L(σ_pred, σ)  (eV/Å³)

``denoise_head``, ``denoise_derivative``: see :mod:`matforge.models.denoising` (maths there);
``combined`` (multi-property): see :mod:`matforge.models.property_objective`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import Tensor

from matforge.models.fitting import collect_labels, describe_dataset, fit_energy
from matforge.models.losses import LOSS_KINDS, Term, combine, elementwise, global_counts, mask_count, reduce_terms
from matforge.models.model import NUM_ELEMENT_SLOTS

if TYPE_CHECKING:  # pragma: no cover
    from matforge.datasets.noise import PositionNoise
    from matforge.datasets.shard_dataset import ShardDataset
    from matforge.models.base import Backbone
    from matforge.models.heads import Head
    from matforge.models.model import AtomisticModel

__all__ = ["Objective", "EnergyObjective", "OBJECTIVES", "build_objective", "combine", "global_counts", "reduce_terms",
           "DEFAULT_WEIGHTS", "has_vector_features"]

DEFAULT_WEIGHTS = {"energy": 1.0, "forces": 10.0, "stress": 100.0, "noise": 1.0}


def has_vector_features(backbone: "Backbone") -> bool:
    """Whether ``backbone`` outputs equivariant vector features (``BackboneOutput.vector``).

    Found by running it, in eval mode and without gradients (no BatchNorm statistics change), on a
    two-atom graph (a C–C pair 1.4 Å apart).
    """
    from matforge.models.base import GraphInputs

    param = next(backbone.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    inputs = GraphInputs(
        z=torch.tensor([6, 6], device=device),
        edge_index=torch.tensor([[1, 0], [0, 1]], device=device),
        edge_vec=torch.tensor([[1.4, 0.0, 0.0], [-1.4, 0.0, 0.0]], dtype=dtype, device=device),
        batch=torch.zeros(2, dtype=torch.long, device=device),
        num_graphs=1,
    )
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(inputs)
    finally:
        backbone.train(was_training)
    return out.vector is not None


def _field(batch: Any, name: str, objective: str, hint: str = "") -> Tensor:
    value = getattr(batch, name, None)
    if value is None:
        raise ValueError(f"objective {objective!r} needs batch.{name}{hint}")
    return value


def _per_atom(mask: Tensor, batch: Any, num_atoms: int) -> Tensor:
    """A per-graph (B,) mask as per-atom (N,); a per-atom mask passes through."""
    mask = mask.reshape(-1).to(torch.bool)
    if mask.shape[0] == num_atoms:
        return mask
    return mask[batch.batch]


class Objective:
    """Base class; see the module docstring. Subclasses set ``name`` and the three flags."""

    name: str = ""
    needs_forces: bool = False
    needs_stress: bool = False
    create_graph: bool = False

    def __init__(self, *, loss_kind: str = "mae", huber_delta: float = 0.01, seed: int = 0,
                 head_hidden: int = 64) -> None:
        if loss_kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {loss_kind!r}; known: {', '.join(LOSS_KINDS)}")
        if not huber_delta > 0:
            raise ValueError(f"huber_delta must be positive, got {huber_delta}")
        self.loss_kind = loss_kind
        self.huber_delta = float(huber_delta)
        self.seed = int(seed)
        self.head_hidden = int(head_hidden)

    # -- what the trainer asks --------------------------------------------------------------------
    @property
    def properties(self) -> tuple[str, ...]:
        """Property names the graph builder must put in ``batch.y`` (in this order)."""
        return ()

    def forward_options(self, training: bool = True) -> dict[str, bool]:
        """Keyword arguments of ``AtomisticModel.forward``: the derivative graph only when training."""
        return {"forces": self.needs_forces, "stress": self.needs_stress,
                "create_graph": bool(training and self.create_graph)}

    def build_heads(self, backbone: "Backbone") -> dict[str, "Head"]:
        raise NotImplementedError

    def record_transform(self) -> "PositionNoise | None":
        return None

    def fit(self, dataset: "ShardDataset", model: "AtomisticModel", max_records: int = 20000) -> dict[str, Any]:
        """Fit on (a sample of) the TRAIN dataset, set on ``model``, return the JSON-able dict."""
        sample = collect_labels(dataset, max_records, self.seed, self.properties)
        fitted = {"objective": self.name, "records_used": sample.num_records, "elements": list(sample.elements)}
        fitted.update(self._fit(sample, dataset))
        self.apply_fit(model, fitted)
        return fitted

    def _fit(self, sample: Any, dataset: Any) -> dict[str, Any]:
        return {}

    def apply_fit(self, model: "AtomisticModel", fitted: dict[str, Any]) -> None:
        """Set what :meth:`fit` returned (possibly after a JSON round trip) on ``model``."""
        if "elements" in fitted:
            model.elements = sorted(int(z) for z in fitted["elements"])
        if "element_refs" in fitted:
            refs = torch.zeros(NUM_ELEMENT_SLOTS, dtype=torch.float64)
            for z, value in fitted["element_refs"].items():
                refs[int(z)] = float(value)
            model.element_refs.copy_(refs.to(model.element_refs.dtype))
        if "energy_scale" in fitted:
            self._head(model, "energy").set_normalization(fitted["energy_scale"], fitted["energy_shift"])

    @staticmethod
    def _head(model: "AtomisticModel", name: str) -> Any:
        if name not in model.heads:
            raise ValueError(f"the model has no {name!r} head (heads: {sorted(model.heads)}); "
                             "build it with objective.build_heads(backbone)")
        return model.heads[name]

    def terms(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        raise NotImplementedError

    def label_masks(self, batch: Any) -> dict[str, tuple[Tensor, tuple[int, ...]]]:
        """Term name -> (mask, shape of the term's element-wise values), from the batch alone: the
        mask broadcasts to that shape and selects the values :meth:`terms` averages."""
        raise NotImplementedError

    def counts(self, batch: Any) -> dict[str, Tensor]:
        """The ``count`` of each of :meth:`terms`' terms (float64 scalars), known before the forward
        pass: the trainer all-reduces them while the model runs."""
        return {name: mask_count(mask, shape) for name, (mask, shape) in self.label_masks(batch).items()}

    def weights(self) -> dict[str, float]:
        raise NotImplementedError

    def inert_parameters(self, model: "AtomisticModel") -> list[torch.nn.Parameter]:
        """Parameters this objective's loss cannot depend on, whatever the data: they would never
        get a gradient, which DistributedDataParallel (without unused-parameter search) refuses at
        the next step. The trainer freezes them. None for most objectives."""
        return []

    def metrics(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, Tensor], batch: Any) -> Tensor:
        """Single-process total (world size 1, local counts): for tests and simple loops."""
        terms = self.terms(outputs, batch)
        return combine(terms, self.weights(), {k: t.count for k, t in terms.items()}, 1)

    def spec(self) -> dict[str, Any]:
        """JSON-able description for the model card."""
        return {"name": self.name, "loss_kind": self.loss_kind, "huber_delta": self.huber_delta,
                "weights": self.weights()}

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return elementwise(self.loss_kind, pred, target, self.huber_delta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()})"


class EnergyObjective(Objective):
    """``energy`` | ``energy_forces`` | ``efs``: labels of energy (per atom), forces and stress."""

    COMPONENTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "energy": ("energy",), "energy_forces": ("energy", "forces"), "efs": ("energy", "forces", "stress")}

    def __init__(self, name: str, *, energy_weight: float = 1.0, forces_weight: float = 10.0,
                 stress_weight: float = 100.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if name not in self.COMPONENTS:
            raise ValueError(f"EnergyObjective name must be one of {', '.join(self.COMPONENTS)}, got {name!r}")
        self.name = name
        self.components = self.COMPONENTS[name]
        self.needs_forces = "forces" in self.components
        self.needs_stress = "stress" in self.components
        self.create_graph = self.needs_forces
        self._weights = {"energy": float(energy_weight), "forces": float(forces_weight),
                         "stress": float(stress_weight)}

    def build_heads(self, backbone: "Backbone") -> dict[str, "Head"]:
        from matforge.models.heads import EnergyHead

        return {"energy": EnergyHead(backbone.embedding_dim, hidden=self.head_hidden)}

    def _fit(self, sample: Any, dataset: Any) -> dict[str, Any]:
        fitted = fit_energy(sample)
        if fitted["energy_records"] == 0 and not (self.needs_forces and sample.force_count):
            labels = "energy or force" if self.needs_forces else "energy"
            raise ValueError(f"objective {self.name!r}: none of the {sample.num_records} records sampled from "
                             f"{describe_dataset(dataset)} has an {labels} label")
        return fitted

    def weights(self) -> dict[str, float]:
        return {k: self._weights[k] for k in self.components}

    def label_masks(self, batch: Any) -> dict[str, tuple[Tensor, tuple[int, ...]]]:
        num_graphs, num_atoms = int(batch.natoms.shape[0]), int(batch.num_nodes)
        masks = {"energy": (batch.has_energy.reshape(-1), (num_graphs,))}
        if "forces" in self.components:
            masks["forces"] = (_per_atom(batch.has_forces, batch, num_atoms).unsqueeze(-1), (num_atoms, 3))
        if "stress" in self.components:
            masks["stress"] = (batch.has_stress.view(-1, 1, 1), (num_graphs, 3, 3))
        return masks

    def _pairs(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """component -> (prediction, target, mask broadcastable to both), in physical units."""
        masks = self.label_masks(batch)
        pred_e = outputs["energy"]
        natoms = batch.natoms.to(pred_e.dtype)
        out = {"energy": (pred_e / natoms, batch.energy.to(pred_e.dtype) / natoms, masks["energy"][0])}
        for name in ("forces", "stress"):
            if name in self.components and name not in outputs:
                raise ValueError(f"objective {self.name!r} needs outputs[{name!r}]: call the model with "
                                 f"**objective.forward_options()")
        if "forces" in self.components:
            f = outputs["forces"]
            out["forces"] = (f, batch.forces.to(f.dtype), masks["forces"][0])
        if "stress" in self.components:
            s = outputs["stress"]
            out["stress"] = (s, batch.stress.to(s.dtype).reshape(s.shape), masks["stress"][0])
        return out

    def terms(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        return {k: Term.masked(self._loss(pred, target), mask)
                for k, (pred, target, mask) in self._pairs(outputs, batch).items()}

    METRIC_NAMES: ClassVar[dict[str, str]] = {"energy": "energy_per_atom_mae", "forces": "forces_mae",
                                              "stress": "stress_mae"}

    def metrics(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        return {self.METRIC_NAMES[k]: Term.masked((pred.detach() - target).abs(), mask)
                for k, (pred, target, mask) in self._pairs(outputs, batch).items()}


OBJECTIVES = ("energy", "energy_forces", "efs", "denoise_derivative", "denoise_head", "combined")


def build_objective(name: str, *, loss_kind: str = "mae", weights: dict[str, float] | None = None,
                    noise_std: float = 0.1, equilibrium_only: bool = True, properties: Sequence[str] = (),
                    property_weights: dict[str, float] | None = None, seed: int = 0, huber_delta: float = 0.01,
                    head_hidden: int = 64, property_pooling: str = "mean") -> Objective:
    """The objective ``name`` (one of :data:`OBJECTIVES`).

    weights: any of "energy", "forces", "stress", "noise" (defaults :data:`DEFAULT_WEIGHTS`); keys an
    objective does not use are ignored, unknown keys are an error. property_weights: per property
    (default 1). seed: seeds the noise and the fit's record sample.
    """
    unknown = sorted(set(weights or {}) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown loss weight(s) {unknown}; known: {', '.join(DEFAULT_WEIGHTS)}")
    w = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
    common = {"loss_kind": loss_kind, "huber_delta": huber_delta, "seed": seed, "head_hidden": head_hidden}
    if name in EnergyObjective.COMPONENTS:
        return EnergyObjective(name, energy_weight=w["energy"], forces_weight=w["forces"],
                               stress_weight=w["stress"], **common)
    from matforge.models.denoising import DenoiseDerivativeObjective, DenoiseHeadObjective
    from matforge.models.property_objective import PropertyObjective

    if name == "denoise_head":
        return DenoiseHeadObjective(noise_std=noise_std, equilibrium_only=equilibrium_only,
                                    noise_weight=w["noise"], **common)
    if name == "denoise_derivative":
        return DenoiseDerivativeObjective(noise_std=noise_std, equilibrium_only=equilibrium_only,
                                          noise_weight=w["noise"], **common)
    if name == "combined":
        return PropertyObjective(properties, property_weights=property_weights, pooling=property_pooling, **common)
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
