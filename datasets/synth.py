"""Offline labels: off-equilibrium fcc metals labelled with ASE's EMT calculator.

``matforge data synth`` needs no download and no DFT code: it builds small fcc cells of the metals
ASE's effective-medium theory (EMT) is parametrised for (Al, Cu, Ag, Au, Ni, Pd, Pt) and labels each
with EMT's total energy (eV), forces (eV/Å, N×3) and full 3×3 stress (eV/Å³, ASE sign: tensile
positive). Tests of training, derivative losses and the Ray quick-start use it as a real, cheap
energy surface whose forces and stress are exact derivatives of its energy.

EMT (Jacobsen, Stoltze, Nørskov 1996, as implemented in ``ase.calculators.emt``) writes the energy
as a sum over atoms of a cohesive function of the neighbour density embedding each atom plus a pair
correction: ``E = Σ_i [E_c(n_i) + ΔE_AS(i)]``, zero for each pure metal at its equilibrium fcc
lattice. ASE's stress is ``σ = (1/V) ∂E/∂ε`` for a symmetric strain ``ε`` of cell and positions,
so a compressed cell has negative diagonal stress and a stretched one positive.

Equilibrium lattice constant: for each element, ``a0`` is the stationary point of ``E(a)`` of the
one-atom primitive fcc cell, found as the root of the mean stress ``tr σ(a) / 3 = (1/3V) dE/d ln a``
by Brent's method (``scipy.optimize.brentq``) to |Δa| < 1e-12 Å. A perfect lattice at ``a0`` has zero
forces by symmetry and zero stress, so it is a relaxed structure (``equilibrium=True``).

Kinds of structure (in a fixed cycle, see ``SCHEDULE``; all but ``relaxed`` are off-equilibrium):

=========================  =================================================================
``relaxed``                pure metal, perfect supercell at ``a0``; ``equilibrium=True``
``rattled``                ≥ 4 atoms at ``a0``, Gaussian displacements σ ∈ [0.02, 0.12] Å
``strained-tensile``       homogeneous strain ``ε = s·I + shear``, s ∈ [+0.01, +0.05],
``strained-compressive``   s ∈ [-0.05, -0.01], |shear| ≤ 0.005, rattle 0.01 Å
``vacancy``                1–2 atoms removed from a ≥ 4-atom supercell, rattle 0.01–0.05 Å
``alloy``                  random binary substitutional alloy at Vegard's lattice constant
                           ``x·a0(A) + (1-x)·a0(B)``, rattle 0.03 Å
``md``                     Velocity Verlet (2 fs) from Maxwell–Boltzmann velocities at
                           300–1500 K; ``MD_FRAMES`` snapshots ``MD_STEPS_PER_FRAME`` steps
                           apart share one trajectory id, ``frame`` = 0, 1, ...
=========================  =================================================================

Determinism: one ``numpy.random.Generator`` seeded with ``seed`` drives every choice in order, and
ids are ``emt-s<seed>-<index>-<kind>``; the same ``(n, seed, elements, max_atoms)`` gives the same
records bit for bit, and the first ``n`` records of a longer run equal a run of ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from matforge.datasets.record import Record

EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
DEFAULT_ELEMENTS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
SOURCE = "synth:emt"
SCHEDULE = ("relaxed", "rattled", "strained-tensile", "alloy", "vacancy", "rattled",
            "strained-compressive", "alloy", "md")
MD_FRAMES = 4
MD_STEPS_PER_FRAME = 3
MD_TIMESTEP_FS = 2.0
MIN_ATOMS = 4  # one conventional fcc cell: the smallest cell with room for a vacancy or an alloy

# (conventional cubic?, repeat); atoms = (4 if cubic else 1) × prod(repeat)
_SUPERCELLS: tuple[tuple[bool, tuple[int, int, int]], ...] = (
    (False, (1, 1, 1)), (False, (2, 2, 1)), (False, (2, 2, 2)), (False, (3, 3, 2)), (False, (3, 3, 3)),
    (True, (1, 1, 1)), (True, (2, 1, 1)), (True, (2, 2, 1)), (True, (2, 2, 2)), (True, (3, 2, 2)),
    (True, (3, 3, 2)), (True, (3, 3, 3)), (True, (4, 3, 3)), (True, (4, 4, 3)), (True, (4, 4, 4)),
)


@dataclass(frozen=True)
class SynthSettings:
    """Checked generator settings: ``elements`` (symbols), ``max_atoms`` per structure."""

    elements: tuple[str, ...]
    max_atoms: int

    @classmethod
    def check(cls, elements: Sequence[str], max_atoms: int) -> "SynthSettings":
        elements = tuple(dict.fromkeys(e.strip() for e in elements if e.strip()))
        if not elements:
            raise ValueError(f"no elements given; EMT knows {', '.join(EMT_ELEMENTS)}")
        unknown = [e for e in elements if e not in EMT_ELEMENTS]
        if unknown:
            raise ValueError(f"element(s) {', '.join(unknown)} not available: the EMT generator covers the fcc metals "
                             f"{', '.join(EMT_ELEMENTS)}")
        if int(max_atoms) < MIN_ATOMS:
            raise ValueError(f"max_atoms={max_atoms} is too small; at least {MIN_ATOMS} (one conventional fcc cell)")
        return cls(elements, int(max_atoms))


@lru_cache(maxsize=None)
def emt_lattice_constant(symbol: str) -> float:
    """EMT's equilibrium fcc lattice constant of ``symbol`` in Å (zero pressure; see module docstring)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states
    from scipy.optimize import brentq

    a_ref = float(reference_states[atomic_numbers[symbol]]["a"])

    def mean_stress(a: float) -> float:
        atoms = bulk(symbol, "fcc", a=a)
        atoms.calc = EMT()
        return float(np.trace(atoms.get_stress(voigt=False)) / 3.0)

    return float(brentq(mean_stress, 0.85 * a_ref, 1.15 * a_ref, xtol=1e-12, rtol=1e-14))


