"""Heads: small modules on top of a backbone's per-atom embeddings, one output family each.

Every head maps ``(BackboneOutput, GraphInputs)`` to a dict of tensors and can describe itself as a
JSON-able ``spec()`` (``{"kind": ..., **constructor kwargs}``) that :func:`build_head` turns back into
the same module, so the backbone file stores heads by spec and weights.

=============  =====================================================  ===============================
kind           outputs                                                units
=============  =====================================================  ===============================
``energy``     ``atom_energy`` (N,), ``energy`` (B,) = Σ_i ε_i        eV (before element references)
``noise``      ``noise`` (N, 3), equivariant                          Å (the units of the noise)
``property``   ``properties`` (B, P)                                  the properties' own units
``cgcnn``      ``properties`` (B, 1) [+ ``logits`` (B, 2)]            see ``matforge.models.cgcnn``
=============  =====================================================  ===============================

Energy: ``ε_i = scale · MLP(h_i) + shift`` and ``E_b = Σ_{i∈b} ε_i`` (extensive; ``scale``/``shift``
are fixed buffers the trainer may set from data statistics).

Noise, equivariant by construction:

* with vector features ``v_i`` (N, 3, F) (PaiNN): ``n_i = Σ_f v_i[:, f] · g_f(h_i)`` with ``g`` an MLP
  of the invariant features (a gated linear map of vectors; rotates with the structure);
* scalar-only backbones: ``n_i = Σ_j w(h_i, h_j, |r_ij|) · u(|r_ij|) · r_ij / |r_ij|`` with ``w`` an MLP
  of the two embeddings and a Gaussian expansion of the distance, and ``u`` a cosine cutoff.

Property: ``y_b = mean + std ⊙ pool_{i∈b} MLP(h_i)`` (atom-wise MLP, then mean or sum pooling, then
the stored normaliser), so ``properties`` are in physical units.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from matforge.models.base import BackboneOutput, GraphInputs
from matforge.models.radial import CosineCutoff, GaussianBasis

HEADS: dict[str, str] = {
    "energy": "matforge.models.heads:EnergyHead",
    "noise": "matforge.models.heads:NoiseHead",
    "property": "matforge.models.heads:PropertyHead",
    "cgcnn": "matforge.models.cgcnn:CGCNNHead",
}


class Head(nn.Module):
    """Base class: ``forward(out, inputs) -> dict[str, Tensor]`` and ``spec() -> dict``."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self._spec: dict[str, Any] = {}

    def forward(self, out: BackboneOutput, inputs: GraphInputs) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """JSON-able ``{"kind": ..., **constructor kwargs}``; ``build_head(spec)`` rebuilds the head."""
        return {"kind": self.kind, **self._spec}


def head_class(kind: str) -> type[Head]:
    """The class registered as ``kind`` in :data:`HEADS` (imported on demand)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(HEADS)}")
    module, cls = HEADS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def build_head(spec: dict[str, Any]) -> Head:
    """Rebuild a head from its ``spec()``."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"a head spec must be a dict with a 'kind' key, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    cls = head_class(spec["kind"])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"head spec {spec!r} does not match {cls.__name__}: {exc}") from None


def mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` hidden SiLU layers of width ``hidden``, then a linear map to ``out_dim``."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def sum_per_graph(values: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Σ over the atoms of each graph: (N, ...) -> (B, ...)."""
    out = values.new_zeros((num_graphs, *values.shape[1:]))
    return out.index_add(0, batch, values)


class EnergyHead(Head):
    """Per-atom energies ``ε_i = scale · MLP(h_i) + shift`` (eV) and their sum per graph.

    in_dim: F of the backbone. hidden: MLP width. num_layers: hidden layers (0: linear).
    scale, shift: eV, fixed (buffers), e.g. the per-atom energy std and mean after references.
    """

    kind = "energy"

    def __init__(self, in_dim: int, hidden: int = 64, num_layers: int = 1, scale: float = 1.0,
                 shift: float = 0.0) -> None:
        super().__init__()
        self._spec = {"in_dim": in_dim, "hidden": hidden, "num_layers": num_layers, "scale": float(scale),
                      "shift": float(shift)}
        self.mlp = mlp(in_dim, hidden, 1, num_layers)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("shift", torch.tensor(float(shift)))

    def set_normalization(self, scale: float, shift: float) -> None:
        """Set the fixed per-atom scale and shift (eV); kept in the spec too."""
        self.scale.fill_(float(scale))
        self.shift.fill_(float(shift))
        self._spec.update(scale=float(scale), shift=float(shift))

    def forward(self, out: BackboneOutput, inputs: GraphInputs) -> dict[str, Tensor]:
        atom_energy = self.scale * self.mlp(out.node).squeeze(-1) + self.shift
        return {"atom_energy": atom_energy, "energy": sum_per_graph(atom_energy, inputs.batch, inputs.num_graphs)}


class NoiseHead(Head):
    """Equivariant per-atom vectors (N, 3) predicting the position noise (Å).

    use_vector=True needs a backbone with vector features (``out.vector`` (N, 3, F), F = in_dim);
    otherwise the edge sum over neighbours within ``cutoff`` (Å) is used, with ``num_basis``
    Gaussians for the distance.
    """

    kind = "noise"

    def __init__(self, in_dim: int, hidden: int = 64, use_vector: bool = False, cutoff: float = 5.0,
                 num_basis: int = 16) -> None:
        super().__init__()
        self._spec = {"in_dim": in_dim, "hidden": hidden, "use_vector": bool(use_vector), "cutoff": float(cutoff),
                      "num_basis": num_basis}
        self.use_vector = bool(use_vector)
        if self.use_vector:
            self.gate = mlp(in_dim, hidden, in_dim, 1)
        else:
            self.distance = GaussianBasis(num_basis, cutoff)
            self.cutoff_fn = CosineCutoff(cutoff)
            self.weight = mlp(2 * in_dim + num_basis, hidden, 1, 1)

    def forward(self, out: BackboneOutput, inputs: GraphInputs) -> dict[str, Tensor]:
        h = out.node
        if self.use_vector:
            if out.vector is None:
                raise ValueError("NoiseHead(use_vector=True) needs a backbone with vector features "
                                 "(e.g. painn); use use_vector=False for scalar-only backbones")
            noise = (out.vector * self.gate(h).unsqueeze(1)).sum(dim=-1)
            return {"noise": noise}
        j, i = inputs.edge_index[0], inputs.edge_index[1]
        length = inputs.edge_length
        features = torch.cat([h[i], h[j], self.distance(length)], dim=-1)
        w = self.weight(features).squeeze(-1) * self.cutoff_fn(length)
        unit = inputs.edge_vec / length.clamp_min(1e-9).unsqueeze(-1)
        noise = h.new_zeros((h.shape[0], 3)).index_add(0, i, w.unsqueeze(-1) * unit)
        return {"noise": noise}


class PropertyHead(Head):
    """Named scalar properties per graph, ``y = mean + std ⊙ pool(MLP(h))`` (physical units).

    names: property names (P). pooling: "mean" (intensive) or "sum" (extensive).
    mean, std: per-property normaliser (default 0 and 1), stored as buffers and in the spec.
    task: "regression", or "classification": binary labels, ``logits`` (B, P) = pool(MLP(h)) and
    ``properties`` = sigmoid(logits), the probability of class 1 (the normaliser is not used).
    """

    kind = "property"

    def __init__(self, in_dim: int, names: Sequence[str], pooling: str = "mean", hidden: int = 64,
                 num_layers: int = 1, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 task: str = "regression") -> None:
        super().__init__()
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        self.task = task
        names = [str(n) for n in names]
        if not names:
            raise ValueError("PropertyHead needs at least one property name")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate property names in {names}")
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")
        p = len(names)
        mean = [0.0] * p if mean is None else [float(m) for m in mean]
        std = [1.0] * p if std is None else [float(s) for s in std]
        if len(mean) != p or len(std) != p:
            raise ValueError(f"mean and std need {p} values (one per property {names}), got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self._spec = {"in_dim": in_dim, "names": names, "pooling": pooling, "hidden": hidden,
                      "num_layers": num_layers, "mean": mean, "std": std}
        if task != "regression":  # cards written before the field existed stay readable and equal
            self._spec["task"] = task
        self.names = names
        self.pooling = pooling
        self.mlp = mlp(in_dim, hidden, p, num_layers)
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the stored normaliser (one mean and std per property, physical units)."""
        mean_t = torch.as_tensor([float(m) for m in mean], dtype=self.mean.dtype)
        std_t = torch.as_tensor([float(s) for s in std], dtype=self.std.dtype)
        if mean_t.shape != self.mean.shape or std_t.shape != self.std.shape:
            raise ValueError(f"need {self.mean.numel()} means and stds, got {mean_t.numel()} and {std_t.numel()}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)
        self._spec.update(mean=mean_t.tolist(), std=std_t.tolist())

    def forward(self, out: BackboneOutput, inputs: GraphInputs) -> dict[str, Tensor]:
        raw = sum_per_graph(self.mlp(out.node), inputs.batch, inputs.num_graphs)
        if self.pooling == "mean":
            counts = torch.bincount(inputs.batch, minlength=inputs.num_graphs).clamp_min(1)
            raw = raw / counts.unsqueeze(-1).to(raw.dtype)
        if self.task == "classification":
            return {"properties": torch.sigmoid(raw), "logits": raw}
        return {"properties": self.mean + self.std * raw}
