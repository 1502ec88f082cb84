"""Gaussian position noise for denoising pre-training, applied to a record *before* its graph is built.

The noise has to act on the record, not inside the model: the neighbour list depends on the
positions, so a noised structure gets the edges of its noised geometry (atoms pushed inside or
outside the cutoff gain or lose neighbours), exactly as a real distorted structure would.

For a record with N atoms at positions ``r0`` (Å)::

    ξ_i ~ N(0, σ² I₃)  independently                      (i = 1..N)
    η_i = ξ_i - (1/N) Σ_k ξ_k                              (centred, ``center=True``)
    r_i = r0_i + η_i                                       (noised positions, Å)

Centring removes the rigid translation of the whole structure, which changes nothing (periodic or
not, the energy and every equivariant prediction are translation invariant), so η is exactly the
part of the displacement a model can see; a force field's forces sum to zero over the atoms and so
does η. Per component, Var(η) = σ²(1 - 1/N). A one-atom structure therefore gets η = 0.

Which records are noised: with ``equilibrium_only=True`` only records flagged relaxed
(``record.equilibrium is True``); off-equilibrium and unknown ones pass through unchanged with
``noise_mask`` all False. A noised record's energy, forces and stress belong to the un-noised
geometry, so they are dropped (``keep_labels=False``, the default) rather than left wrong; named
properties are kept.

Determinism: the draws come from ``np.random.default_rng([seed, epoch, index])``, so a given
record (``index`` in its dataset view) in a given epoch always gets the same noise, whichever
loader worker, rank or resumed run builds it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from matforge.datasets.record import Record


class PositionNoise:
    """Record transform ``(record, index, epoch) -> (noised record, extras)``; see the module docstring.

    std: σ in Å (> 0). seed: non-negative int. equilibrium_only: noise only relaxed records.
    center: remove the mean displacement of each structure (see the module docstring).
    keep_labels: keep energy/forces/stress on noised records (they describe the un-noised geometry).

    ``extras`` are ``{"noise": (N, 3) float64 Å, "noise_mask": (N,) bool}``: the displacement added
    to each atom and whether the atom was noised (all or none of a structure's atoms). The input
    record is never modified. Holds only plain attributes, so it pickles into loader workers.
    """

    def __init__(self, std: float, seed: int, equilibrium_only: bool = True, center: bool = True,
                 keep_labels: bool = False) -> None:
        std = float(std)
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"noise std must be a positive number of Å, got {std}")
        if int(seed) != seed or int(seed) < 0:
            raise ValueError(f"noise seed must be a non-negative integer, got {seed!r}")
        self.std = std
        self.seed = int(seed)
        self.equilibrium_only = bool(equilibrium_only)
        self.center = bool(center)
        self.keep_labels = bool(keep_labels)

    def applies_to(self, record: Record) -> bool:
        """Whether ``record`` gets noise (always, or only relaxed records)."""
        return (not self.equilibrium_only) or record.equilibrium is True

    def displacement(self, natoms: int, index: int, epoch: int) -> np.ndarray:
        """η (natoms, 3) in Å for record ``index`` in ``epoch`` (see the module docstring)."""
        if int(index) < 0 or int(epoch) < 0:
            raise ValueError(f"PositionNoise needs the record's non-negative index and epoch, got index={index}, "
                             f"epoch={epoch}")
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        eta = rng.standard_normal((natoms, 3)) * self.std
        if self.center:
            eta -= eta.mean(axis=0, keepdims=True)
        return eta

    def __call__(self, record: Record, index: int, epoch: int) -> tuple[Record, dict[str, np.ndarray]]:
        n = record.natoms
        if not self.applies_to(record):
            extras = {"noise": np.zeros((n, 3), dtype=np.float64), "noise_mask": np.zeros(n, dtype=bool)}
            return dataclasses.replace(record, properties=dict(record.properties)), extras
        eta = self.displacement(n, index, epoch)
        changes: dict = {"positions": np.asarray(record.positions, dtype=np.float64) + eta,
                         "properties": dict(record.properties)}
        if not self.keep_labels:
            changes.update(energy=None, forces=None, stress=None)
        extras = {"noise": eta, "noise_mask": np.ones(n, dtype=bool)}
        return dataclasses.replace(record, **changes), extras

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PositionNoise) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.std, self.seed, self.equilibrium_only, self.center, self.keep_labels))

    def __repr__(self) -> str:
        return (f"PositionNoise(std={self.std}, seed={self.seed}, equilibrium_only={self.equilibrium_only}, "
                f"center={self.center}, keep_labels={self.keep_labels})")
