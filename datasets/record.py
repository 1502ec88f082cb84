"""The record: one structure with its labels, as plain arrays and scalars.

Shapes and units (N atoms):

==============  ===============  =============================================
field           shape / type     meaning
==============  ===============  =============================================
``id``          str              unique within a dataset
``numbers``     (N,) int64       atomic numbers, 1..100
``positions``   (N, 3) float64   Cartesian positions, Å
``cell``        (3, 3) float64   lattice vectors as rows, Å (zeros if no pbc)
``pbc``         (3,) bool        periodicity along each lattice vector
``energy``      float | None     total energy of the cell, eV
``forces``      (N, 3) | None    eV/Å
``stress``      (3, 3) | None    eV/Å³, ASE sign (tensile positive)
``properties``  dict[str, float] named scalar labels (band gap, ...), units per name
``source``      str              file the record came from
``trajectory``  str              trajectory / material id; frames of one stay in one split
``frame``       int | None       index of the frame in its trajectory
``equilibrium`` bool | None      True for relaxed structures, False for off-equilibrium frames
==============  ===============  =============================================

A record never holds edges: neighbour lists depend on the cutoff and on (noised, strained) positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from matforge.datasets.errors import RecordError

MAX_ATOMIC_NUMBER = 100


@dataclass
class Record:
    """One structure and its labels. See the module docstring for shapes and units."""

    id: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    properties: dict[str, float] = field(default_factory=dict)
    source: str = ""
    trajectory: str = ""
    frame: int | None = None
    equilibrium: bool | None = None

    @property
    def natoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def volume(self) -> float:
        """|det(cell)| in Å³ (0 for a non-periodic record without a cell)."""
        return float(abs(np.linalg.det(self.cell)))

    def composition(self) -> str:
        """Reduced composition as ``'Z:count-Z:count'`` sorted by Z, e.g. ``'8:3-22:1-38:1'``
        for SrTiO3. Cheap (no pymatgen) and equal for every cell of the same material, which is
        what composition-grouped splits need."""
        zs, counts = np.unique(self.numbers, return_counts=True)
        g = int(np.gcd.reduce(counts))
        return "-".join(f"{int(z)}:{int(c) // g}" for z, c in zip(zs, counts))

    def to_ase(self):
        """Return an :class:`ase.Atoms` (labels attached as a SinglePointCalculator)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            results["stress"] = self.stress
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def _finite(name: str, value: np.ndarray | float) -> None:
    if not np.all(np.isfinite(value)):
        raise RecordError(f"{name} contains NaN or inf")


def validate(record: Record) -> Record:
    """Coerce dtypes and check shapes, ranges and finiteness; raise :class:`RecordError`.

    Returns the same record with arrays in their canonical dtypes.
    """
    if not isinstance(record.id, str) or not record.id:
        raise RecordError("empty record id")
    try:
        numbers = np.asarray(record.numbers, dtype=np.int64).reshape(-1)
        positions = np.asarray(record.positions, dtype=np.float64)
        cell = np.asarray(record.cell, dtype=np.float64)
        pbc = np.asarray(record.pbc, dtype=bool).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"structure arrays are not numeric: {exc}") from None
    n = numbers.shape[0]
    if n == 0:
        raise RecordError("structure has no atoms")
    if positions.shape != (n, 3):
        raise RecordError(f"positions have shape {positions.shape}, expected ({n}, 3)")
    if cell.shape != (3, 3):
        raise RecordError(f"cell has shape {cell.shape}, expected (3, 3)")
    if pbc.shape == (1,):
        pbc = np.repeat(pbc, 3)
    if pbc.shape != (3,):
        raise RecordError(f"pbc has shape {pbc.shape}, expected (3,)")
    bad = numbers[(numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)]
    if bad.size:
        raise RecordError(f"atomic number {int(bad[0])} outside 1..{MAX_ATOMIC_NUMBER}")
    _finite("positions", positions)
    _finite("cell", cell)
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-6:
        raise RecordError("periodic structure with a singular cell (volume ~ 0)")

    energy = record.energy
    if energy is not None:
        try:
            energy = float(energy)
        except (TypeError, ValueError):
            raise RecordError(f"energy {energy!r} is not a number") from None
        _finite("energy", energy)

    forces = record.forces
    if forces is not None:
        try:
            forces = np.asarray(forces, dtype=np.float64)
        except (TypeError, ValueError):
            raise RecordError("forces are not a numeric array") from None
        if forces.shape != (n, 3):
            raise RecordError(f"forces have shape {forces.shape}, expected ({n}, 3)")
        _finite("forces", forces)

    stress = record.stress
    if stress is not None:
        try:
            stress = np.asarray(stress, dtype=np.float64)
        except (TypeError, ValueError):
            raise RecordError("stress is not a numeric array") from None
        if stress.shape != (3, 3):
            raise RecordError(f"stress has shape {stress.shape}, expected (3, 3)")
        _finite("stress", stress)

    properties: dict[str, float] = {}
    for key, value in record.properties.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise RecordError(f"property {key!r} = {value!r} is not a number") from None
        if not math.isfinite(v):
            raise RecordError(f"property {key!r} is NaN or inf")
        properties[str(key)] = v

    record.numbers, record.positions, record.cell, record.pbc = numbers, positions, cell, pbc
    record.energy, record.forces, record.stress, record.properties = energy, forces, stress, properties
    if record.frame is not None:
        record.frame = int(record.frame)
    if record.equilibrium is not None:
        record.equilibrium = bool(record.equilibrium)
    record.trajectory = str(record.trajectory or record.id)
    return record
