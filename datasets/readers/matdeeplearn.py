"""MatDeepLearn JSON: one list of structures (``data.json`` of Fung-Lab/MatDeepLearn(_dev)).

Each element is an object::

    {"structure_id": "0",
     "positions": [[x, y, z], ...],        # (N, 3) Cartesian, Å
     "cell": [[ax, ay, az], [bx, ...], ...],  # (3, 3), rows are the lattice vectors, Å
     "atomic_numbers": [72, 72, 14, ...],  # (N,)
     "y": [63.59],                         # target(s), units of the data set
     "energy": -19.35,                     # optional, total energy of the cell, eV
     "forces": [[fx, fy, fz], ...]}        # optional, (N, 3) eV/Å

Any value may also be stored as a string that holds a JSON literal (``"[[1.49, 3.32, 7.26], ...]"``),
as MatDeepLearn's own writer does; such strings are decoded with :func:`json.loads`, never evaluated.

Conversion (nothing is rescaled; every note goes to the manifest):

* record id ``<dataset>/<structure_id>``, where ``<dataset>`` is the file's stem, or its folder's
  name for files called ``data.json`` (``jdft2d/data.json`` -> ``jdft2d/17``), so that several
  MatDeepLearn sets convert together without id clashes. Option ``id_prefix`` replaces
  ``<dataset>/`` (``id_prefix=`` keeps the bare structure id).
* ``y`` becomes the property ``y`` (option ``property_name``), or ``y_0``, ``y_1``... when it holds
  several values, in the units of the data set: jdft2d's ``y`` is the exfoliation energy in
  **meV/atom**, 2d_workfunction's the work function in eV, pt_forces_500's the total energy in eV
  (equal to ``energy``). Known units are written into ``conversions``.
* ``energy`` is taken as the total energy in eV, ``forces`` in eV/Å.
* pbc: the cells of these sets are periodic boxes (2D materials with vacuum along c, Pt clusters in
  a vacuum box), so pbc is True along all three axes; option ``pbc`` (``1,1,0``, ``false``...) sets
  it.
* trajectories: option ``trajectory`` = ``record`` (each structure its own trajectory),
  ``consecutive`` (consecutive structures form one trajectory while they have the same atomic
  numbers and cell and no atom moves more than ``MAX_STEP`` = 2 Å, minimum image, from one to the
  next; ``frame`` counts from 0 in each run), or ``auto`` (default: ``consecutive`` for structures
  that carry forces, which in these sets are relaxation/MD frames, ``record`` otherwise).
  pt_forces_500 holds three relaxation runs of one Pt10 cluster (structures 0-193, 194-309,
  310-499); grouping them keeps the frames of one run on one side of a split.
* equilibrium: option ``equilibrium`` = ``true``, ``false``, ``unknown`` or ``auto`` (default:
  with forces, True iff every force component is within ``EQUILIBRIUM_FORCE`` = 0.05 eV/Å; without
  forces, unknown).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers.base import RawItem, Reader, read_head
from matforge.datasets.readers.json_list import load_json_list, looks_like_json_list
from matforge.datasets.record import Record

MAX_STEP = 2.0
"""Largest per-atom displacement (Å, minimum image) between consecutive frames of one run."""

EQUILIBRIUM_FORCE = 0.05
"""Force component (eV/Å) below which a structure with forces counts as relaxed."""

KNOWN_Y_UNITS = {
    "jdft2d": "meV/atom (exfoliation energy, JARVIS-DFT OptB88vdW)",
    "2d_workfunction": "eV (work function, 2DMatPedia)",
    "pt_forces_500": "eV (total energy of the cell, equal to 'energy')",
}

_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


def dataset_name(path: Path) -> str:
    """``jdft2d`` for ``.../jdft2d/data.json``; the file stem (``.json``/``.gz`` removed) otherwise."""
    name = path.name
    for suffix in (".gz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return path.resolve().parent.name if name == "data" else name


def decode_value(name: str, value: Any) -> Any:
    """``value``, or the JSON literal a string ``value`` holds."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise RecordError(f"{name!r} is a string that does not hold a JSON value ({exc})") from None


