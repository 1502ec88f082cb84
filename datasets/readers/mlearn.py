"""mlearn JSON (Zuo et al., J. Phys. Chem. A 2020; github.com/materialsvirtuallab/mlearn).

Each file (``data/<element>/{training,test}.json``) is a list of objects::

    {"structure": {pymatgen Structure.as_dict()},
     "num_atoms": 64, "element": "Ge", "group": "Elastic", "tag": "train",
     "description": "Ge 2x2x2 cell, mode 0, strain -0.1",
     "outputs": {"energy": -280.38,              # total energy of the cell, eV
                 "forces": [[fx, fy, fz], ...],  # (N, 3) eV/Å
                 "virial_stress": [xx, yy, zz, xy, yz, xz]}}  # kBar, VASP sign

Conversion (listed in the manifest):

* stress: the six ``virial_stress`` values are VASP's stress in kBar with VASP's sign (positive =
  compressive: the 'Elastic' cells strained by -0.1 carry about +137 kBar along the strain). They
  become a symmetric 3×3 tensor in eV/Å³ with ASE's sign,
  ``σ_ase = -0.1 · σ_kbar / 160.21766208`` (:mod:`matforge.datasets.units`). The component order is
  (xx, yy, zz, xy, yz, xz) as the mlearn authors state (mlearn issue #64) and as the shear cells of
  Ge, Li and Si confirm (a cell sheared in the yz plane has its large value at position 4).
  **Caveat**: in ``Mo/training.json`` the cells sheared in the yz plane carry their shear stress at
  position 5 and the xz-sheared ones at position 4, i.e. that file follows (xx, yy, zz, xy, xz, yz);
  convert it with ``--option stress_order=xx,yy,zz,xy,xz,yz``. Option ``stress_order`` takes any
  order of the six components.
* energy: total eV as stored; forces: eV/Å as stored.
* record id ``<element>-<tag>-<index in the file>`` (``Ge-train-17``), unique within and across
  the training and test files of all elements.
* trajectory, frame and equilibrium flag from ``group`` and ``description`` (see
  :func:`classify`): AIMD snapshots ("Snapshot k of M of <run>", groups 'AIMD-NVT' and 'Vacancy')
  of one run share the trajectory ``<element>/<run>`` with frame k, also across the training and
  test files, and are off-equilibrium; all 'Elastic' cells of an element (the strained cells, the
  "Ground state crystal" and the relaxed unit cell they derive from, several of them symmetry
  copies of one another) share the trajectory ``<element>/elastic``; the ground state and relaxed
  cells are at equilibrium, the strained cells are not; each 'Surface' slab is its own trajectory
  with an unknown equilibrium flag (relaxed slabs from the Materials Project surface database,
  with residual forces up to 0.4 eV/Å here).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers.base import RawItem, Reader, read_head
from matforge.datasets.readers.json_list import load_json_list, looks_like_json_list
from matforge.datasets.readers.structures import from_structure_dict
from matforge.datasets.record import Record
from matforge.datasets.units import VASP_KBAR_TO_ASE, VOIGT_VASP, kbar_vasp_to_ase, voigt_to_matrix

_SNAPSHOT = re.compile(r"^\s*Snapshot\s+(\d+)\s+of\s+\d+\s+of\s+(.+?)\s*$")
_RELAXED = re.compile(r"(^ground state crystal$)|(\brelaxed$)", re.IGNORECASE)
_COMPONENTS = {"xx", "yy", "zz", "xy", "yz", "xz"}


class Frame(NamedTuple):
    """Where a structure sits: its trajectory id, frame index (or None) and equilibrium flag."""

    trajectory: str
    frame: int | None
    equilibrium: bool | None


def classify(record_id: str, element: str, group: str, description: str) -> Frame:
    """Trajectory, frame and equilibrium flag of one mlearn structure (rules in the module docstring)."""
    snapshot = _SNAPSHOT.match(description)
    if snapshot:
        run = " ".join(snapshot.group(2).split())
        return Frame(f"{element}/{run}", int(snapshot.group(1)), False)
    if group == "Elastic":
        return Frame(f"{element}/elastic", None, bool(_RELAXED.search(description.strip())))
    if group == "Surface":
        return Frame(f"{element}/surface {description.strip().rsplit('/', 1)[-1]}", None, None)
    return Frame(record_id, None, None)


def _formula_elements(numbers: np.ndarray) -> str:
    """``'GeSi'``: the element symbols of a structure, sorted, for records without an 'element'."""
    from ase.data import chemical_symbols

    return "".join(sorted({chemical_symbols[int(z)] for z in numbers}))


def parse_stress_order(text: str) -> tuple[str, ...]:
    """``'xx,yy,zz,xy,yz,xz'`` -> a tuple of the six distinct components; ValueError otherwise."""
    order = tuple(c.strip().lower() for c in text.split(","))
    if len(order) != 6 or set(order) != _COMPONENTS:
        raise ValueError(f"expected the six components xx,yy,zz,xy,yz,xz in some order, got {text!r}")
    return order


class MlearnReader(Reader):
    """Reader of mlearn ``training.json`` / ``test.json`` (see module docstring)."""

    format_name = "mlearn"
    description = "mlearn JSON list of {structure, outputs: {energy, forces, virial_stress}, group, tag, ...}"
    option_names = ("stress_order",)

    def __init__(self, path: Path | str, options: Mapping[str, str] | None = None) -> None:
        super().__init__(path, options)
        try:
            self.stress_order = parse_stress_order(self.options.get("stress_order", ",".join(VOIGT_VASP)))
        except ValueError as exc:
            raise SourceError(self.path, f"option stress_order: {exc}") from None

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file() or not (path.name.endswith(".json") or path.name.endswith(".json.gz")):
            return False
        head = read_head(path, 65536)
        if not looks_like_json_list(head) or b'"structure"' not in head:
            return False
        return b'"outputs"' in head or b'"virial_stress"' in head or (b'"group"' in head and b'"element"' in head)

    @property
    def conversions(self) -> tuple[str, ...]:  # type: ignore[override]
        return (
            f"{VASP_KBAR_TO_ASE}; virial_stress order {','.join(self.stress_order)} -> full symmetric 3x3",
            "energy: total eV as stored; forces: eV/A as stored",
            "trajectory/frame/equilibrium from 'group' and 'description' (AIMD runs grouped, frame = snapshot)",
        )

    def items(self) -> Iterator[RawItem]:
        data = load_json_list(self.path, "structures")
        stem = self.path.name.split(".")[0]
        for index, entry in enumerate(data):
            yield RawItem(f"record {index}", (index, stem, entry))

    def to_record(self, item: RawItem) -> Record:
        index, stem, entry = item.payload
        if not isinstance(entry, dict):
            raise RecordError(f"expected a JSON object, found {type(entry).__name__}")
        numbers, positions, cell, pbc = from_structure_dict(entry.get("structure"))
        n = len(numbers)
        num_atoms = entry.get("num_atoms")
        if num_atoms is not None and num_atoms != n:
            raise RecordError(f"num_atoms is {num_atoms!r} but the structure has {n} sites")
        element = str(entry.get("element") or "").strip() or _formula_elements(numbers)
        tag = str(entry.get("tag") or stem).strip()
        record_id = f"{element}-{tag}-{index}"

        outputs = entry.get("outputs")
        if not isinstance(outputs, dict):
            raise RecordError("no 'outputs' object")
        energy = outputs.get("energy")
        if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))):
            raise RecordError(f"energy {energy!r} is not a number")
        forces = self._array(outputs, "forces")
        stress = None
        virial = self._array(outputs, "virial_stress")
        if virial is not None:
            if virial.shape != (6,):
                raise RecordError(f"virial_stress has shape {virial.shape}, expected 6 values")
            stress = kbar_vasp_to_ase(voigt_to_matrix(virial, self.stress_order))
        where = classify(record_id, element, str(entry.get("group") or ""), str(entry.get("description") or ""))
        return Record(id=record_id, numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                      energy=energy, forces=forces, stress=stress, trajectory=where.trajectory,
                      frame=where.frame, equilibrium=where.equilibrium)

    @staticmethod
    def _array(outputs: Mapping[str, Any], name: str) -> np.ndarray | None:
        value = outputs.get(name)
        if value is None:
            return None
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise RecordError(f"{name} is not a numeric array") from None
