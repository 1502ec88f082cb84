"""Labelled structures in the formats ASE reads: extxyz, ASE databases, ASE trajectories, VASP outputs.

Recognised files: :mod:`matforge.datasets.readers.ase_file_kinds` (extxyz, ASE database, ASE
trajectory, OUTCAR, vasprun.xml; a ``.gz`` copy of a text file works too).

Files are streamed: ``ase.io.iread`` (text and trajectory files) or a SQLite cursor; one parsed
frame is held at a time (two: the reader looks one frame ahead to know which is the file's last).
ASE loads an ASE-JSON database whole; use SQLite for large databases.

Labels (units as ASE holds them: eV, eV/Å, eV/Å³ with ASE's sign, tensile positive):

* ``energy``: calculator result ``energy`` (ASE's reading of extxyz ``energy=`` and of a database
  row; for VASP the energy extrapolated to σ→0), else ``atoms.info["energy"]``. A calculator's
  ``free_energy`` (VASP's TOTEN), when present and not the chosen energy, becomes the property
  ``free_energy``.
* ``forces``: result ``forces``, else the per-atom array ``forces``.
* ``stress``: result ``stress``, else ``info["stress"]``; six Voigt values in ASE's order
  (xx, yy, zz, yz, xz, xy), nine values or 3×3, stored as 3×3. Already eV/Å³ with ASE's sign:
  ASE's VASP readers convert VASP's kBar (compressive positive) themselves.
* options ``energy_key``, ``forces_key``, ``stress_key`` name other keys (e.g. ``REF_energy``,
  ``REF_forces``, ``REF_stress`` of an extxyz file), looked up in the calculator results, then in
  ``info`` (energy, stress) or the per-atom arrays (forces); they must hold the same units. A
  named key that a frame lacks is an error for that frame; a default key it lacks leaves the label
  absent.
* ``properties``: comma list of ``info`` keys (database: key-value pairs) kept as scalar
  properties; frames without the key simply lack it. For a database, all numeric key-value pairs
  are kept when the option is not given.

Identity:

* ``id``: ``<file>:<k>`` with ``<file>`` the file name (``<folder>/<file>`` for VASP outputs,
  which are all called OUTCAR/vasprun.xml) and ``k`` the frame's position in the file, counted
  from 0 (a database row's ``id`` instead). Two sources with the same file name give duplicate
  ids; the conversion keeps the first and reports the rest.
* option ``trajectory``: ``file`` (default for VASP outputs and ``.traj``: every frame of the file
  is one trajectory, ``frame`` = position in the file), ``frame`` (default for extxyz and
  databases: each structure is its own trajectory), or the name of an ``info`` key / database key
  whose value names the trajectory (frames numbered in file order within each value).
* ``equilibrium``: VASP prints ``reached required accuracy - stopping structural energy
  minimisation`` when an ionic relaxation meets its EDIFFG criterion, so in an OUTCAR holding that
  line the last ionic step is flagged relaxed (True) and the earlier steps, which the relaxation
  moved on from, off-equilibrium (False).
  Every other file gives None (unknown): nothing in an extxyz file or a database says whether a
  structure is relaxed, and vasprun.xml does not record whether the relaxation converged.
* option ``index``: an ASE index string (``":"`` default, ``"-1"``, ``"10:"``, ``"::5"``) choosing
  frames by position in the file (database: row order). Frames are always produced in file order;
  negative steps are refused, and negative positions cost one extra pass to count the frames.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers.ase_file_kinds import SQLITE_MAGIC, file_kind, outcar_converged
from matforge.datasets.readers.base import RawItem, Reader, read_head
from matforge.datasets.record import Record
from matforge.datasets.units import VOIGT_ASE, voigt_to_matrix

ASE_FORMATS = {"extxyz": "extxyz", "traj": "traj", "vasp-out": "vasp-out", "vasp-xml": "vasp-xml", "other": None}
_MISSING = object()


def parse_index(index: str) -> int | slice:
    """An ASE index string as an int or a slice with a positive step (ValueError otherwise)."""
    from ase.io.formats import string2index

    try:
        selection = string2index(index)
    except (ValueError, TypeError):
        selection = None
    if not isinstance(selection, (int, slice)):
        raise ValueError(f"ase option index={index!r} is not an ASE index (examples: ':', '-1', '10:', '::5')")
    if isinstance(selection, slice) and (selection.step or 1) <= 0:
        raise ValueError(f"ase option index={index!r}: negative or zero steps are not supported")
    return selection


class AseReader(Reader):
    format_name = "ase"
    description = "anything ASE reads with labels: extxyz, ASE db, .traj, OUTCAR, vasprun.xml"
    option_names = ("index", "energy_key", "forces_key", "stress_key", "properties", "trajectory")

    def __init__(self, path: Path | str, options: dict[str, str] | None = None) -> None:
        super().__init__(path, options)
        self.selection = parse_index(self.options.get("index", ":"))
        # A file named explicitly with --format ase that sniffing does not recognise is left to
        # ASE's own format detection ("other").
        self.kind = (file_kind(self.path) or "other") if self.path.is_file() else None
        self.property_keys = [k.strip() for k in self.options.get("properties", "").split(",") if k.strip()]
        default_grouping = "file" if self.kind in ("vasp-out", "vasp-xml", "traj") else "frame"
        self.grouping = self.options.get("trajectory") or default_grouping
        parent = self.path.resolve().parent.name if self.kind in ("vasp-out", "vasp-xml") else ""
        self.name = f"{parent}/{self.path.name}" if parent else self.path.name

    @classmethod
    def sniff(cls, path: Path) -> bool:
        return file_kind(path) is not None

    @property
    def conversions(self) -> tuple[str, ...]:  # type: ignore[override]
        notes = ["stress: eV/A^3 with ASE's sign as ASE reads it; Voigt (xx,yy,zz,yz,xz,xy) or 9 values -> 3x3"]
        if self.kind in ("vasp-out", "vasp-xml"):
            notes.append("VASP stress kBar (compressive positive) -> eV/A^3 ASE sign, converted by ASE's reader")
            notes.append("energy: ASE 'energy' = VASP energy(sigma->0); free energy (TOTEN) kept as property free_energy")
        for label in ("energy", "forces", "stress"):
            key = self.options.get(f"{label}_key")
            if key:
                notes.append(f"{label}: taken from key {key!r}, assumed already in ASE units")
        return tuple(notes)

    # -- raw frames --------------------------------------------------------------------------
    def _check_readable(self) -> None:
        if not self.path.is_file():
            raise SourceError(self.path, "no such file")
        if self.path.stat().st_size == 0:
            raise SourceError(self.path, "file is empty")

    def _ase_frames(self) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        """``(record id, Atoms, key-value pairs)`` for each frame of a text or trajectory file."""
        import ase.io

        try:
            frames = ase.io.iread(str(self.path), index=":", format=ASE_FORMATS[self.kind])
        except Exception as exc:  # unknown format (kind "other") and the like
            raise SourceError(self.path, f"ASE cannot read this file ({type(exc).__name__}: {exc})") from None
        k = 0
        while True:
            try:
                atoms = next(frames)
            except StopIteration:
                return
            except Exception as exc:  # ASE's parsers raise many types on malformed input
                message = (str(exc).strip().splitlines() or [""])[0][:200]
                raise SourceError(self.path, f"ASE cannot read frame {k} ({type(exc).__name__}: {message})") from None
            yield f"{self.name}:{k}", atoms, {}
            k += 1

    def _connect(self) -> Any:
        from ase.db import connect

        if read_head(self.path, 16).startswith(SQLITE_MAGIC):
            try:
                with closing(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)) as con:
                    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            except sqlite3.Error as exc:
                raise SourceError(self.path, f"unreadable SQLite file ({exc})") from None
            if "systems" not in tables:
                raise SourceError(self.path, "SQLite file is not an ASE database (no 'systems' table)")
            kind = "db"
        else:
            kind = "json"
        try:
            return connect(str(self.path), type=kind, create_indices=False, use_lock_file=False, append=True)
        except Exception as exc:
            raise SourceError(self.path, f"cannot open ASE database ({type(exc).__name__}: {exc})") from None

    def _db_frames(self) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        """``(record id, Atoms, key-value pairs)`` for each row of an ASE database."""
        rows = self._connect().select()
        while True:
            try:
                row = next(rows)
                atoms = row.toatoms()
            except StopIteration:
                return
            except Exception as exc:
                raise SourceError(self.path, f"cannot read database row ({type(exc).__name__}: {exc})") from None
            yield f"{self.name}:{row.id}", atoms, dict(row.key_value_pairs)

    def _frames(self) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        return self._db_frames() if self.kind == "db" else self._ase_frames()

    def size_hint(self) -> int | None:
        if self.kind == "db" and self.selection == slice(None, None, None):
            try:
                return int(self._connect().count())
            except Exception:
                return None
        return None

    # -- selection ---------------------------------------------------------------------------
    def _positions(self) -> range | None:
        """Positions the ``index`` option selects; None for "from ``start`` to the end by ``step``".

        Negative positions need the number of frames, counted by one extra pass over the file.
        """
        sel = self.selection
        if isinstance(sel, int):
            if sel >= 0:
                return range(sel, sel + 1)
            n = sum(1 for _ in self._frames())
            if sel + n < 0:
                raise SourceError(self.path, f"index {sel} is out of range: the file has {n} frames")
            return range(sel + n, sel + n + 1)
        if (sel.start is not None and sel.start < 0) or (sel.stop is not None and sel.stop < 0):
            return range(*sel.indices(sum(1 for _ in self._frames())))
        return None if sel.stop is None else range(sel.start or 0, sel.stop, sel.step or 1)

    def _selected(self) -> Iterator[tuple[int, bool, tuple[str, Any, dict[str, Any]]]]:
        """``(position, is last in file, frame)`` for each selected frame, in file order."""
        chosen = self._positions()
        if chosen is None:  # open-ended slice with non-negative start: no count needed
            chosen = range(self.selection.start or 0, 2**62, self.selection.step or 1)
        frames = self._frames()
        try:
            current = next(frames)
        except StopIteration:
            raise SourceError(self.path, "holds no structures") from None
        position, selected = 0, 0
        while True:
            try:
                following = next(frames, None)
            except SourceError:
                # the next frame is unreadable: hand out this one (not the file's last) first
                if position in chosen:
                    yield position, False, current
                raise
            if position in chosen:
                selected += 1
                yield position, following is None, current
            if following is None or (len(chosen) and position >= chosen[-1]):
                break
            current, position = following, position + 1
        if not selected:
            raise SourceError(self.path, f"index {self.options.get('index')!r} selects none of the "
                                         f"{position + 1} frames read")

    # -- items -------------------------------------------------------------------------------
    def items(self) -> Iterator[RawItem]:
        self._check_readable()
        converged = self.kind == "vasp-out" and outcar_converged(self.path)
        counters: dict[str, int] = {}
        for position, is_last, (record_id, atoms, kvp) in self._selected():
            info = {**atoms.info, **kvp}
            if self.grouping == "frame":
                trajectory, frame = record_id, None
            elif self.grouping == "file":
                trajectory, frame = self.name, position
            elif self.grouping in info:
                trajectory = str(info[self.grouping])
                frame = counters.get(trajectory, 0)
                counters[trajectory] = frame + 1
            else:
                trajectory, frame = record_id, None
            payload = {
                "id": record_id,
                "numbers": np.asarray(atoms.numbers), "positions": np.asarray(atoms.positions),
                "cell": np.asarray(atoms.cell.array), "pbc": np.asarray(atoms.pbc),
                "results": dict(getattr(atoms.calc, "results", None) or {}),
                "info": info, "kvp": kvp,
                "arrays": {k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")},
                "trajectory": trajectory, "frame": frame,
                "equilibrium": is_last if converged else None,
            }
            yield RawItem(f"frame {position}" if self.kind != "db" else f"row {record_id.rsplit(':', 1)[1]}", payload)

    # -- conversion --------------------------------------------------------------------------
    def _label(self, label: str, payload: dict[str, Any], store: str) -> Any:
        """A label's raw value from the calculator results, else ``payload[store]``; None if absent."""
        option = f"{label}_key"
        key = self.options.get(option) or label
        if key in payload["results"]:
            return payload["results"][key]
        value = payload[store].get(key, _MISSING)
        if value is _MISSING:
            if self.options.get(option):
                where = "per-atom arrays" if store == "arrays" else "info"
                raise RecordError(f"no {label} under {key!r} (calculator results: {sorted(payload['results'])}, "
                                  f"{where}: {sorted(payload[store])})")
            return None
        return value

    def to_record(self, item: RawItem) -> Record:
        p = item.payload
        energy = self._label("energy", p, "info")
        if energy is not None:
            energy = _scalar(energy, "energy")
        forces = self._label("forces", p, "arrays")
        if forces is not None:
            forces = np.asarray(forces, dtype=np.float64)
        stress = self._label("stress", p, "info")
        if stress is not None:
            stress = _stress_matrix(stress)

        properties: dict[str, float] = {}
        free_energy = p["results"].get("free_energy")
        if free_energy is not None and (self.options.get("energy_key") or "energy") != "free_energy":
            properties["free_energy"] = _scalar(free_energy, "free_energy")
        source = p["info"] if self.property_keys else p["kvp"]
        for key in self.property_keys or list(p["kvp"]):
            if key not in source:
                continue
            value = source[key]
            if isinstance(value, str) and not self.property_keys:
                continue  # text key-value pairs of a database row are metadata, not labels
            properties[key] = _scalar(value, f"property {key!r}")

        return Record(id=p["id"], numbers=p["numbers"], positions=p["positions"], cell=p["cell"], pbc=p["pbc"],
                      energy=energy, forces=forces, stress=stress, properties=properties,
                      trajectory=p["trajectory"], frame=p["frame"], equilibrium=p["equilibrium"])


def _scalar(value: Any, name: str) -> float:
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "biuf":
        raise RecordError(f"{name} is not a scalar number ({str(value)[:60]})")
    return float(array.reshape(()))


def _stress_matrix(value: Any) -> np.ndarray:
    """ASE stress as 3×3: six Voigt values in ASE order, nine values, or a 3×3 array."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordError("stress is not numeric") from None
    if array.size == 6:
        return voigt_to_matrix(array, VOIGT_ASE)
    if array.size == 9:
        return array.reshape(3, 3)
    raise RecordError(f"stress has {array.size} values, expected 6 (Voigt) or 9 (3x3)")
