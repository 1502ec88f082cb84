"""An ASE calculator over any matforge model with an energy head (trained or not).

``MatforgeCalculator(path_or_model, dtype="float32"|"float64", device="cpu")`` (a model, a backbone
directory, or the name of a released backbone such as ``matforge-efs-small``) builds the graph of
``atoms`` with :class:`matforge.datasets.graphs.GraphBuilder` at the model's own cutoff and
neighbour limit, and evaluates energy, forces and stress in one autograd pass
(:class:`matforge.models.model.AtomisticModel`). Results in ASE units and conventions:

* ``energy``, ``free_energy``: eV (the same number; the model has no electronic entropy);
* ``forces``: (N, 3) eV/Å, -∂E/∂r;
* ``stress``: (6,) eV/Å³ in ASE's Voigt order (xx, yy, zz, yz, xz, xy), (1/V) ∂E/∂ε, tensile
  positive; only for structures with a non-singular cell (ASE asks for it on periodic systems).

Use ``dtype="float64"`` for finite-difference checks, phonons or tight relaxations. A model passed
as an object is cast and moved in place (``nn.Module.to``) and put in eval mode. Backbones whose
energy is not smooth (``backbone.smooth`` False, e.g. the exact CGCNN with its 12 nearest
neighbours) work but trigger a warning: their forces are exact derivatives between neighbour-list
changes only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

DTYPES = ("float32", "float64")


class MatforgeCalculator(Calculator):
    """ASE calculator for a matforge model (an ``AtomisticModel`` or the path of a backbone file)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, path_or_model: Any, dtype: str = "float32", device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import torch

        from matforge.datasets.graphs import GraphBuilder

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if isinstance(path_or_model, (str, Path)):
            from matforge.finetune.registry import resolve_backbone   # a released name, or a path
            from matforge.models import load

            model = load(resolve_backbone(path_or_model))
        else:
            model = path_or_model
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "heads"):
            raise TypeError(f"expected an AtomisticModel or a backbone path, got {type(model).__name__}")
        if "energy" not in model.heads:
            raise ValueError(f"the model has no 'energy' head (heads: {sorted(model.heads)}), so it gives no "
                             "energy, forces or stress")
        if not getattr(model.backbone, "smooth", False):
            warnings.warn(f"backbone {type(model.backbone).__name__} is not smooth in the positions: its forces "
                          "are exact derivatives, but the energy jumps where the neighbour list changes, so MD "
                          "will not conserve energy", stacklevel=2)
        self.torch_dtype = torch.float64 if dtype == "float64" else torch.float32
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=self.torch_dtype).eval()
        self.graph_builder = GraphBuilder(cutoff=model.backbone.cutoff, max_neighbors=model.backbone.max_neighbors,
                                          dtype=dtype, on_isolated="flag")

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        from torch_geometric.data import Batch

        from matforge.datasets.record import Record

        atoms = self.atoms
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        has_volume = abs(np.linalg.det(cell)) > 1e-12
        if "stress" in properties and not has_volume:
            raise PropertyNotImplementedError("stress needs a cell with non-zero volume")
        record = Record(id="ase", numbers=np.asarray(atoms.numbers, dtype=np.int64),
                        positions=np.asarray(atoms.positions, dtype=np.float64), cell=cell,
                        pbc=np.asarray(atoms.pbc, dtype=bool))
        batch = Batch.from_data_list([self.graph_builder(record)]).to(self.device)
        self.model.check_elements(batch.z)
        out = self.model(batch, forces=True, stress=has_volume)
        energy = float(out["energy"].detach().sum().cpu())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().cpu().double().numpy().copy(),
        }
        if has_volume:
            from ase.stress import full_3x3_to_voigt_6_stress

            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().cpu().double().numpy())
