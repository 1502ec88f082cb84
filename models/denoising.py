"""The denoising objectives (Jia et al. 2024): Gaussian noise η ~ N(0, σ²) on the positions of
(relaxed) structures, applied by the loader before the neighbour list is built
(:class:`~matforge.datasets.noise.PositionNoise`); the batch carries ``noise`` (N, 3) Å and
``noise_mask``. ``L`` is the element-wise loss of :mod:`matforge.models.losses`.

``denoise_head`` — a NoiseHead predicts the (centred) Gaussian displacement η of noised atoms::

    noise   = mean over components of noised atoms   L(η_pred/σ, η/σ)          (units of σ)

``denoise_derivative`` (Jia et al. 2024) — the forces of the model's scalar output must point back
to the un-noised structure. For a structure noised from its relaxed geometry r0 to r0 + η, the
restoring direction is -η; the score of the noise distribution is ∇ log p(r | r0) = -η/σ², and a
Boltzmann density p ∝ exp(-E/kT) has score F/kT. The target::

    F_target = -η/σ          (dimensionless, unit variance per component: the score times σ)
    noise    = mean over components of noised atoms   L(F_pred, -η/σ)

therefore asks for E = kT · (-log p) with kT ≡ σ: near r0 the learnt "energy" is the harmonic well
E ≈ |η|²/(2σ) (stiffness 1/σ per Å, in the units of E). The learnt E is thus not in eV; the energy
head gets scale 1 and shift 0 and no element references. Since ``-σ F_pred`` estimates η, the
validation metric ``denoise_mae`` = mean |(-σ F_pred) - η| (Å) is the same quantity for both
denoising objectives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import Tensor

from matforge.models.fitting import describe_dataset
from matforge.models.losses import Term
from matforge.models.objectives import Objective, _field, _per_atom, has_vector_features

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from matforge.datasets.noise import PositionNoise
    from matforge.models.base import Backbone
    from matforge.models.heads import Head
    from matforge.models.model import AtomisticModel

MIN_RELAXED_SHARE = 0.01
"""With ``equilibrium_only``, the least share of relaxed records in the fitting sample: below it most
batches hold no noised atom, so the loss is zero on most steps and the run trains on almost nothing."""


class _DenoiseObjective(Objective):
    """Shared by both denoising objectives: the noise transform, its fields, the weight."""

    def __init__(self, *, noise_std: float = 0.1, equilibrium_only: bool = True, noise_weight: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(float(noise_std)) and noise_std > 0):
            raise ValueError(f"noise_std must be a positive number of Å, got {noise_std}")
        self.noise_std = float(noise_std)
        self.equilibrium_only = bool(equilibrium_only)
        self._weight = float(noise_weight)

    def record_transform(self) -> "PositionNoise":
        from matforge.datasets.noise import PositionNoise

        return PositionNoise(self.noise_std, self.seed, equilibrium_only=self.equilibrium_only)

    def weights(self) -> dict[str, float]:
        return {"noise": self._weight}

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "noise_std": self.noise_std, "equilibrium_only": self.equilibrium_only}

    def _fit(self, sample: Any, dataset: Any) -> dict[str, Any]:
        if not self.equilibrium_only:
            return {}
        advice = ("set denoise.equilibrium_only=false (equilibrium_only=False) to noise every structure, each "
                  "frame its own reference, or train on a dataset of relaxed structures")
        if sample.num_equilibrium == 0:
            raise ValueError(f"objective {self.name!r} noises relaxed structures only, and none of the "
                             f"{sample.num_records} records sampled from {describe_dataset(dataset)} is flagged "
                             f"relaxed: {advice}")
        if sample.num_equilibrium < MIN_RELAXED_SHARE * sample.num_records:
            raise ValueError(f"objective {self.name!r} noises relaxed structures only, and only "
                             f"{sample.num_equilibrium} of the {sample.num_records} records sampled from "
                             f"{describe_dataset(dataset)} are flagged relaxed (under {MIN_RELAXED_SHARE:.0%}): most "
                             f"batches would have nothing to learn from; {advice}")
        return {}

    def _noise(self, batch: Any, num_atoms: int) -> tuple[Tensor, Tensor]:
        hint = " and batch.noise_mask from its record transform: apply objective.record_transform() in the loader"
        eta = _field(batch, "noise", self.name, hint)
        mask = _field(batch, "noise_mask", self.name, hint)
        if eta.shape != (num_atoms, 3):
            raise ValueError(f"batch.noise has shape {tuple(eta.shape)}, expected ({num_atoms}, 3)")
        return eta, _per_atom(mask, batch, num_atoms).unsqueeze(-1)

    def label_masks(self, batch: Any) -> dict[str, tuple[Tensor, tuple[int, ...]]]:
        num_atoms = int(batch.num_nodes)
        return {"noise": (self._noise(batch, num_atoms)[1], (num_atoms, 3))}

    def _predicted_noise(self, outputs: dict[str, Tensor]) -> Tensor:
        """η estimated by the model (N, 3), Å."""
        raise NotImplementedError

    def metrics(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        pred = self._predicted_noise(outputs).detach()
        eta, mask = self._noise(batch, pred.shape[0])
        return {"denoise_mae": Term.masked((pred - eta.to(pred.dtype)).abs(), mask)}


class DenoiseHeadObjective(_DenoiseObjective):
    """``denoise_head``: a NoiseHead predicts η; loss in units of σ."""

    name = "denoise_head"

    def build_heads(self, backbone: "Backbone") -> dict[str, "Head"]:
        from matforge.models.heads import NoiseHead

        return {"noise": NoiseHead(backbone.embedding_dim, hidden=self.head_hidden,
                                   use_vector=has_vector_features(backbone), cutoff=backbone.cutoff)}

    def _predicted_noise(self, outputs: dict[str, Tensor]) -> Tensor:
        return outputs["noise"]

    def terms(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        pred = outputs["noise"]
        eta, mask = self._noise(batch, pred.shape[0])
        sigma = self.noise_std
        return {"noise": Term.masked(self._loss(pred / sigma, eta.to(pred.dtype) / sigma), mask)}


class DenoiseDerivativeObjective(_DenoiseObjective):
    """``denoise_derivative`` (Jia et al.): forces of the scalar output match -η/σ."""

    name = "denoise_derivative"
    needs_forces = True
    create_graph = True

    def build_heads(self, backbone: "Backbone") -> dict[str, "Head"]:
        from matforge.models.heads import EnergyHead

        return {"energy": EnergyHead(backbone.embedding_dim, hidden=self.head_hidden)}

    def _fit(self, sample: Any, dataset: Any) -> dict[str, Any]:
        super()._fit(sample, dataset)
        # The learnt scalar is a free energy in units with kT = σ (module docstring), not eV.
        return {"element_refs": {}, "energy_scale": 1.0, "energy_shift": 0.0, "energy_scale_source": "denoise"}

    def inert_parameters(self, model: "AtomisticModel") -> list["torch.nn.Parameter"]:
        """The energy head's output bias: it shifts every atom's energy by the same amount, so it
        never reaches the forces this objective trains on."""
        from torch import nn

        linears = [m for m in self._head(model, "energy").modules() if isinstance(m, nn.Linear)]
        return [linears[-1].bias] if linears and linears[-1].bias is not None else []

    def target_forces(self, eta: Tensor) -> Tensor:
        """F_target = -η/σ: the restoring direction, dimensionless."""
        return -eta / self.noise_std

    def _predicted_noise(self, outputs: dict[str, Tensor]) -> Tensor:
        return -self.noise_std * self._forces(outputs)

    def _forces(self, outputs: dict[str, Tensor]) -> Tensor:
        if "forces" not in outputs:
            raise ValueError("objective 'denoise_derivative' needs outputs['forces']: call the model with "
                             "**objective.forward_options()")
        return outputs["forces"]

    def terms(self, outputs: dict[str, Tensor], batch: Any) -> dict[str, Term]:
        f = self._forces(outputs)
        eta, mask = self._noise(batch, f.shape[0])
        return {"noise": Term.masked(self._loss(f, self.target_forces(eta.to(f.dtype))), mask)}
