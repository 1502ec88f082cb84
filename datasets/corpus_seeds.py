"""Seed structures for the CHGNet corpus, and element substitutions within sensible chemistry.

Sources (each skipped with a printed note when it is not present):

==================  ==========================================================================
``aflow``           pymatgen's copy of the AFLOW prototype library
                    (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``, 288 ordered
                    prototypes, Mehl et al. 2017), as used by ``pymatgen.analysis.prototypes``
``ase-reference``   ASE's reference crystals: ``ase.build.bulk(symbol)`` for each element whose
                    ``ase.data.reference_states`` entry is fcc, bcc, hcp, diamond or sc
``cgcnn``           the CGCNN sample CIFs (``cgcnn/sample-regression/*.cif``, MIT)
``carbon24``        the carbon24 polymorphs (``carbon24/val.csv``, a CIF string per row, MIT)
``user``            extra CIF / extxyz / any ASE-readable files given with ``--seed-structures``
==================  ==========================================================================

Data folders are looked for under ``$MATFORGE_DATA_ROOT``, else ``../shared/data`` relative to the
current directory or to the repository; the CGCNN CIFs also in the repository's
``tests/fixtures/cgcnn_release``. Structures with more than ``max_atoms`` atoms, partial occupancies,
or elements CHGNet does not cover are dropped.

Substitution rule (:func:`substitute`), the "sensible chemistry": each element of a seed is, with
probability ``p`` (default 0.5), replaced by another element of the **same group** of the periodic
table whose period differs by **at most 2** (so Na ↔ K/Li/Rb, Fe ↔ Ru, O ↔ S/Se, Cl ↔ Br/F; group 3
holds Sc, Y and the lanthanides and actinides, as pymatgen numbers them). Such swaps keep the
valence-electron count and the usual oxidation states, which is what Hautier et al.'s substitution
probabilities mostly reward, without their oxidation-state guessing. H and the noble gases are never
swapped; distinct elements stay distinct (the map is injective); targets are restricted to CHGNet's 89
elements and to ``allowed`` when given (``--elements``). The cell is then scaled isotropically by
the atom-count-weighted ratio of atomic radii, ``f = Σ n_i r(new_i) / Σ n_i r(old_i)``, so a swap
to a larger atom does not start compressed by tens of percent. When ``allowed`` is given, a seed
whose elements cannot all be mapped into it is not used.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from matforge.datasets.chgnet_labels import CHGNET_ELEMENTS

SOURCES = ("aflow", "ase-reference", "cgcnn", "carbon24", "user")
DATA_ROOT_ENV = "MATFORGE_DATA_ROOT"
REFERENCE_SYMMETRIES = ("fcc", "bcc", "hcp", "diamond", "sc")
NEVER_SWAPPED = frozenset([1, 2, 10, 18, 36, 54, 86])  # H and the noble gases
MAX_PERIOD_GAP = 2


@dataclass(frozen=True)
class SeedStructure:
    """A periodic seed crystal: ``numbers`` (N,) int, ``cell`` (3, 3) Å rows, ``positions`` (N, 3) Å."""

    name: str
    source: str
    numbers: np.ndarray
    cell: np.ndarray
    positions: np.ndarray

    def to_ase(self):
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=True)

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "numbers": self.numbers.tolist(),
                "cell": self.cell.tolist(), "positions": self.positions.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "SeedStructure":
        return cls(d["name"], d["source"], np.asarray(d["numbers"], dtype=np.int64),
                   np.asarray(d["cell"], dtype=np.float64), np.asarray(d["positions"], dtype=np.float64))


def _from_atoms(atoms, name: str, source: str) -> SeedStructure:
    return SeedStructure(name, source, np.array(atoms.numbers, dtype=np.int64),
                         np.array(atoms.cell.array, dtype=np.float64), np.array(atoms.positions, dtype=np.float64))


def data_roots() -> list[Path]:
    """Folders searched for the shared data sets (see the module docstring), existing ones only."""
    repo = Path(__file__).resolve().parent.parent
    env = os.environ.get(DATA_ROOT_ENV)
    candidates = [Path(env).expanduser()] if env else []
    candidates += [Path.cwd() / ".." / "shared" / "data", repo / ".." / "shared" / "data"]
    seen, roots = set(), []
    for c in candidates:
        if c.is_dir() and c.resolve() not in seen:
            seen.add(c.resolve())
            roots.append(c.resolve())
    return roots


def aflow_seeds() -> list[SeedStructure]:
    """The ordered prototypes of pymatgen's AFLOW library (raises FileNotFoundError without it)."""
    from importlib.resources import files

    path = Path(str(files("pymatgen.analysis.prototypes") / "aflow_prototypes.json.gz"))
    with gzip.open(path, "rt") as handle:
        entries = json.load(handle)
    from ase.data import atomic_numbers

    seeds = []
    for entry in entries:
        snl = entry["snl"]
        cell = np.asarray(snl["lattice"]["matrix"], dtype=np.float64)
        sites = snl["sites"]
        if any(len(s["species"]) != 1 or abs(float(s["species"][0].get("occu", 1.0)) - 1.0) > 1e-6 for s in sites):
            continue
        numbers = np.array([atomic_numbers[s["species"][0]["element"]] for s in sites], dtype=np.int64)
        frac = np.array([s["abc"] for s in sites], dtype=np.float64)
        label = entry.get("tags", {}).get("aflow") or f"#{len(seeds)}"
        seeds.append(SeedStructure(f"aflow:{label}", "aflow", numbers, cell, frac @ cell))
    return seeds


