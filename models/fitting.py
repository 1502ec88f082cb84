"""Statistics fitted once from the training data: element reference energies and target normalisers.

All fits read a sample of the training records (all of them up to ``max_records``, otherwise a
uniform random subset drawn with ``np.random.default_rng(seed)``, read in index order) in float64.

Element reference energies (eV per atom of element Z)
-----------------------------------------------------
For the M sampled structures with an energy label, ``E_m`` (eV, total) and ``n_mZ`` atoms of element
Z, over the K elements that occur in them::

    ref = argmin_x ‖A x - E‖²,      A_mZ = n_mZ  (M × K),   so  E_m ≈ Σ_Z n_mZ ref_Z

solved by ``numpy.linalg.lstsq`` (SVD). Rank deficiency (rank A < K: fewer structures than elements,
or elements whose counts are proportional in every structure, e.g. only SrTiO3 cells) leaves a
whole affine family of solutions; lstsq returns the one of minimum norm. Every solution predicts
the same energy for each training composition (and any linear combination of them), so the choice
only matters for compositions outside their span; the fitted dict reports ``element_refs_rank``
so a deficient fit is visible. Elements of the training data that occur in no sampled energy record
get reference 0 and are listed in ``element_refs_unfitted``.

Energy head normalisation (per-atom scale and shift, eV)
--------------------------------------------------------
With the per-atom residuals ``e_m = (E_m - Σ_Z n_mZ ref_Z) / N_m``::

    shift = mean_m e_m
    scale = sqrt( mean over every force component F_ia² )   if the sample has forces (and they are not all 0)
          = std_m e_m  (population)                         otherwise, if > 0
          = 1                                               otherwise

so ``ε_i = scale · MLP(h_i) + shift`` starts with per-atom energies at the data's mean and with
forces of the data's magnitude when the MLP outputs are O(1) (the RMS-force scale is the usual
choice of force-field codes: forces are what the derivative objectives train on).

Property normalisers
--------------------
For property p, over the sampled records that have it: ``mean_p`` and the population ``std_p``
(``std_p = 1`` when all values are equal); a property no sampled record has is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from matforge.datasets.record import Record

ZERO_STD = 1e-12  # a spread below this (in the target's units) is treated as no spread


def sample_indices(n: int, max_records: int, seed: int = 0) -> np.ndarray:
    """Indices of the records a fit reads: ``0..n-1`` when ``n <= max_records``, else a sorted
    uniform random subset of ``max_records`` drawn with ``np.random.default_rng(seed)``."""
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    if n <= max_records:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_records, replace=False)).astype(np.int64)


def parse_composition(text: str) -> dict[int, int]:
    """``'8:3-22:1-38:1'`` (:meth:`Record.composition`) -> ``{8: 3, 22: 1, 38: 1}``."""
    try:
        return {int(z): int(c) for z, c in (part.split(":") for part in text.split("-") if part)}
    except ValueError:
        raise ValueError(f"malformed composition {text!r}; expected 'Z:count-Z:count...'") from None


def view_elements(dataset: Any) -> list[int] | None:
    """Atomic numbers occurring anywhere in a :class:`~matforge.datasets.shard_dataset.ShardDataset`
    view, from its composition index (no record is read); None for other datasets."""
    codes = getattr(dataset, "composition_codes", None)
    directory = getattr(dataset, "directory", None)
    if codes is None or directory is None:
        return None
    from matforge.datasets.manifest import read_index

    names = read_index(directory).get("compositions")
    if names is None:
        return None
    elements: set[int] = set()
    for code in np.unique(np.asarray(codes)):
        elements.update(parse_composition(str(names[int(code)])))
    return sorted(elements)


@dataclass
class LabelSample:
    """The labels of a sample of records, without their structures.

    compositions/energies/natoms: one entry per sampled record with an energy (eV).
    force_sq_sum, force_count: Σ F² (eV²/Å²) and number of force components over records with forces.
    properties: name -> values of the sampled records that have it.
    elements: atomic numbers of the training data (the whole view when known, else the sample's).
    """

    num_records: int = 0
    compositions: list[dict[int, int]] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    natoms: list[int] = field(default_factory=list)
    force_sq_sum: float = 0.0
    force_count: int = 0
    properties: dict[str, list[float]] = field(default_factory=dict)
    elements: list[int] = field(default_factory=list)
    num_equilibrium: int = 0

    def add(self, record: Record, properties: Sequence[str] = ()) -> None:
        self.num_records += 1
        if record.equilibrium is True:
            self.num_equilibrium += 1
        zs, counts = np.unique(np.asarray(record.numbers), return_counts=True)
        if record.energy is not None:
            self.compositions.append({int(z): int(c) for z, c in zip(zs, counts)})
            self.energies.append(float(record.energy))
            self.natoms.append(record.natoms)
        if record.forces is not None:
            f = np.asarray(record.forces, dtype=np.float64)
            self.force_sq_sum += float(np.square(f).sum())
            self.force_count += int(f.size)
        for name in properties:
            if name in record.properties:
                self.properties.setdefault(name, []).append(float(record.properties[name]))


def describe_dataset(dataset: Any) -> str:
    """A short name for error messages: the ShardDataset's repr (its directory), else type and size."""
    if hasattr(dataset, "directory"):
        return repr(dataset)
    return f"a {type(dataset).__name__} of {len(dataset)} records"


def collect_labels(dataset: Any, max_records: int = 20000, seed: int = 0,
                   properties: Sequence[str] = ()) -> LabelSample:
    """Read the sample of ``dataset`` (anything with ``len`` and ``[i] -> Record``) into a
    :class:`LabelSample`; ``properties`` names the property values to keep."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"cannot fit statistics on an empty dataset ({describe_dataset(dataset)})")
    sample = LabelSample()
    seen: set[int] = set()
    for i in sample_indices(n, max_records, seed):
        record = dataset[int(i)]
        sample.add(record, properties)
        seen.update(int(z) for z in np.unique(np.asarray(record.numbers)))
    whole_view = view_elements(dataset)
    sample.elements = whole_view if whole_view is not None else sorted(seen)
    return sample


def composition_matrix(compositions: Sequence[dict[int, int]], elements: Sequence[int]) -> np.ndarray:
    """(M, K) float64 counts ``A_mk`` of element ``elements[k]`` in structure m."""
    column = {z: k for k, z in enumerate(elements)}
    a = np.zeros((len(compositions), len(elements)), dtype=np.float64)
    for m, comp in enumerate(compositions):
        for z, c in comp.items():
            a[m, column[z]] = c
    return a


def fit_element_references(counts: np.ndarray, energies: np.ndarray) -> tuple[np.ndarray, int]:
    """Least-squares ``x`` of ``counts @ x ≈ energies`` (minimum norm if rank deficient) and the rank."""
    counts = np.asarray(counts, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    if counts.ndim != 2 or energies.shape != (counts.shape[0],):
        raise ValueError(f"need counts (M, K) and energies (M,), got {counts.shape} and {energies.shape}")
    refs, _, rank, _ = np.linalg.lstsq(counts, energies, rcond=None)
    return refs, int(rank)


def fit_energy(sample: LabelSample) -> dict[str, Any]:
    """Element references and the energy head's scale and shift (see the module docstring).

    Returns a JSON-able dict: ``element_refs`` {str(Z): eV}, ``element_refs_rank``,
    ``element_refs_unfitted`` [Z], ``energy_scale``, ``energy_shift`` (eV), ``energy_scale_source``
    ("forces_rms" | "energy_std" | "default") and ``energy_records``.
    """
    fitted_elements = sorted({z for comp in sample.compositions for z in comp})
    refs_by_z: dict[int, float] = {}
    rank = 0
    residuals = np.zeros(0)
    if sample.energies:
        a = composition_matrix(sample.compositions, fitted_elements)
        e = np.asarray(sample.energies, dtype=np.float64)
        refs, rank = fit_element_references(a, e)
        refs_by_z = {z: float(r) for z, r in zip(fitted_elements, refs)}
        residuals = (e - a @ refs) / np.asarray(sample.natoms, dtype=np.float64)
    shift = float(residuals.mean()) if residuals.size else 0.0
    force_rms = float(np.sqrt(sample.force_sq_sum / sample.force_count)) if sample.force_count else 0.0
    energy_std = float(residuals.std()) if residuals.size else 0.0
    if force_rms > ZERO_STD:
        scale, source = force_rms, "forces_rms"
    elif energy_std > ZERO_STD:
        scale, source = energy_std, "energy_std"
    else:
        scale, source = 1.0, "default"
    return {
        "element_refs": {str(z): refs_by_z[z] for z in fitted_elements},
        "element_refs_rank": rank,
        "element_refs_unfitted": [z for z in sample.elements if z not in refs_by_z],
        "energy_scale": scale,
        "energy_shift": shift,
        "energy_scale_source": source,
        "energy_records": len(sample.energies),
    }


def fit_properties(sample: LabelSample, names: Sequence[str], where: str = "the training data") -> dict[str, Any]:
    """``{name: {"mean", "std", "count"}}`` per property (see the module docstring)."""
    out: dict[str, Any] = {}
    for name in names:
        values = np.asarray(sample.properties.get(name, []), dtype=np.float64)
        if values.size == 0:
            raise ValueError(f"property {name!r}: none of the {sample.num_records} records sampled from {where} has "
                             "this label (check the property name)")
        std = float(values.std())
        out[name] = {"mean": float(values.mean()), "std": std if std > ZERO_STD else 1.0, "count": int(values.size)}
    return out