def _supercell(symbol: str, a: float, rng: np.random.Generator, settings: SynthSettings, min_atoms: int):
    """A random fcc supercell of ``symbol`` at lattice constant ``a`` (Å) within the atom limits."""
    from ase.build import bulk

    options = [(cubic, rep) for cubic, rep in _SUPERCELLS
               if min_atoms <= (4 if cubic else 1) * int(np.prod(rep)) <= settings.max_atoms]
    cubic, rep = options[int(rng.integers(len(options)))]
    return bulk(symbol, "fcc", a=a, cubic=cubic).repeat(rep)


def _rattle(atoms, rng: np.random.Generator, sigma: float) -> None:
    atoms.positions = atoms.positions + rng.normal(0.0, sigma, size=atoms.positions.shape)


def _strain(atoms, epsilon: np.ndarray) -> None:
    """Apply the symmetric strain ``epsilon`` (3×3) to cell and positions: x → x (I + ε)."""
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)


def _pick(rng: np.random.Generator, elements: tuple[str, ...]) -> str:
    return elements[int(rng.integers(len(elements)))]


def _alloy(rng: np.random.Generator, settings: SynthSettings):
    """A random binary substitutional alloy at Vegard's lattice constant (unrelaxed)."""
    first, second = rng.choice(len(settings.elements), size=2, replace=False)
    a_sym, b_sym = settings.elements[int(first)], settings.elements[int(second)]
    x = float(rng.uniform(0.1, 0.9))
    a = x * emt_lattice_constant(a_sym) + (1.0 - x) * emt_lattice_constant(b_sym)
    atoms = _supercell(a_sym, a, rng, settings, MIN_ATOMS)
    from ase.data import atomic_numbers

    n = len(atoms)
    n_b = int(np.clip(round((1.0 - x) * n), 1, n - 1))
    numbers = np.full(n, atomic_numbers[a_sym])
    numbers[rng.choice(n, size=n_b, replace=False)] = atomic_numbers[b_sym]
    atoms.numbers = numbers
    return atoms


def _single(kind: str, rng: np.random.Generator, settings: SynthSettings):
    """Build one non-MD structure of ``kind``; returns ``(atoms, equilibrium)``."""
    if kind == "alloy":
        atoms = _alloy(rng, settings)
        _rattle(atoms, rng, 0.03)
        return atoms, False
    symbol = _pick(rng, settings.elements)
    a0 = emt_lattice_constant(symbol)
    if kind == "relaxed":
        return _supercell(symbol, a0, rng, settings, 1), True
    if kind == "rattled":  # at least 4 atoms: rattling a one-atom cell is a mere translation
        atoms = _supercell(symbol, a0, rng, settings, MIN_ATOMS)
        _rattle(atoms, rng, float(rng.uniform(0.02, 0.12)))
        return atoms, False
    if kind in ("strained-tensile", "strained-compressive"):
        atoms = _supercell(symbol, a0, rng, settings, 1)
        s = float(rng.uniform(0.01, 0.05)) * (1.0 if kind == "strained-tensile" else -1.0)
        shear = np.triu(rng.uniform(-0.005, 0.005, size=(3, 3)), k=1)
        _strain(atoms, s * np.eye(3) + shear + shear.T)
        _rattle(atoms, rng, 0.01)
        return atoms, False
    if kind == "vacancy":
        atoms = _supercell(symbol, a0, rng, settings, MIN_ATOMS)
        n_remove = 1 if len(atoms) < 16 else int(rng.integers(1, 3))
        del atoms[[int(k) for k in rng.choice(len(atoms), size=n_remove, replace=False)]]
        _rattle(atoms, rng, float(rng.uniform(0.01, 0.05)))
        return atoms, False
    raise ValueError(f"unknown structure kind {kind!r}")