def numeric_array(name: str, value: Any, dtype: type = np.float64) -> np.ndarray:
    """``value`` (decoded if a string) as a numeric array; RecordError if it is not one."""
    value = decode_value(name, value)
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:120]
        raise RecordError(f"{name!r} is not a numeric array ({first})") from None


def _field(entry: Mapping[str, Any], name: str) -> Any:
    if name not in entry or entry[name] is None:
        raise RecordError(f"no {name!r}")
    return entry[name]


class StructureArrays(NamedTuple):
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray


def structure_arrays(entry: Mapping[str, Any]) -> StructureArrays:
    """Atomic numbers (N,) int64, positions (N, 3) Å and cell (3, 3) Å of one element."""
    z = numeric_array("atomic_numbers", _field(entry, "atomic_numbers")).reshape(-1)
    if not np.all(z == np.round(z)):
        raise RecordError("'atomic_numbers' holds non-integer values")
    positions = numeric_array("positions", _field(entry, "positions"))
    cell = numeric_array("cell", _field(entry, "cell"))
    return StructureArrays(z.astype(np.int64), positions, cell)


def max_step(a: StructureArrays, b: StructureArrays, pbc: np.ndarray) -> float:
    """Largest displacement (Å) of an atom from ``a`` to ``b`` under the minimum-image convention
    along periodic axes (fractional differences wrapped to [-0.5, 0.5)); inf if the two are not
    frames of one system (different atoms or cells)."""
    if (a.numbers.shape != b.numbers.shape or not np.array_equal(a.numbers, b.numbers)
            or a.positions.shape != b.positions.shape or a.positions.shape != (a.numbers.shape[0], 3)
            or a.cell.shape != (3, 3) or b.cell.shape != (3, 3) or not np.allclose(a.cell, b.cell, atol=1e-6)):
        return float("inf")
    delta = b.positions - a.positions
    if pbc.any() and abs(np.linalg.det(a.cell)) > 1e-6:
        frac = np.linalg.solve(a.cell.T, delta.T).T
        frac[:, pbc] -= np.round(frac[:, pbc])
        delta = frac @ a.cell
    return float(np.sqrt((delta**2).sum(axis=1)).max()) if delta.size else 0.0


