"""CSV files with one CIF string per row (CDVAE's perov_5, carbon_24, mp_20 ``*.csv``).

Columns: an id column (``material_id`` by default, else the first column), a CIF column (``cif``),
and label columns. Every other column whose value parses as a number becomes a named property in
the units of the file (perov5: ``heat_ref``/``heat_all`` eV/atom, gaps eV; carbon24:
``energy_per_atom`` eV/atom). Text columns (``formula``) and the unnamed pandas index are ignored.

Options:
* ``id_column``, ``cif_column``: column names.
* ``energy_per_atom_column``: a column in eV/atom that becomes the record's total energy
  (value × N); off by default because these files hold relaxed-structure properties.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Iterator

from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers.base import RawItem, Reader, read_head
from matforge.datasets.readers.structures import from_cif_text
from matforge.datasets.record import Record

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class CsvCifReader(Reader):
    format_name = "csv-cif"
    description = "CSV with a CIF column (CDVAE perov_5, carbon_24, mp_20)"
    option_names = ("id_column", "cif_column", "energy_per_atom_column")

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() != ".csv":
            return False
        first = read_head(path, 2048).split(b"\n", 1)[0].decode("utf-8", "replace").lower()
        return "cif" in [c.strip() for c in first.split(",")]

    @property
    def conversions(self) -> tuple[str, ...]:  # type: ignore[override]
        col = self.options.get("energy_per_atom_column")
        return (f"energy: column {col!r} eV/atom x natoms -> total eV",) if col else ()

    def items(self) -> Iterator[RawItem]:
        cif_col = self.options.get("cif_column", "cif")
        try:
            f = open(self.path, newline="", encoding="utf-8")
        except OSError as exc:
            raise SourceError(self.path, f"cannot open ({exc.strerror})") from None
        with f:
            reader = csv.DictReader(f)
            try:
                header = reader.fieldnames
            except (csv.Error, UnicodeDecodeError) as exc:
                raise SourceError(self.path, f"unreadable CSV header ({exc})") from None
            if not header:
                raise SourceError(self.path, "empty CSV (no header)")
            if cif_col not in header:
                raise SourceError(self.path, f"no {cif_col!r} column (columns: {header})")
            id_col = self.options.get("id_column") or ("material_id" if "material_id" in header else header[0])
            if id_col not in header:
                raise SourceError(self.path, f"no {id_col!r} column (columns: {header})")
            row_number = 0
            try:
                for row_number, row in enumerate(reader, start=1):
                    yield RawItem(f"row {row_number}", (id_col, cif_col, row))
            except (csv.Error, UnicodeDecodeError) as exc:
                raise SourceError(self.path, f"malformed CSV near row {reader.line_num} ({exc})") from None
            if row_number == 0:
                raise SourceError(self.path, "no data rows (header only)")

    def to_record(self, item: RawItem) -> Record:
        id_col, cif_col, row = item.payload
        record_id = (row.get(id_col) or "").strip()
        if not record_id:
            raise RecordError(f"empty id in column {id_col!r}")
        numbers, positions, cell, pbc = from_cif_text(row.get(cif_col) or "")
        energy_col = self.options.get("energy_per_atom_column")
        properties: dict[str, float] = {}
        for key, value in row.items():
            if key in (id_col, cif_col) or not key or value is None or value.strip() == "":
                continue
            try:
                number = float(value)
            except ValueError:
                continue  # text column such as 'formula'
            if not math.isfinite(number):
                raise RecordError(f"label {key!r} is {value.strip()}")
            properties[key] = number
        energy = None
        if energy_col:
            if energy_col not in properties:
                raise RecordError(f"no value in energy column {energy_col!r}")
            energy = properties.pop(energy_col) * len(numbers)
        return Record(id=record_id, numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                      energy=energy, properties=properties, trajectory=record_id, equilibrium=True)