def ase_reference_seeds() -> list[SeedStructure]:
    """``ase.build.bulk`` of each CHGNet element whose ASE reference state is a simple lattice."""
    from ase.build import bulk
    from ase.data import chemical_symbols, reference_states

    seeds = []
    for z in sorted(CHGNET_ELEMENTS):
        state = reference_states[z]
        if not state or state.get("symmetry") not in REFERENCE_SYMMETRIES:
            continue
        try:
            atoms = bulk(chemical_symbols[z])
        except (ValueError, KeyError, RuntimeError):
            continue
        seeds.append(_from_atoms(atoms, f"ase:{chemical_symbols[z]}-{state['symmetry']}", "ase-reference"))
    return seeds


def _cgcnn_dir() -> Path | None:
    repo = Path(__file__).resolve().parent.parent
    for root in [*data_roots(), repo / "tests" / "fixtures"]:
        for sub in ("cgcnn/sample-regression", "cgcnn_release/sample-regression"):
            if (root / sub).is_dir() and any((root / sub).glob("*.cif")):
                return root / sub
    return None


def cgcnn_seeds() -> list[SeedStructure]:
    """The CGCNN sample-regression CIFs (raises FileNotFoundError when none is found)."""
    from ase.io import read

    import warnings

    folder = _cgcnn_dir()
    if folder is None:
        raise FileNotFoundError("no cgcnn/sample-regression/*.cif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASE's notes on CIF space-group settings
        return [_from_atoms(read(p), f"cgcnn:{p.stem}", "cgcnn") for p in sorted(folder.glob("*.cif"))]


def carbon24_seeds(max_atoms: int) -> list[SeedStructure]:
    """carbon24's ``val.csv`` structures with at most ``max_atoms`` atoms (FileNotFoundError without it)."""
    import io
    import warnings

    from ase.io import read

    path = next((r / "carbon24" / "val.csv" for r in data_roots() if (r / "carbon24" / "val.csv").is_file()), None)
    if path is None:
        raise FileNotFoundError("no carbon24/val.csv")
    csv.field_size_limit(1 << 24)
    seeds = []
    with open(path, newline="") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in csv.DictReader(handle):
            cif = row["cif"]
            if cif.count("\n C ") > max_atoms:  # cheap pre-filter: one ' C ' site line per atom
                continue
            atoms = read(io.StringIO(cif), format="cif")
            if len(atoms) <= max_atoms:
                seeds.append(_from_atoms(atoms, f"carbon24:{row['material_id']}", "carbon24"))
    return seeds


def user_seeds(paths: Sequence[str | os.PathLike]) -> list[SeedStructure]:
    """Every frame of each file (CIF, extxyz, ... anything ``ase.io.read(path, ':')`` reads)."""
    from ase.io import read

    seeds = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"seed structure file {path} does not exist")
        frames = read(path, index=":")
        for i, atoms in enumerate(frames):
            if not all(atoms.pbc) or abs(atoms.get_volume()) < 1e-6:
                continue
            seeds.append(_from_atoms(atoms, f"user:{path.name}:{i}", "user"))
    return seeds


