"""Leakage between pre-training corpora and downstream fine-tuning sets: which corpus records are
copies (exact, perturbed, or another cell) of a downstream structure.

Matching criterion. A corpus record ``c`` matches a downstream structure ``d`` when

1. both have the same reduced formula (pymatgen ``Composition.reduced_formula``), and
2. ``StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True,
   attempt_supercell=False).fit(c, d)`` is true (pymatgen's defaults, :class:`MatcherSettings`).

What those settings tolerate (pymatgen's definitions): both structures are Niggli-reduced and
reduced to a primitive cell (``get_primitive_structure``, 0.25 Å site tolerance); ``scale`` rescales
both to the same volume, so an isotropic strain of any size is ignored; after that, lattice
lengths may differ by a fraction ``ltol`` = 20 % and angles by ``angle_tol`` = 5°, so the ±5 %
random strains of a corpus frame pass; and every site must lie within ``stol`` = 0.3 × (V/N)^(1/3)
of its partner (0.68 Å in fcc Cu), so rattles of 0.02–0.15 Å pass. A supercell of ``d`` matches
when the primitive reduction finds the primitive cell again: always for an exact supercell, for a
supercell rattled by about 0.02 Å, but not for one rattled by 0.1 Å or more (its atoms no longer
repeat within 0.25 Å, so it keeps all its sites and is compared as a different cell).
``MatcherSettings(attempt_supercell=True)`` (``matforge data leakage --supercell``) also matches
those, at up to seconds per pair instead of milliseconds.

Every frame is checked, trajectories included: an MD run drifts from its first frame, so the
first frame's verdict does not decide the others'.

Cost: the reduced formula of a corpus record comes from ``index.npz`` (the record's reduced
composition string), so only records whose formula also occurs downstream are decoded. Each of
those structures is reduced once (Niggli + primitive) and then compared with
``fit(..., skip_structure_reduction=True)`` against the downstream structures of its formula (also
reduced once); pairs whose reduced cells have different numbers of sites are not passed to
pymatgen, since without ``attempt_supercell`` it rejects them anyway. Records without a periodic
cell (|det(cell)| < 1e-6 Å³) cannot be compared and are counted as skipped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from matforge.datasets.errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from matforge.datasets.record import Record
    from matforge.datasets.shard_dataset import ShardDataset

_SINGULAR_VOLUME = 1e-6  # Å³


@dataclass(frozen=True)
class MatcherSettings:
    """StructureMatcher options (pymatgen's defaults; see the module docstring)."""

    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0
    primitive_cell: bool = True
    scale: bool = True
    attempt_supercell: bool = False

    def matcher(self) -> "StructureMatcher":
        from pymatgen.analysis.structure_matcher import StructureMatcher

        return StructureMatcher(ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol,
                                primitive_cell=self.primitive_cell, scale=self.scale,
                                attempt_supercell=self.attempt_supercell)


def reduced_formula_of(composition: str) -> str:
    """pymatgen's reduced formula of a record's composition string ``'Z:count-Z:count'``
    (:meth:`matforge.datasets.record.Record.composition`), e.g. ``'8:3-22:1-38:1'`` → ``'SrTiO3'``."""
    from pymatgen.core import Composition, Element

    try:
        counts = {Element.from_Z(int(z)): int(c) for z, c in (part.split(":") for part in composition.split("-"))}
    except ValueError:
        raise DatasetError(f"malformed composition {composition!r} in index.npz") from None
    return Composition(counts).reduced_formula


def record_structure(record: "Record") -> "Structure | None":
    """The record as a pymatgen Structure (Å, Cartesian positions); ``None`` without a periodic cell."""
    from pymatgen.core import Lattice, Structure

    if abs(float(np.linalg.det(record.cell))) < _SINGULAR_VOLUME:
        return None
    return Structure(Lattice(record.cell), record.numbers.tolist(), record.positions, coords_are_cartesian=True)


def reduce_structure(structure: "Structure", settings: MatcherSettings) -> "Structure":
    """Niggli cell, then primitive cell (if ``settings.primitive_cell``): what StructureMatcher
    does to both inputs before comparing them, done once per structure here."""
    reduced = structure.get_reduced_structure(reduction_algo="niggli")
    if settings.primitive_cell:
        reduced = reduced.get_primitive_structure()
    return reduced


def _formulas_from_index(dataset: "ShardDataset") -> list[str]:
    """Reduced formula of every record of a dataset (view), from its index (no record is decoded)."""
    from matforge.datasets.manifest import read_index

    names = read_index(dataset.directory)["compositions"]
    codes = dataset.composition_codes
    per_code = [reduced_formula_of(str(name)) for name in names]
    return [per_code[int(c)] for c in codes]


class DownstreamSet:
    """Downstream structures read from one file, and the tasks that read it.

    ``formulas[i]`` is the reduced formula of structure ``i``; ``structure(i)`` builds it and
    ``structure_id(i)`` names it (the record id for a dataset, ``str(i)`` or a given id otherwise).
    """

    def __init__(self, label: str, tasks: Sequence[str], formulas: Sequence[str],
                 structure: Callable[[int], "Structure | None"], structure_id: Callable[[int], str]) -> None:
        self.label = label
        self.tasks = tuple(tasks)
        self.formulas = list(formulas)
        self.structure = structure
        self.structure_id = structure_id

    def __len__(self) -> int:
        return len(self.formulas)

    @classmethod
    def from_structures(cls, label: str, structures: Sequence["Structure"], tasks: Sequence[str] | None = None,
                        ids: Sequence[str] | None = None) -> "DownstreamSet":
        """A set of in-memory pymatgen Structures (tasks default to ``(label,)``)."""
        items = list(structures)
        names = [str(i) for i in range(len(items))] if ids is None else [str(i) for i in ids]
        if len(names) != len(items):
            raise ValueError(f"{len(names)} ids for {len(items)} structures")
        return cls(label, tasks or (label,), [s.composition.reduced_formula for s in items],
                   items.__getitem__, names.__getitem__)

    @classmethod
    def from_dataset(cls, label: str, dataset: "ShardDataset", tasks: Sequence[str]) -> "DownstreamSet":
        """The records of a shard directory (e.g. a task's file converted by the fine-tuning cache)."""
        return cls(label, tasks, _formulas_from_index(dataset), lambda i: record_structure(dataset[i]),
                   lambda i: dataset[i].id)


@dataclass(frozen=True)
class Match:
    """One corpus record that matches one downstream structure of a task."""

    task: str
    corpus: str
    record_index: int
    record_id: str
    downstream_index: int
    downstream_id: str
    formula: str


@dataclass
class TaskOverlap:
    """Counts for one task: its structures, the reduced formulas it shares with the corpora, the
    corpus records matching any of its structures, and its structures matched by any record."""

    task: str
    source: str
    downstream_structures: int
    shared_formulas: int
    corpus_records_matched: int
    downstream_matched: int


@dataclass
class CorpusSummary:
    """One corpus: its records, how many share a formula with a downstream set (and were
    compared), and how many of those had no periodic cell (skipped)."""

    directory: str
    dataset_id: str
    num_records: int
    records_compared: int
    records_skipped: int


@dataclass
class LeakageReport:
    """What :func:`find_leakage` found; ``matches`` lists every (record, task, structure) pair."""

    corpora: list[CorpusSummary]
    tasks: list[TaskOverlap]
    matches: list[Match]
    settings: MatcherSettings
    pairs_compared: int = 0
    seconds: float = 0.0
    criterion: str = field(default="same reduced formula, then pymatgen StructureMatcher.fit")

    def dropped(self) -> dict[str, list[int]]:
        """Corpus directory → sorted global indices of its records that match anything."""
        out: dict[str, set[int]] = {c.directory: set() for c in self.corpora}
        for m in self.matches:
            out[m.corpus].add(m.record_index)
        return {k: sorted(v) for k, v in out.items()}

    @property
    def num_corpus_records_matched(self) -> int:
        return sum(len(v) for v in self.dropped().values())

    def to_dict(self) -> dict:
        """A JSON-ready dict of the whole report."""
        return {"criterion": self.criterion, "settings": asdict(self.settings),
                "corpora": [asdict(c) for c in self.corpora], "tasks": [asdict(t) for t in self.tasks],
                "corpus_records_matched": self.num_corpus_records_matched,
                "pairs_compared": self.pairs_compared, "seconds": round(self.seconds, 3),
                "matches": [asdict(m) for m in self.matches]}


class _Reduced:
    """Reduced downstream structures by (set, index), built on first use."""

    def __init__(self, sets: Sequence[DownstreamSet], settings: MatcherSettings) -> None:
        self._sets = sets
        self._settings = settings
        self._cache: dict[tuple[int, int], "Structure | None"] = {}

    def get(self, k: int, i: int) -> "Structure | None":
        key = (k, i)
        if key not in self._cache:
            s = self._sets[k].structure(i)
            self._cache[key] = None if s is None else reduce_structure(s, self._settings)
        return self._cache[key]


def _by_formula(formulas: Iterable[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, f in enumerate(formulas):
        out.setdefault(f, []).append(i)
    return out


def _fits(matcher: "StructureMatcher", settings: MatcherSettings, a: "Structure", b: "Structure",
          skip_reduction: bool) -> bool:
    """``matcher.fit`` of two structures already reduced by :func:`reduce_structure`;
    ``skip_reduction``: this pymatgen's ``fit`` takes ``skip_structure_reduction``."""
    if not settings.attempt_supercell and len(a) != len(b):
        return False
    if skip_reduction:
        return bool(matcher.fit(a, b, skip_structure_reduction=True))
    return bool(matcher.fit(a, b))  # older pymatgen: reduces again (same result, slower)


def _has_skip_reduction() -> bool:
    import inspect

    from pymatgen.analysis.structure_matcher import StructureMatcher

    return "skip_structure_reduction" in inspect.signature(StructureMatcher.fit).parameters


def find_leakage(corpora: Sequence[str | Path], downstream: Sequence[DownstreamSet],
                 settings: MatcherSettings | None = None) -> LeakageReport:
    """Compare every record of the shard directories ``corpora`` with the ``downstream`` sets
    (see the module docstring for the criterion). Raises :class:`DatasetError` for a directory
    that is not a complete matforge dataset."""
    from matforge.datasets.shard_dataset import open_dataset

    settings = settings or MatcherSettings()
    matcher = settings.matcher()
    start = time.perf_counter()
    datasets = [open_dataset(c) for c in corpora]
    corpus_formulas = [_formulas_from_index(ds) for ds in datasets]
    all_corpus_formulas = set().union(*map(set, corpus_formulas)) if corpus_formulas else set()
    groups = [_by_formula(s.formulas) for s in downstream]
    reduced = _Reduced(downstream, settings)
    shared_any = set().union(*(set(g) for g in groups)) & all_corpus_formulas if groups else set()

    skip_reduction = _has_skip_reduction()
    hits: list[list[tuple[str, int, int]]] = [[] for _ in downstream]  # per set: (corpus, record, structure)
    matches: list[Match] = []
    summaries: list[CorpusSummary] = []
    pairs = 0
    for ds, formulas in zip(datasets, corpus_formulas):
        name = str(ds.directory)
        compared = skipped = 0
        for g, formula in enumerate(formulas):
            if formula not in shared_any:
                continue
            record = ds[g]
            structure = record_structure(record)
            if structure is None:
                skipped += 1
                continue
            compared += 1
            mine = reduce_structure(structure, settings)
            candidates = [(k, i) for k, group in enumerate(groups) for i in group.get(formula, ())]
            for k, i in candidates:
                other = reduced.get(k, i)
                if other is None:
                    continue
                pairs += 1
                if _fits(matcher, settings, mine, other, skip_reduction):
                    hits[k].append((name, g, i))
                    sid = downstream[k].structure_id(i)
                    matches += [Match(task, name, g, record.id, i, sid, formula) for task in downstream[k].tasks]
        summaries.append(CorpusSummary(name, ds.manifest.dataset_id, len(ds), compared, skipped))

    overlaps = []
    for k, s in enumerate(downstream):
        shared = len(set(groups[k]) & all_corpus_formulas)
        records = len({(corpus, g) for corpus, g, _ in hits[k]})
        structures = len({i for _, _, i in hits[k]})
        overlaps += [TaskOverlap(task, s.label, len(s), shared, records, structures) for task in s.tasks]
    return LeakageReport(summaries, overlaps, matches, settings, pairs, time.perf_counter() - start)