def _parse_flag(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(text)


class MatDeepLearnReader(Reader):
    """Reader of MatDeepLearn ``data.json`` files (see module docstring)."""

    format_name = "matdeeplearn"
    description = "MatDeepLearn JSON list of {structure_id, positions, cell, atomic_numbers, y[, energy, forces]}"
    option_names = ("property_name", "pbc", "id_prefix", "trajectory", "equilibrium")

    def __init__(self, path: Path | str, options: Mapping[str, str] | None = None) -> None:
        super().__init__(path, options)
        self.property_name = self.options.get("property_name", "y").strip()
        if not self.property_name:
            raise SourceError(self.path, "option property_name is empty")
        self.id_prefix = self.options.get("id_prefix", f"{dataset_name(self.path)}/")
        self.pbc = self._pbc_option(self.options.get("pbc", "true"))
        self.trajectory_mode = self.options.get("trajectory", "auto").strip().lower()
        if self.trajectory_mode not in ("auto", "record", "consecutive"):
            raise SourceError(self.path, f"option trajectory={self.trajectory_mode!r}: expected auto, record or consecutive")
        self.equilibrium_mode = self.options.get("equilibrium", "auto").strip().lower()
        if self.equilibrium_mode not in ("auto", "true", "false", "unknown"):
            raise SourceError(self.path, f"option equilibrium={self.equilibrium_mode!r}: expected auto, true, false or unknown")

    def _pbc_option(self, text: str) -> np.ndarray:
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        try:
            flags = [_parse_flag(p) for p in parts]
        except ValueError as exc:
            raise SourceError(self.path, f"option pbc={text!r}: {exc.args[0]!r} is not a boolean") from None
        if len(flags) == 1:
            flags = flags * 3
        if len(flags) != 3:
            raise SourceError(self.path, f"option pbc={text!r}: give one or three booleans")
        return np.array(flags, dtype=bool)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file() or not (path.name.endswith(".json") or path.name.endswith(".json.gz")):
            return False
        head = read_head(path, 16384)
        return looks_like_json_list(head) and b'"structure_id"' in head

    @property
    def conversions(self) -> tuple[str, ...]:  # type: ignore[override]
        unit = KNOWN_Y_UNITS.get(dataset_name(self.path), "the units of the data set")
        pbc = "".join("T" if p else "F" for p in self.pbc)
        notes = [
            f"properties: 'y' -> {self.property_name!r} (or {self.property_name}_0, _1... if several), "
            f"no conversion: {unit}",
            "energy: total eV as stored; forces: eV/A as stored; positions and cell: A, cell rows",
            f"pbc: {pbc} (not stored in the file)",
            f"trajectory: {self.trajectory_mode} (consecutive frames grouped while no atom moves more than {MAX_STEP} A)",
        ]
        return tuple(notes)

    def record_id(self, entry: Mapping[str, Any]) -> str:
        sid = entry.get("structure_id")
        if sid is None or (isinstance(sid, str) and not sid.strip()):
            raise RecordError("no 'structure_id'")
        if not isinstance(sid, (str, int)):
            raise RecordError(f"'structure_id' {sid!r} is not a string or integer")
        return f"{self.id_prefix}{str(sid).strip()}"

    def _groups(self, entry: Any) -> bool:
        if self.trajectory_mode == "record" or not isinstance(entry, dict):
            return False
        return self.trajectory_mode == "consecutive" or entry.get("forces") is not None

    def items(self) -> Iterator[RawItem]:
        data = load_json_list(self.path, "structures")
        run: tuple[StructureArrays, str, int] | None = None  # last frame of the current run
        for index, entry in enumerate(data):
            sid = entry.get("structure_id") if isinstance(entry, dict) else None
            locator = f"record {index}" + (f" (structure_id {sid})" if sid is not None else "")
            trajectory, frame = None, None
            if self._groups(entry):
                try:
                    arrays = structure_arrays(entry)
                    rid = self.record_id(entry)
                except RecordError:
                    run = None  # to_record reports it; it breaks the run
                else:
                    if run is not None and max_step(run[0], arrays, self.pbc) <= MAX_STEP:
                        trajectory, frame = run[1], run[2] + 1
                    else:
                        trajectory, frame = rid, 0
                    run = (arrays, trajectory, frame)
            else:
                run = None
            yield RawItem(locator, (entry, trajectory, frame))

    def _properties(self, entry: Mapping[str, Any]) -> dict[str, float]:
        if entry.get("y") is None:
            return {}
        values = numeric_array("y", entry["y"]).reshape(-1)
        if values.size == 1:
            return {self.property_name: float(values[0])}
        return {f"{self.property_name}_{k}": float(v) for k, v in enumerate(values)}

    def _equilibrium(self, forces: np.ndarray | None) -> bool | None:
        if self.equilibrium_mode != "auto":
            return {"true": True, "false": False, "unknown": None}[self.equilibrium_mode]
        if forces is None or forces.size == 0 or not np.all(np.isfinite(forces)):
            return None
        return bool(np.abs(forces).max() <= EQUILIBRIUM_FORCE)

    def to_record(self, item: RawItem) -> Record:
        entry, trajectory, frame = item.payload
        if not isinstance(entry, dict):
            raise RecordError(f"expected a JSON object, found {type(entry).__name__}")
        rid = self.record_id(entry)
        numbers, positions, cell = structure_arrays(entry)
        energy = None
        if entry.get("energy") is not None:
            e = numeric_array("energy", entry["energy"]).reshape(-1)
            if e.size != 1:
                raise RecordError(f"'energy' has {e.size} values, expected one")
            energy = float(e[0])
        forces = numeric_array("forces", entry["forces"]) if entry.get("forces") is not None else None
        return Record(id=rid, numbers=numbers, positions=positions, cell=cell, pbc=self.pbc.copy(),
                      energy=energy, forces=forces, properties=self._properties(entry),
                      trajectory=trajectory or rid, frame=frame, equilibrium=self._equilibrium(forces))