def load_seed_structures(max_atoms: int, extra_files: Sequence[str | os.PathLike] = (),
                         allowed: Iterable[int] | None = None, sources: Sequence[str] | None = None,
                         log=None) -> tuple[list[SeedStructure], dict[str, int]]:
    """All usable seeds, in a fixed order, and the count per source.

    Drops seeds over ``max_atoms`` atoms or with elements outside CHGNet's; with ``allowed``
    (atomic numbers), also seeds that :func:`substitution_targets` cannot map into it. ``sources``
    limits the built-in sources read (default all of ``SOURCES``; ``user`` files are always read).
    Missing sources print a note to ``log`` (default stderr).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    allowed_set = None if allowed is None else frozenset(int(z) for z in allowed)
    loaders = [("aflow", aflow_seeds), ("ase-reference", ase_reference_seeds), ("cgcnn", cgcnn_seeds),
               ("carbon24", lambda: carbon24_seeds(max_atoms))]
    seeds: list[SeedStructure] = []
    counts: dict[str, int] = {}
    wanted = set(SOURCES if sources is None else sources)
    unknown = wanted - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown seed source(s) {', '.join(sorted(unknown))}; known: {', '.join(SOURCES)}")
    for name, loader in loaders:
        if name not in wanted:
            continue
        try:
            found = loader()
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            log(f"note: seed source {name} skipped: {exc}")
            continue
        seeds.extend(found)
    seeds.extend(user_seeds(extra_files))
    usable = []
    for s in seeds:
        zs = set(int(z) for z in s.numbers)
        if len(s.numbers) > max_atoms or not zs <= CHGNET_ELEMENTS:
            continue
        if allowed_set is not None and not all(substitution_targets(z, allowed_set) or z in allowed_set for z in zs):
            continue
        usable.append(s)
        counts[s.source] = counts.get(s.source, 0) + 1
    return usable, counts


def seeds_digest(seeds: Sequence[SeedStructure]) -> str:
    """sha256 of the seeds' names, numbers and geometry (rounded to 1e-8 Å): the resume fingerprint."""
    h = hashlib.sha256()
    for s in seeds:
        h.update(s.name.encode())
        h.update(np.asarray(s.numbers, dtype=np.int64).tobytes())
        h.update(np.round(np.concatenate([s.cell, s.positions]), 8).tobytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def _group_period(z: int) -> tuple[int, int]:
    from pymatgen.core.periodic_table import Element

    e = Element.from_Z(z)
    return int(e.group), int(e.row)


@lru_cache(maxsize=None)
def substitution_targets(z: int, allowed: frozenset[int] | None = None) -> tuple[int, ...]:
    """Elements that may replace ``z``: same group, period within ±2, CHGNet's and ``allowed``."""
    if z in NEVER_SWAPPED:
        return ()
    group, period = _group_period(z)
    out = []
    for other in sorted(CHGNET_ELEMENTS - NEVER_SWAPPED - {z}):
        if allowed is not None and other not in allowed:
            continue
        g, p = _group_period(other)
        if g == group and abs(p - period) <= MAX_PERIOD_GAP:
            out.append(other)
    return tuple(out)


@lru_cache(maxsize=None)
def _radius(z: int) -> float:
    from pymatgen.core.periodic_table import Element

    r = Element.from_Z(z).atomic_radius
    return 1.5 if r is None else float(r)


def substitute(seed: SeedStructure, rng: np.random.Generator, probability: float = 0.5,
               allowed: frozenset[int] | None = None):
    """An :class:`ase.Atoms` copy of ``seed`` with same-group swaps and the radius-scaled cell (module
    docstring), and the map applied (``{old Z: new Z}``, identity entries omitted). With ``allowed``,
    elements outside it are always swapped (the seed list guarantees a target exists)."""
    atoms = seed.to_ase()
    elements = sorted(set(int(z) for z in seed.numbers))
    mapping: dict[int, int] = {}
    used = set(elements)
    for z in elements:
        must = allowed is not None and z not in allowed
        if not must and rng.random() >= probability:
            continue
        options = [t for t in substitution_targets(z, allowed) if t not in used]
        if not options:
            continue
        target = int(options[int(rng.integers(len(options)))])
        mapping[z] = target
        used.discard(z)
        used.add(target)
    if mapping:
        old = np.array(atoms.numbers)
        new = np.array([mapping.get(int(z), int(z)) for z in old])
        factor = sum(_radius(int(z)) for z in new) / sum(_radius(int(z)) for z in old)
        atoms.numbers = new
        atoms.set_cell(atoms.cell.array * factor, scale_atoms=True)
    return atoms, mapping
