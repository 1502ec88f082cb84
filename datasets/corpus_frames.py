"""Frames of the CHGNet corpus: one deterministic chunk of labelled, filtered records at a time.

Chunk ``k`` covers frame indices ``[k·C, min((k+1)·C, N))`` (``C`` = ``chunk_frames``, ``N`` =
``structures``) and is a pure function of ``(seed, k)`` and the settings: its generator is
``numpy.random.default_rng([seed, k])``, and the labeller runs on one thread.

Each step draws a seed source (weights ``SOURCE_WEIGHTS``, renormalised over the sources present),
a seed structure in it, element substitutions (:func:`matforge.datasets.corpus_seeds.substitute`),
and a supercell of at most ``max_atoms`` atoms (short lattice vectors are repeated first, up to a
random target of 4 … ``max_atoms``/2 atoms), then one kind of frame:

==========  =====  ========================================================================
kind        share  what
==========  =====  ========================================================================
``rattle``  0.45   Gaussian displacements, σ ∈ [0.02, 0.15] Å per Cartesian component
``strain``  0.35   ``x → x (I + ε)``, ε_ii ∈ [-0.05, 0.05], symmetric shear ε_ij ∈ [-0.02, 0.02]
                   (i ≠ j), then a 0.01 Å rattle
``md``      0.12   Velocity Verlet (ASE) with CHGNet forces from Maxwell–Boltzmann velocities at
                   300–1500 K, time step 2 fs (1 fs with H); ``TRAJ_FRAMES`` snapshots
                   ``MD_STEPS_PER_FRAME`` steps apart, starting from a 0.03 Å rattle and ±2 % strain
``relax``   0.08   FIRE on positions and cell (ASE ``UnitCellFilter``) from a rattle of
                   0.05–0.10 Å and ±3 % strain; frames at steps 0, 1, 2, … and the last step;
                   the last frame is flagged ``equilibrium=True`` only if FIRE converged
                   (``fmax`` 0.05 eV/Å, including the filter's stress term)
==========  =====  ========================================================================

MD frames are ``MD_STEPS_PER_FRAME`` = 2 steps apart, relaxation frames one FIRE step apart, and
the shares favour single frames, so a frame costs about 1.15 CHGNet evaluations on average: the
labelling is nearly the whole cost (``benchmarks/corpus_chgnet.py``). ``UnitCellFilter`` rather than
``FrechetCellFilter``: the latter's matrix exponential (``scipy.linalg.expm_frechet``) cost more
than CHGNet itself on these small cells. Every other frame is ``equilibrium=False``. Frames of one MD or relaxation run share the trajectory
id ``chgnet-s<seed>-<kind>-<first index>`` and carry ``frame`` = 0, 1, …; single frames are their own
trajectory. Record ids are ``chgnet-s<seed>-<index>-<kind>``; ``source`` is
``synth:chgnet:<seed structure name>``.

Outliers (:func:`outlier_reason`) are dropped and reported: any atom with |F| > 50 eV/Å, any stress
component with |σ| > 200 GPa, an energy outside [-15, +5] eV/atom (MPtrj's energies, CHGNet's
training range, lie within about [-14, 0] eV/atom; a frame far outside is not a physical
configuration the potential has seen), or a NaN/inf label. A frame the labeller cannot label (CHGNet's graph refuses an
isolated atom) is dropped the same way. Dropped frames still use their index, so ``N`` is the number
of frames attempted and ``N − dropped`` the number written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from matforge.datasets.chgnet_labels import EV_PER_A3_IN_GPA, Labels, LabellerCalculator, LabellerFailure
from matforge.datasets.corpus_seeds import SeedStructure, substitute
from matforge.datasets.record import Record

KINDS = ("rattle", "strain", "md", "relax")
KIND_WEIGHTS = (0.45, 0.35, 0.12, 0.08)
SOURCE_WEIGHTS = {"aflow": 0.35, "ase-reference": 0.2, "cgcnn": 0.1, "carbon24": 0.15, "user": 0.2}
TRAJ_FRAMES = 4
MD_STEPS_PER_FRAME = 2
RELAX_STEPS_PER_FRAME = 1
RELAX_FMAX = 0.05  # eV/Å
MAX_FORCE = 50.0  # eV/Å
MAX_STRESS_GPA = 200.0
ENERGY_PER_ATOM_RANGE = (-15.0, 5.0)  # eV/atom
MIN_ATOMS = 4

Labeller = Callable[[Sequence[Any]], "list[Labels | str]"]


@dataclass(frozen=True)
class CorpusSettings:
    """What determines the corpus: ``structures`` frames (attempted), ``seed``, ``max_atoms`` per cell,
    ``chunk_frames`` per chunk, ``elements`` (allowed atomic numbers, or None for all of CHGNet's),
    ``substitution`` probability per element."""

    structures: int
    seed: int = 0
    max_atoms: int = 32
    chunk_frames: int = 50
    elements: tuple[int, ...] | None = None
    substitution: float = 0.5

    def __post_init__(self) -> None:
        if self.structures < 0:
            raise ValueError(f"number of structures must be >= 0, got {self.structures}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_atoms < MIN_ATOMS:
            raise ValueError(f"max_atoms={self.max_atoms} is too small; at least {MIN_ATOMS}")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")

    @property
    def num_chunks(self) -> int:
        return -(-self.structures // self.chunk_frames)

    def chunk_range(self, k: int) -> tuple[int, int]:
        """Frame indices ``[start, stop)`` of chunk ``k``."""
        return k * self.chunk_frames, min((k + 1) * self.chunk_frames, self.structures)


@dataclass
class ChunkResult:
    """Chunk ``k``'s records (labelled, in index order) and dropped frames ``(id, reason)``."""

    chunk: int
    records: list[Record] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def outlier_reason(labels: Labels, natoms: int) -> str | None:
    """Why a labelled frame is an outlier (see the module docstring), or None."""
    if not (np.isfinite(labels.energy) and np.isfinite(labels.forces).all() and np.isfinite(labels.stress).all()):
        return "non-finite labels: NaN or inf in energy, forces or stress"
    fmax = float(np.sqrt((labels.forces ** 2).sum(axis=1)).max()) if natoms else 0.0
    if fmax > MAX_FORCE:
        return f"force outlier: max |F| {fmax:.1f} eV/A > {MAX_FORCE:g} eV/A"
    smax = float(np.abs(labels.stress).max()) * EV_PER_A3_IN_GPA
    if smax > MAX_STRESS_GPA:
        return f"stress outlier: max |sigma| {smax:.0f} GPa > {MAX_STRESS_GPA:g} GPa"
    e = labels.energy / natoms
    lo, hi = ENERGY_PER_ATOM_RANGE
    if not lo <= e <= hi:
        return f"energy outlier: {e:.2f} eV/atom outside [{lo:g}, {hi:g}] eV/atom"
    return None


def _pick_seed(rng: np.random.Generator, by_source: dict[str, list[SeedStructure]]) -> SeedStructure:
    names = sorted(by_source)
    w = np.array([SOURCE_WEIGHTS.get(n, 0.1) for n in names])
    source = names[int(rng.choice(len(names), p=w / w.sum()))]
    pool = by_source[source]
    return pool[int(rng.integers(len(pool)))]


def _supercell(atoms, rng: np.random.Generator, max_atoms: int):
    """Repeat the shortest (repeated) lattice vector until a random target of 4…max_atoms/2 atoms."""
    target = int(rng.integers(MIN_ATOMS, max(MIN_ATOMS, max_atoms // 2) + 1))
    reps = np.ones(3, dtype=int)
    lengths = np.linalg.norm(atoms.cell.array, axis=1)
    n = len(atoms)
    while n * reps.prod() < target:
        axis = int(np.argmin(lengths * reps))
        if n * reps.prod() // reps[axis] * (reps[axis] + 1) > max_atoms:
            break
        reps[axis] += 1
    return atoms.repeat(tuple(int(r) for r in reps)) if reps.prod() > 1 else atoms


def _strain(atoms, epsilon: np.ndarray) -> None:
    """Apply ``x → x (I + ε)`` to cell (rows) and positions."""
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)


def _random_strain(rng: np.random.Generator, diagonal: float, shear: float) -> np.ndarray:
    eps = np.diag(rng.uniform(-diagonal, diagonal, size=3))
    off = np.triu(rng.uniform(-shear, shear, size=(3, 3)), k=1)
    return eps + off + off.T


def _rattle(atoms, rng: np.random.Generator, sigma: float) -> None:
    atoms.positions = atoms.positions + rng.normal(0.0, sigma, size=atoms.positions.shape)


def _record(atoms, labels: Labels, record_id: str, source: str, trajectory: str = "",
            frame: int | None = None, equilibrium: bool = False) -> Record:
    return Record(
        id=record_id, numbers=np.array(atoms.numbers, dtype=np.int64),
        positions=np.array(atoms.positions, dtype=np.float64), cell=np.array(atoms.cell.array, dtype=np.float64),
        pbc=np.array(atoms.pbc, dtype=bool), energy=float(labels.energy),
        forces=np.array(labels.forces, dtype=np.float64), stress=np.array(labels.stress, dtype=np.float64),
        source=source, trajectory=trajectory or record_id, frame=frame, equilibrium=equilibrium,
    )


class _Chunk:
    """Builds one chunk; single frames are labelled together at the end (batched)."""

    def __init__(self, k: int, settings: CorpusSettings, by_source: dict[str, list[SeedStructure]],
                 labeller: Labeller) -> None:
        self.k, self.settings, self.by_source, self.labeller = k, settings, by_source, labeller
        self.rng = np.random.default_rng([settings.seed, k])
        self.allowed = None if settings.elements is None else frozenset(settings.elements)
        self.result = ChunkResult(k)
        self.singles: list[tuple[int, Any, str, str]] = []  # (index, atoms, id, source)
        self.trajectories: list[tuple[int, Record | tuple[str, str]]] = []

    def parent(self):
        seed = _pick_seed(self.rng, self.by_source)
        atoms, _ = substitute(seed, self.rng, self.settings.substitution, self.allowed)
        return _supercell(atoms, self.rng, self.settings.max_atoms), f"synth:chgnet:{seed.name}"

    def rid(self, index: int, kind: str) -> str:
        return f"chgnet-s{self.settings.seed}-{index:07d}-{kind}"

    def keep(self, index: int, item: Record | tuple[str, str]) -> None:
        self.trajectories.append((index, item))

    def build(self) -> ChunkResult:
        start, stop = self.settings.chunk_range(self.k)
        index = start
        while index < stop:
            kind = KINDS[int(self.rng.choice(len(KINDS), p=KIND_WEIGHTS))]
            atoms, source = self.parent()
            if kind == "rattle":
                _rattle(atoms, self.rng, float(self.rng.uniform(0.02, 0.15)))
            elif kind == "strain":
                _strain(atoms, _random_strain(self.rng, 0.05, 0.02))
                _rattle(atoms, self.rng, 0.01)
            if kind in ("rattle", "strain"):
                self.singles.append((index, atoms, self.rid(index, kind), source))
                index += 1
                continue
            count = min(TRAJ_FRAMES, stop - index)
            run = self._md if kind == "md" else self._relax
            index += run(atoms, source, index, count)
        self._label_singles()
        for index, item in sorted(self.trajectories, key=lambda t: t[0]):
            if isinstance(item, Record):
                self.result.records.append(item)
            else:
                self.result.skipped.append(item)
        return self.result

    def _label_singles(self) -> None:
        labels = self.labeller([atoms for _, atoms, _, _ in self.singles]) if self.singles else []
        for (index, atoms, rid, source), lab in zip(self.singles, labels):
            self.keep(index, self._checked(atoms, lab, rid, source))

    def _checked(self, atoms, labels: Labels | str, rid: str, source: str, **meta) -> Record | tuple[str, str]:
        if isinstance(labels, str):
            return rid, f"labeller failed: {labels}"
        reason = outlier_reason(labels, len(atoms))
        return (rid, reason) if reason else _record(atoms, labels, rid, source, **meta)

    def _md(self, atoms, source: str, start: int, count: int) -> int:
        """``count`` MD frames from ``atoms``; returns the indices used (frames, plus one on failure)."""
        from ase import units
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
        from ase.md.verlet import VelocityVerlet

        _strain(atoms, float(self.rng.uniform(-0.02, 0.02)) * np.eye(3))
        _rattle(atoms, self.rng, 0.03)
        atoms.calc = LabellerCalculator(self.labeller)
        MaxwellBoltzmannDistribution(atoms, temperature_K=float(self.rng.uniform(300.0, 1500.0)), rng=self.rng)
        Stationary(atoms)
        timestep = (1.0 if 1 in atoms.numbers else 2.0) * units.fs
        dynamics = VelocityVerlet(atoms, timestep=timestep)
        trajectory = f"chgnet-s{self.settings.seed}-md-{start:07d}"
        for frame in range(count):
            rid = self.rid(start + frame, "md")
            try:
                dynamics.run(MD_STEPS_PER_FRAME)
                labels = self._calc_labels(atoms)
            except LabellerFailure as exc:
                self.keep(start + frame, (rid, f"labeller failed: {exc}"))
                return frame + 1
            item = self._checked(atoms, labels, rid, source, trajectory=trajectory, frame=frame)
            self.keep(start + frame, item)
            if not isinstance(item, Record):  # an exploding trajectory: stop it
                return frame + 1
        return count

    def _relax(self, atoms, source: str, start: int, count: int) -> int:
        """Up to ``count`` frames of a FIRE cell+positions relaxation; returns the indices used."""
        from ase.filters import UnitCellFilter
        from ase.optimize import FIRE

        _strain(atoms, _random_strain(self.rng, 0.03, 0.0))
        _rattle(atoms, self.rng, float(self.rng.uniform(0.05, 0.10)))
        atoms.calc = LabellerCalculator(self.labeller)
        optimizer = FIRE(UnitCellFilter(atoms), logfile=None)
        trajectory = f"chgnet-s{self.settings.seed}-relax-{start:07d}"
        last_step = (count - 1) * RELAX_STEPS_PER_FRAME
        frame = 0
        try:
            for converged in optimizer.irun(fmax=RELAX_FMAX, steps=last_step):
                step = optimizer.nsteps
                if step % RELAX_STEPS_PER_FRAME and not converged and step < last_step:
                    continue
                rid = self.rid(start + frame, "relax")
                item = self._checked(atoms, self._calc_labels(atoms), rid, source, trajectory=trajectory,
                                     frame=frame, equilibrium=bool(converged))
                self.keep(start + frame, item)
                frame += 1
                if converged or frame == count or not isinstance(item, Record):
                    break
        except LabellerFailure as exc:
            self.keep(start + frame, (self.rid(start + frame, "relax"), f"labeller failed: {exc}"))
            frame += 1
        return max(frame, 1)

    @staticmethod
    def _calc_labels(atoms) -> Labels:
        """The labels the calculator computed for the current geometry (cached; no extra call)."""
        calc = atoms.calc
        energy = atoms.get_potential_energy()
        return Labels(energy=float(energy), forces=np.array(atoms.get_forces()),
                      stress=np.array(calc.results["stress_3x3"]))


def make_chunk(k: int, settings: CorpusSettings, seeds: Sequence[SeedStructure], labeller: Labeller) -> ChunkResult:
    """Chunk ``k``: its records and dropped frames (module docstring). ``labeller`` maps a list of
    :class:`ase.Atoms` to :class:`Labels` or reason strings (see ``ChgnetLabeller``)."""
    if not 0 <= k < settings.num_chunks:
        raise ValueError(f"chunk {k} out of range 0..{settings.num_chunks - 1}")
    if not seeds:
        raise ValueError("no seed structures")
    by_source: dict[str, list[SeedStructure]] = {}
    for s in seeds:
        by_source.setdefault(s.source, []).append(s)
    return _Chunk(k, settings, by_source, labeller).build()