def _md_start(rng: np.random.Generator, settings: SynthSettings):
    """Starting cell of an MD run: a pure metal or an alloy, slightly strained (±2 %) and rattled."""
    if len(settings.elements) > 1 and rng.random() < 0.5:
        atoms = _alloy(rng, settings)
    else:
        symbol = _pick(rng, settings.elements)
        atoms = _supercell(symbol, emt_lattice_constant(symbol), rng, settings, MIN_ATOMS)
    _strain(atoms, float(rng.uniform(-0.02, 0.02)) * np.eye(3))
    _rattle(atoms, rng, 0.02)
    return atoms


def _labelled(atoms, record_id: str, trajectory: str = "", frame: int | None = None,
              equilibrium: bool | None = False) -> Record:
    """EMT energy (eV), forces (eV/Å) and 3×3 stress (eV/Å³, ASE sign) of ``atoms`` as a record."""
    from ase.calculators.emt import EMT

    if atoms.calc is None:
        atoms.calc = EMT()
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=np.float64)
    stress = np.array(atoms.get_stress(voigt=False), dtype=np.float64)
    return Record(
        id=record_id, numbers=np.array(atoms.numbers, dtype=np.int64),
        positions=np.array(atoms.positions, dtype=np.float64), cell=np.array(atoms.cell.array, dtype=np.float64),
        pbc=np.array(atoms.pbc, dtype=bool), energy=energy, forces=forces, stress=stress,
        source=SOURCE, trajectory=trajectory or record_id, frame=frame, equilibrium=equilibrium,
    )


def _md_frames(rng: np.random.Generator, settings: SynthSettings, seed: int, start: int, count: int) -> Iterator[Record]:
    """Up to ``count`` snapshots of one Velocity Verlet run; record indices from ``start``."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    atoms = _md_start(rng, settings)
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=float(rng.uniform(300.0, 1500.0)), rng=rng)
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=MD_TIMESTEP_FS * units.fs)
    trajectory = f"emt-s{seed}-md-{start:06d}"
    for frame in range(count):
        dynamics.run(MD_STEPS_PER_FRAME)
        yield _labelled(atoms, f"emt-s{seed}-{start + frame:06d}-md", trajectory=trajectory, frame=frame)


def synth_records(n: int, seed: int = 0, elements: Sequence[str] = DEFAULT_ELEMENTS,
                  max_atoms: int = 32) -> Iterator[Record]:
    """Iterator over ``n`` EMT-labelled records (see the module docstring for kinds, units and
    determinism). Arguments are checked at the call, not at the first ``next``."""
    if int(n) < 0:
        raise ValueError(f"number of structures must be >= 0, got {n}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return _generate(int(n), int(seed), SynthSettings.check(elements, max_atoms))


def _generate(n: int, seed: int, settings: SynthSettings) -> Iterator[Record]:
    schedule = [k if (k != "alloy" or len(settings.elements) > 1) else "rattled" for k in SCHEDULE]
    rng = np.random.default_rng(seed)
    index, step = 0, 0
    while index < n:
        kind = schedule[step % len(schedule)]
        step += 1
        if kind == "md":
            count = min(MD_FRAMES, n - index)
            yield from _md_frames(rng, settings, seed, index, count)
            index += count
            continue
        atoms, equilibrium = _single(kind, rng, settings)
        yield _labelled(atoms, f"emt-s{seed}-{index:06d}-{kind}", equilibrium=equilibrium)
        index += 1


def write_synth(out: Path | str, n: int, seed: int = 0, elements: Sequence[str] = DEFAULT_ELEMENTS,
                max_atoms: int = 32, shard_size: int = 50_000, overwrite: bool = False,
                progress: bool = False, command: str = ""):
    """Generate ``n`` records and write them as a shard directory ``out`` through
    :func:`matforge.datasets.convert.convert` (same validation, manifest and index).
    Returns its :class:`~matforge.datasets.convert.ConvertReport`."""
    from matforge.datasets.convert import convert

    records = synth_records(n, seed, elements, max_atoms)  # checks the arguments before anything is created
    return convert([], out, shard_size=shard_size, overwrite=overwrite, progress=progress,
                   command=command, records=records)
