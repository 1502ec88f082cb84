"""Structures, seeded models and finite-difference helpers for the physics tests of
``AtomisticModel`` (``test_model_efs.py``, ``test_model_symmetry.py``).

Real structures (mlearn Mo frames, perov5 cells; see ``tests/fixtures/physics/README.md``) and cells
derived from them (left-handed, 1-atom, supercells, rattled, strained), all in float64. Models are
untrained but seeded, with their linear weights scaled up by ``WEIGHT_SCALE`` so the energy is a
strongly non-linear function of the geometry. Finite differences re-run the neighbour list at every
displaced geometry (central differences, step ``FD_STEP``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch

from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.readers.structures import from_cif_text, from_structure_dict
from matforge.datasets.record import Record
from matforge.models.heads import EnergyHead
from matforge.models.model import AtomisticModel
from matforge.models.registry import create

FIXTURES = Path(__file__).parent / "fixtures" / "physics"
CUTOFF = 4.5
ARCHS = {
    # avg_neighbors=1: messages undivided, so the random model's forces are O(0.1-1) eV/Å
    "cgcnn_smooth": dict(hidden=16, num_interactions=2, cutoff=CUTOFF, num_radial=8, avg_neighbors=1.0),
    "painn": dict(hidden=16, num_interactions=2, cutoff=CUTOFF, num_radial=8),
}
WEIGHT_SCALE = 2.0
RTOL = 1e-4
FD_STEP = 1e-4  # Å for positions, dimensionless for strain


# ----------------------------------------------------------------------------------------------
# structures


def make_record(rid: str, numbers, positions, cell, pbc=(True, True, True)) -> Record:
    return Record(id=rid, numbers=np.asarray(numbers, dtype=np.int64), positions=np.asarray(positions, float),
                  cell=np.asarray(cell, float), pbc=np.asarray(pbc, dtype=bool))


def _mlearn() -> list[Record]:
    entries = json.loads((FIXTURES / "mlearn_Mo_training_subset.json").read_text())
    return [make_record(f"mlearn-Mo-{e['group']}-{e['num_atoms']}", *from_structure_dict(e["structure"]))
            for e in entries]


def _perov5() -> list[Record]:
    with open(FIXTURES / "perov5_val_subset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [make_record(f"perov5-{row['material_id']}", *from_cif_text(row["cif"])) for row in rows]


def supercell(record: Record, n: tuple[int, int, int]) -> Record:
    """Tile ``record`` n0×n1×n2 times (atoms of image (a, b, c) follow in blocks)."""
    images = np.array([(a, b, c) for a in range(n[0]) for b in range(n[1]) for c in range(n[2])], dtype=float)
    offsets = images @ record.cell
    positions = (record.positions[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
    return make_record(f"{record.id}-x{n}", np.tile(record.numbers, len(images)), positions,
                   np.diag(n) @ record.cell)


def left_handed(record: Record) -> Record:
    """The same crystal described by lattice vectors (b, a, c): det(cell) < 0."""
    return make_record(record.id + "-left", record.numbers, record.positions, record.cell[[1, 0, 2]])


def one_atom_cell() -> Record:
    """bcc Mo primitive cell (a = 3.16 Å), sheared by a small symmetric strain: a triclinic 1-atom
    cell whose stress has all six components."""
    a = 3.16
    cell = 0.5 * a * np.array([[-1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    strain = np.array([[0.02, 0.015, -0.01], [0.015, -0.01, 0.02], [-0.01, 0.02, 0.03]])
    return make_record("Mo-bcc-1atom-sheared", [42], [[0.3, -0.2, 0.1]], cell @ (np.eye(3) + strain))


def deform(record: Record, strain: np.ndarray) -> Record:
    """Apply ``F = I + strain`` to positions and cell (row vectors), the convention of the model."""
    f = np.eye(3) + strain
    return make_record(record.id, record.numbers, record.positions @ f, record.cell @ f, record.pbc)


def rattle(record: Record, amplitude: float, seed: int) -> Record:
    rng = np.random.default_rng(seed)
    return make_record(record.id, record.numbers, record.positions + amplitude * rng.standard_normal(record.positions.shape),
                   record.cell, record.pbc)


MLEARN = _mlearn()
PEROV5 = _perov5()
# name -> record; the 2-atom bcc frame is rattled (it is a perfect crystal, where forces vanish)
STRUCTURES = {
    "mlearn-Mo-AIMD-54": MLEARN[2],
    "mlearn-Mo-surface-6": MLEARN[1],
    "mlearn-Mo-bcc-2-rattled": rattle(MLEARN[0], 0.05, seed=1),
    "perov5-CuCdN3-rattled": rattle(PEROV5[0], 0.05, seed=2),
    "perov5-VIrO3-left-handed": left_handed(rattle(PEROV5[1], 0.05, seed=3)),
    "Mo-1-atom": one_atom_cell(),
}


# ----------------------------------------------------------------------------------------------
# model and evaluation helpers


def make_model(arch: str, seed: int = 0) -> AtomisticModel:
    torch.manual_seed(seed)
    backbone = create(arch, **ARCHS[arch])
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(WEIGHT_SCALE)
    head = EnergyHead(backbone.embedding_dim, hidden=16, scale=3.0)
    return AtomisticModel(backbone, {"energy": head}).double()


def graph_batch(records: list[Record], model: AtomisticModel) -> Batch:
    """Graphs at the model's own cutoff and neighbour limit, float64."""
    builder = GraphBuilder(cutoff=model.cutoff, max_neighbors=model.max_neighbors, dtype="float64")
    return Batch.from_data_list([builder(r) for r in records])


def efs(model: AtomisticModel, record: Record) -> tuple[float, np.ndarray, np.ndarray]:
    out = model(graph_batch([record], model), forces=True, stress=True)
    return (float(out["energy"].detach()[0]), out["forces"].detach().numpy(), out["stress"][0].detach().numpy())


def energy(model: AtomisticModel, record: Record) -> float:
    with torch.no_grad():
        return float(model(graph_batch([record], model))["energy"][0])


def fd_forces(model: AtomisticModel, record: Record, components: list[tuple[int, int]]) -> np.ndarray:
    values = []
    for atom, axis in components:
        e = []
        for sign in (1.0, -1.0):
            moved = record.positions.copy()
            moved[atom, axis] += sign * FD_STEP
            e.append(energy(model, make_record(record.id, record.numbers, moved, record.cell, record.pbc)))
        values.append(-(e[0] - e[1]) / (2 * FD_STEP))
    return np.array(values)


def fd_stress(model: AtomisticModel, record: Record) -> np.ndarray:
    """σ_ab = (1/|V|) dE/dh along the symmetric strain h (e_a e_bᵀ + e_b e_aᵀ)/2."""
    volume = abs(np.linalg.det(record.cell))
    sigma = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            e = []
            for sign in (1.0, -1.0):
                strain = np.zeros((3, 3))
                strain[a, b] += sign * FD_STEP / 2
                strain[b, a] += sign * FD_STEP / 2
                e.append(energy(model, deform(record, strain)))
            sigma[a, b] = sigma[b, a] = (e[0] - e[1]) / (2 * FD_STEP) / volume
    return sigma


def assert_close_relative(analytic: np.ndarray, numeric: np.ndarray, what: str) -> None:
    """Max deviation <= RTOL × the largest magnitude (components zero by symmetry included)."""
    scale = np.abs(numeric).max()
    err = np.abs(analytic - numeric).max()
    assert err <= RTOL * scale, f"{what}: max error {err:.3e} > {RTOL} × {scale:.3e}"


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q
