"""``AtomisticModel``: a backbone, its heads, per-element reference energies, and energy, forces and
stress from one scalar by autograd.

For a batch of B graphs with positions ``r`` (N, 3) and cells ``L_b`` (rows, Å), a zero strain
``ε_b`` (B, 3, 3) is symmetrised and applied to positions and cells before the edge vectors are
formed (:func:`matforge.models.base.edge_vectors`)::

    E_b     = Σ_{i∈b} ε_i(r, ε)  +  Σ_{i∈b} E_ref[Z_i]                       (eV)
    F_i     = -∂E/∂r_i                                                     (eV/Å)
    σ_b     = (1 / |det L_b|) · ∂E_b/∂ε_b  at ε = 0                         (eV/Å³, ASE sign)

Because the strain ``ε = ½ (s + sᵀ)`` is built from a free leaf ``s``, the gradient with respect to
``s`` is the symmetric part of ∂E/∂ε, so σ is symmetric. ``|det L|`` makes the stress of a
left-handed cell (det L < 0) the same as that of the equivalent right-handed one. Graphs with a zero
cell (non-periodic) have no defined stress: they get zeros.

Forces and stress come from one ``torch.autograd.grad`` call over ``Σ_b E_b`` (graphs do not
interact, so the gradient of the sum is the per-graph gradient); ``create_graph=True`` keeps that
gradient differentiable, which training on forces and stress needs (double backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from matforge.models.base import Backbone, GraphInputs, edge_vectors
from matforge.models.gradient_scope import skipping
from matforge.models.heads import Head, sum_per_graph

NUM_ELEMENT_SLOTS = 101  # index = atomic number Z (0 unused), Z <= 100


def _element_names(zs: list[int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(f"{chemical_symbols[z] if 0 < z < len(chemical_symbols) else '?'} (Z={z})" for z in zs)


class AtomisticModel(nn.Module):
    """Backbone + heads + element reference energies; see the module docstring for the maths.

    backbone: any :class:`~matforge.models.base.Backbone`.
    heads: name -> :class:`~matforge.models.heads.Head`; the head named ``"energy"`` (if any) gives the
        energy that forces and stress differentiate.
    element_refs: (101,) eV per atom of element Z (index Z); zeros by default.
    elements: atomic numbers seen in training ([] = no restriction), see :meth:`check_elements`.
    """

    def __init__(self, backbone: Backbone, heads: dict[str, Head], element_refs: Tensor | None = None,
                 elements: list[int] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        if element_refs is None:
            element_refs = torch.zeros(NUM_ELEMENT_SLOTS)
        element_refs = torch.as_tensor(element_refs, dtype=torch.get_default_dtype()).reshape(-1)
        if element_refs.shape != (NUM_ELEMENT_SLOTS,):
            raise ValueError(f"element_refs must have {NUM_ELEMENT_SLOTS} entries (index = Z), "
                             f"got {tuple(element_refs.shape)}")
        self.register_buffer("element_refs", element_refs.clone())
        self.elements: list[int] = sorted({int(z) for z in (elements or [])})

    @property
    def cutoff(self) -> float:
        return self.backbone.cutoff

    @property
    def max_neighbors(self) -> int | None:
        return self.backbone.max_neighbors

    def check_elements(self, z: Tensor) -> None:
        """Raise ValueError naming any atomic number in ``z`` outside ``self.elements``."""
        if not self.elements:
            return
        present = {int(v) for v in torch.unique(z.detach().cpu()).tolist()}
        unseen = sorted(present - set(self.elements))
        if unseen:
            raise ValueError(f"the model was not trained on element(s) {_element_names(unseen)}; "
                             f"it knows {_element_names(self.elements)}")

    def forward(self, batch: Any, *, forces: bool = False, stress: bool = False, create_graph: bool = False,
                strain: bool | None = None) -> dict[str, Tensor]:
        """Run backbone and heads on a PyG batch (fields of ``matforge.datasets.graphs``).

        forces, stress: also return ``forces`` (N, 3) eV/Å and ``stress`` (B, 3, 3) eV/Å³.
        create_graph: keep the derivative graph (training on forces/stress).
        strain: apply the (zero) strain even without ``stress`` (None: exactly when ``stress``); the
            strain leaf is then returned as ``strain`` (B, 3, 3) for callers that differentiate
            themselves.
        Returns the union of the heads' outputs, plus ``energy`` with element references added,
        ``node`` (N, F) and the requested derivatives.
        """
        if strain is None:
            strain = stress
        if stress and not strain:
            raise ValueError("stress needs the strain (strain=False contradicts stress=True)")
        derivatives = forces or stress
        if derivatives and "energy" not in self.heads:
            raise ValueError(f"forces/stress need an 'energy' head; this model has {sorted(self.heads)}")

        z: Tensor = batch.z
        pos: Tensor = batch.pos
        cell: Tensor = batch.cell.reshape(-1, 3, 3)
        node_batch: Tensor | None = getattr(batch, "batch", None)
        if node_batch is None:
            node_batch = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        num_graphs = int(getattr(batch, "num_graphs", cell.shape[0]) or cell.shape[0])

        grad_outside = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad_outside or derivatives or bool(strain)):
            if forces and not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            strain_leaf: Tensor | None = None
            applied = None
            if strain:
                strain_leaf = torch.zeros((num_graphs, 3, 3), dtype=pos.dtype, device=pos.device, requires_grad=True)
                applied = 0.5 * (strain_leaf + strain_leaf.transpose(1, 2))
            edge_vec, _, _ = edge_vectors(pos, cell, batch.shifts, batch.edge_index, node_batch, applied)
            inputs = GraphInputs(z=z, edge_index=batch.edge_index, edge_vec=edge_vec, batch=node_batch,
                                 num_graphs=num_graphs)
            out = self.backbone(inputs)
            results: dict[str, Tensor] = {"node": out.node}
            for head in self.heads.values():
                results.update(head(out, inputs))
            if "energy" in self.heads:
                refs = self.element_refs.to(results["energy"].dtype)[z]
                results["energy"] = results["energy"] + sum_per_graph(refs, node_batch, num_graphs)
            if derivatives:
                self._derivatives(results, pos, strain_leaf, cell, forces, stress, create_graph)
        if not grad_outside:  # inference: hand back plain tensors, free the graph
            results = {k: v.detach() for k, v in results.items()}
        if strain_leaf is not None and not stress:
            results["strain"] = strain_leaf
        return results

    @staticmethod
    def _derivatives(results: dict[str, Tensor], pos: Tensor, strain_leaf: Tensor | None, cell: Tensor,
                     forces: bool, stress: bool, create_graph: bool) -> None:
        wrt: list[Tensor] = []
        if forces:
            wrt.append(pos)
        if stress:
            assert strain_leaf is not None
            wrt.append(strain_leaf)
        total = results["energy"].sum()
        if total.requires_grad:
            with skipping("weights"):   # this pass reads position and strain gradients only
                grads = torch.autograd.grad(total, wrt, create_graph=create_graph, allow_unused=True,
                                            materialize_grads=True)
        else:  # nothing in the energy depends on parameters or geometry (e.g. only isolated atoms)
            grads = tuple(torch.zeros_like(t) for t in wrt)
        k = 0
        if forces:
            results["forces"] = -grads[0]
            k = 1
        if stress:
            volume = torch.linalg.det(cell).abs()
            periodic = volume > 1e-12
            inv_volume = torch.where(periodic, 1.0 / torch.where(periodic, volume, torch.ones_like(volume)),
                                     torch.zeros_like(volume))
            results["stress"] = grads[k] * inv_volume.view(-1, 1, 1)

    def save(self, path: Any, provenance: dict | None = None) -> Any:
        """Write the backbone file (see ``matforge.models.backbone_file``)."""
        from matforge.models import backbone_file

        return backbone_file.save(self, path, provenance=provenance)
