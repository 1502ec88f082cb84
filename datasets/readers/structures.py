"""Turn pymatgen and ASE structures into record arrays, refusing what a record cannot hold.

Shapes: ``numbers`` (N,), ``positions`` (N, 3) Å Cartesian, ``cell`` (3, 3) Å rows, ``pbc`` (3,).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matforge.datasets.errors import RecordError

StructureArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def from_pymatgen(structure: Any) -> StructureArrays:
    """Arrays of an ordered pymatgen ``Structure``; partially occupied sites are a RecordError."""
    if not structure.is_ordered:
        for k, site in enumerate(structure):
            if not site.is_ordered:
                occ = ", ".join(f"{sp}:{amt:g}" for sp, amt in site.species.items())
                raise RecordError(f"site {k} is partially occupied ({occ}); matforge needs ordered structures")
    try:
        numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    except AttributeError as exc:
        raise RecordError(f"a site has no element ({exc})") from None
    positions = np.array(structure.cart_coords, dtype=np.float64).reshape(-1, 3)
    cell = np.array(structure.lattice.matrix, dtype=np.float64)
    pbc = np.array(getattr(structure.lattice, "pbc", (True, True, True)), dtype=bool)
    return numbers, positions, cell, pbc


def from_structure_dict(data: Any) -> StructureArrays:
    """Arrays of a pymatgen ``Structure.as_dict()`` (as in MPtrj, mlearn, Matbench)."""
    from pymatgen.core import Structure

    if not isinstance(data, dict) or "lattice" not in data or "sites" not in data:
        raise RecordError("structure is not a pymatgen Structure dict (needs 'lattice' and 'sites')")
    try:
        structure = Structure.from_dict(data)
    except Exception as exc:  # pymatgen raises many types on malformed dicts
        raise RecordError(f"invalid pymatgen structure dict ({type(exc).__name__}: {exc})") from None
    return from_pymatgen(structure)


def from_ase(atoms: Any) -> StructureArrays:
    """Arrays of an ``ase.Atoms``."""
    return (
        np.asarray(atoms.numbers, dtype=np.int64),
        np.asarray(atoms.positions, dtype=np.float64),
        np.asarray(atoms.cell.array, dtype=np.float64),
        np.asarray(atoms.pbc, dtype=bool),
    )


def from_cif_text(text: str) -> StructureArrays:
    """Parse one CIF (first block) with pymatgen; unparsable or disordered CIFs are RecordErrors."""
    import warnings

    from pymatgen.io.cif import CifParser

    if not text or not text.strip():
        raise RecordError("empty CIF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser.from_str(text, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecordError(f"unreadable CIF ({msg[:200]})") from None
    if not structures:
        raise RecordError("CIF holds no structure")
    return from_pymatgen(structures[0])
