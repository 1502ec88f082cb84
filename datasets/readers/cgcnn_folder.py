"""CGCNN data folders: ``id_prop.csv`` + one ``<id>.cif`` per crystal (+ ``atom_init.json``).

Layout (Xie & Grossman's ``cgcnn`` repository, ``data/sample-regression``)::

    root/
      id_prop.csv      one row per crystal, no header: id,target[,target2,...]
      <id>.cif         the crystal of each id
      atom_init.json   CGCNN's 92-dim element feature table (optional)

Each row becomes a record with id ``<id>``, the structure of ``<id>.cif`` (parsed by pymatgen, first
data block, conventional cell as written) and the targets as named properties in the units of the
file (no conversion): ``target`` for one column, ``target_0``, ``target_1``... for several, or the
names given by the option ``property_names=a,b``. A first row whose target fields are all
non-numeric is read as a header and names the properties (unless ``property_names`` is given).
``atom_init.json`` is not used for the records (matforge stores atomic numbers and builds its own
element features); its presence is noted in ``conversions`` and its checksum in the manifest's
file list. Structures are taken as relaxed/experimental crystals (``equilibrium=True``), each its
own trajectory.

Bad rows (no CIF for an id, unreadable or disordered CIF, non-numeric or NaN target, wrong number
of columns) are record errors; a missing or empty ``id_prop.csv`` is a :class:`SourceError`.

``items`` runs in the main process and only reads ``id_prop.csv``; the CIF files are read and
parsed in the conversion workers (``to_record``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterator, Mapping

from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers.base import RawItem, Reader
from matforge.datasets.readers.structures import from_cif_text
from matforge.datasets.record import Record

ID_PROP = "id_prop.csv"
ATOM_INIT = "atom_init.json"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class CgcnnFolderReader(Reader):
    """Reader of a CGCNN folder; ``path`` is the folder or its ``id_prop.csv``."""

    format_name = "cgcnn"
    description = "CGCNN folder: id_prop.csv (id,target...) + <id>.cif (+ atom_init.json, ignored)"
    option_names = ("property_names",)

    def __init__(self, path: Path | str, options: Mapping[str, str] | None = None) -> None:
        super().__init__(path, options)
        self.folder = self.path if self.path.is_dir() else self.path.parent
        self.id_prop = self.folder / ID_PROP
        names = self.options.get("property_names")
        self.property_names: list[str] | None = None
        if names is not None:
            self.property_names = [n.strip() for n in names.split(",")]
            if not all(self.property_names) or len(set(self.property_names)) != len(self.property_names):
                raise SourceError(self.path, f"option property_names={names!r} must be distinct non-empty names")

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if path.is_dir():
            return (path / ID_PROP).is_file()
        return path.name == ID_PROP and path.is_file()

    @property
    def conversions(self) -> tuple[str, ...]:  # type: ignore[override]
        notes = ["properties: id_prop.csv targets copied in the units of the file (no conversion)"]
        atom_init = self.folder / ATOM_INIT
        if atom_init.is_file():
            notes.append(f"{ATOM_INIT}: {self._describe_atom_init(atom_init)}; not used for the records "
                         "(they hold atomic numbers), checksum listed with the source files")
        return tuple(notes)

    @staticmethod
    def _describe_atom_init(path: Path) -> str:
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
            width = {len(v) for v in table.values() if isinstance(v, list)}
            return f"CGCNN element features for {len(table)} elements, width {sorted(width)}"
        except (OSError, ValueError, AttributeError) as exc:
            return f"present but unreadable ({type(exc).__name__})"

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """Non-blank rows of ``id_prop.csv`` as ``(line number, stripped fields)``."""
        try:
            f = open(self.id_prop, newline="", encoding="utf-8-sig")  # -sig: drop a BOM written by spreadsheets
        except OSError as exc:
            raise SourceError(self.id_prop, f"cannot open ({exc.strerror})") from None
        with f:
            reader = csv.reader(f)
            try:
                for fields in reader:
                    fields = [x.strip() for x in fields]
                    if any(fields):
                        yield reader.line_num, fields
            except (csv.Error, UnicodeDecodeError) as exc:
                raise SourceError(self.id_prop, f"malformed CSV near line {reader.line_num} ({exc})") from None

    def items(self) -> Iterator[RawItem]:
        names = self.property_names
        first = True
        count = 0
        for line, fields in self._rows():
            targets = fields[1:]
            if first:
                first = False
                if not targets:
                    raise SourceError(self.id_prop, f"line {line} has no target column (expected id,target...)")
                if not any(_is_number(t) for t in targets):  # a header row
                    names = names or targets
                    continue
                if names is None:
                    names = ["target"] if len(targets) == 1 else [f"target_{k}" for k in range(len(targets))]
                if len(names) != len(targets):
                    raise SourceError(self.id_prop, f"{len(targets)} target column(s) but "
                                                    f"{len(names)} property name(s) {names}")
            count += 1
            yield RawItem(f"{ID_PROP} line {line}", (fields[0], tuple(names), tuple(targets), str(self.folder)))
        if count == 0:
            raise SourceError(self.id_prop, "empty (no data rows)")

    def to_record(self, item: RawItem) -> Record:
        record_id, names, targets, folder = item.payload
        if not record_id:
            raise RecordError("empty id")
        if "/" in record_id or "\\" in record_id or record_id in (".", ".."):
            raise RecordError(f"id {record_id!r} is not a plain file name")
        if len(targets) != len(names):
            raise RecordError(f"{len(targets)} target value(s), expected {len(names)} ({', '.join(names)})")
        properties: dict[str, float] = {}
        for name, text in zip(names, targets):
            try:
                value = float(text)
            except ValueError:
                raise RecordError(f"target {name!r} = {text!r} is not a number") from None
            if not math.isfinite(value):
                raise RecordError(f"target {name!r} is {text}")
            properties[name] = value
        cif_path = Path(folder) / f"{record_id}.cif"
        try:
            text = cif_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise RecordError(f"no CIF file {cif_path.name} for id {record_id!r}") from None
        except OSError as exc:
            raise RecordError(f"cannot read {cif_path.name} ({exc.strerror})") from None
        try:
            numbers, positions, cell, pbc = from_cif_text(text)
        except RecordError as exc:
            raise RecordError(f"{cif_path.name}: {exc.reason}") from None
        return Record(id=record_id, numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                      properties=properties, trajectory=record_id, equilibrium=True)

    def source_files(self) -> list[Path]:
        """``id_prop.csv``, ``atom_init.json`` if present, and each listed CIF that exists."""
        files = [self.id_prop]
        atom_init = self.folder / ATOM_INIT
        if atom_init.is_file():
            files.append(atom_init)
        seen: set[str] = set()
        for _, fields in self._rows():
            record_id = fields[0]
            if record_id in seen or not record_id or "/" in record_id or "\\" in record_id:
                continue
            seen.add(record_id)
            cif = self.folder / f"{record_id}.cif"
            if cif.is_file():
                files.append(cif)
        return files

    def size_hint(self) -> int | None:
        try:
            return sum(1 for _ in self._rows())
        except SourceError:
            return None
