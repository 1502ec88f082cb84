"""MPtrj: the Materials Project relaxation trajectories (CHGNet's training set), one JSON file.

Layout (the released file, ``MPtrj_2022.9_full.json``, is 11 GB)::

    {mp_id: {frame_id: {"structure": <pymatgen Structure dict, may carry magmom site properties>,
                        "uncorrected_total_energy": eV, "corrected_total_energy": eV (MP2020),
                        "energy_per_atom": eV/atom, "ef_per_atom": eV/atom,
                        "e_per_atom_relaxed": eV/atom, "force": (N, 3) eV/Å,
                        "stress": (3, 3) kBar with VASP's sign (positive = compressive),
                        "magmom": (N,) μB | null, "bandgap": eV | null, "mp_id": str}}}

Reading: the file is streamed with ijson (C backend, floats instead of Decimals), one material at a
time (``ijson.kvitems`` on the top-level object), so memory is bounded by the largest material,
never by the file. Each frame becomes one raw item; a file cut off part-way raises
:class:`SourceError` after the frames before the cut were streamed.

Conversion of one frame:

* ``id`` = frame id; ``trajectory`` = mp_id (frames of one material stay in one split);
  ``frame`` = position of the frame within its material, in file order.
* ``energy`` = ``corrected_total_energy`` (option ``energy=corrected``, the default) or
  ``uncorrected_total_energy`` (``energy=uncorrected``), total eV.
* ``forces`` = ``force`` (eV/Å, unchanged).
* ``stress`` = ``-0.1 · stress_kBar / 160.21766208`` eV/Å³: VASP's compressive-positive kBar to
  ASE's tensile-positive sign (:func:`matforge.datasets.units.kbar_vasp_to_ase`).
* ``properties``: ``ef_per_atom``, ``e_per_atom_relaxed`` (eV/atom) and ``bandgap`` (eV), each
  only when present and not null. Per-site magnetic moments are not kept (records hold scalars).
* ``equilibrium`` = ``|energy_per_atom - e_per_atom_relaxed| <= 1e-6`` eV/atom: True for the frame
  whose energy is the material's relaxed energy (the end point of its relaxation), False for every
  other frame, None when either number is missing. Frames that are nearly but not exactly relaxed
  therefore count as off-equilibrium.

Bare ``NaN``/``Infinity`` tokens (written by Python's ``json.dump``, rejected by strict JSON) are
read as strings and the record holding them is skipped (see
:mod:`matforge.datasets.readers.json_stream`).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers.base import RawItem, Reader
from matforge.datasets.readers.json_stream import NonFiniteAsStrings, head_events, open_json_bytes, stream_error
from matforge.datasets.readers.structures import from_structure_dict
from matforge.datasets.record import Record
from matforge.datasets.units import VASP_KBAR_TO_ASE, kbar_vasp_to_ase

EQUILIBRIUM_TOLERANCE = 1e-6
"""eV/atom: a frame is relaxed when its energy per atom equals ``e_per_atom_relaxed`` this closely."""

ENERGY_KEYS = {"corrected": "corrected_total_energy", "uncorrected": "uncorrected_total_energy"}
PROPERTY_KEYS = ("ef_per_atom", "e_per_atom_relaxed", "bandgap")
LABEL_KEYS = frozenset({
    "uncorrected_total_energy", "corrected_total_energy", "energy_per_atom", "ef_per_atom", "e_per_atom_relaxed",
})


class MptrjReader(Reader):
    format_name = "mptrj"
    description = "MPtrj JSON {mp_id: {frame_id: frame}} (streamed with ijson)"
    option_names = ("energy",)

    def __init__(self, path: Path | str, options: dict[str, str] | None = None) -> None:
        super().__init__(path, options)
        choice = self.options.get("energy", "corrected")
        if choice not in ENERGY_KEYS:
            raise ValueError(f"mptrj option energy={choice!r}: expected one of {sorted(ENERGY_KEYS)}")
        self.energy_key = ENERGY_KEYS[choice]

    @property
    def conversions(self) -> tuple[str, ...]:  # type: ignore[override]
        return (
            f"energy: {self.energy_key} (total eV, unchanged)",
            VASP_KBAR_TO_ASE,
            f"equilibrium: |energy_per_atom - e_per_atom_relaxed| <= {EQUILIBRIUM_TOLERANCE:g} eV/atom",
        )

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """A JSON object of objects of objects whose innermost keys are MPtrj frame keys."""
        name = path.name.lower()
        if not path.is_file() or not (name.endswith(".json") or name.endswith(".json.gz")):
            return False
        events = head_events(path)
        expected = [("start_map", None), ("map_key", None), ("start_map", None), ("map_key", None), ("start_map", None)]
        if len(events) < 6 or [(e, None) for e, _ in events[:5]] != expected:
            return False
        depth, keys = 3, set()
        for event, value in events[5:]:
            if event in ("start_map", "start_array"):
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1
                if depth < 3:
                    break
            elif event == "map_key" and depth == 3:
                keys.add(value)
        # The head may end inside the first frame's structure: then "structure" is all there is.
        return bool(keys & LABEL_KEYS) or keys == {"structure"}

    def _materials(self) -> Iterator[tuple[str, Any]]:
        """Stream ``(mp_id, {frame_id: frame})`` pairs, turning parser failures into SourceError."""
        import ijson

        raw = open_json_bytes(self.path)
        stream = NonFiniteAsStrings(raw)
        try:
            first = _first_byte(raw)
            if not first:
                raise SourceError(self.path, "file is empty")
            if first != b"{":
                raise SourceError(self.path, "not an MPtrj file: the top level is not a JSON object {mp_id: {frame_id: frame}}")
            stream = NonFiniteAsStrings(_Prepend(first, raw))
            yield from ijson.kvitems(stream, "", use_float=True)
        except SourceError:
            raise
        except (ijson.JSONError, EOFError, OSError, zlib.error) as exc:
            raise stream_error(self.path, exc, stream.consumed) from None
        finally:
            stream.close()

    def items(self) -> Iterator[RawItem]:
        materials = 0
        for mp_id, frames in self._materials():
            materials += 1
            if not isinstance(frames, dict):
                raise SourceError(self.path, f"not an MPtrj file: the value of {mp_id!r} is a "
                                             f"{type(frames).__name__}, not an object of frames")
            for index, (frame_id, frame) in enumerate(frames.items()):
                yield RawItem(f"{mp_id}/{frame_id}", (mp_id, index, frame_id, frame))
        if materials == 0:
            raise SourceError(self.path, "holds no materials (an empty JSON object)")

    def to_record(self, item: RawItem) -> Record:
        mp_id, index, frame_id, frame = item.payload
        if not isinstance(frame, dict):
            raise RecordError(f"frame is a {type(frame).__name__}, not an object")
        if "structure" not in frame:
            raise RecordError("frame has no 'structure'")
        numbers, positions, cell, pbc = from_structure_dict(frame["structure"])

        energy = _number(frame.get(self.energy_key), self.energy_key)
        if energy is None:
            raise RecordError(f"no {self.energy_key}")
        forces = _array(frame.get("force"), "force")
        stress_kbar = _array(frame.get("stress"), "stress")
        stress = None
        if stress_kbar is not None:
            if stress_kbar.shape != (3, 3):
                raise RecordError(f"stress has shape {stress_kbar.shape}, expected (3, 3) kBar")
            stress = kbar_vasp_to_ase(stress_kbar)

        properties: dict[str, float] = {}
        for key in PROPERTY_KEYS:
            value = _number(frame.get(key), key)
            if value is not None:
                properties[key] = value
        per_atom = _number(frame.get("energy_per_atom"), "energy_per_atom")
        relaxed = properties.get("e_per_atom_relaxed")
        equilibrium = None
        if per_atom is not None and relaxed is not None and np.isfinite(per_atom) and np.isfinite(relaxed):
            equilibrium = abs(per_atom - relaxed) <= EQUILIBRIUM_TOLERANCE

        return Record(id=str(frame_id), numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                      energy=energy, forces=forces, stress=stress, properties=properties,
                      trajectory=str(mp_id), frame=index, equilibrium=equilibrium)


def _first_byte(raw: Any) -> bytes:
    """The first non-whitespace byte of ``raw`` (empty at end of file)."""
    byte = raw.read(1)
    while byte and byte.isspace():
        byte = raw.read(1)
    return byte


class _Prepend:
    """A binary stream that yields ``head`` and then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: Any) -> None:
        self._head, self._raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if self._head:
            part, self._head = self._head, b""
            return part
        return self._raw.read(n)

    def close(self) -> None:
        self._raw.close()


def _number(value: Any, name: str) -> float | None:
    """``value`` as a float (None stays None); strings such as ``"NaN"`` are parsed, not trusted."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordError(f"{name} is a boolean, not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"{name} = {value!r} is not a number") from None
    if not np.isfinite(number):
        raise RecordError(f"{name} is {value}")
    return number


def _array(value: Any, name: str) -> np.ndarray | None:
    if value is None:
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordError(f"{name} is not a numeric array (ragged rows or text)") from None
