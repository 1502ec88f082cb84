"""Unit and sign conventions, and the conversions every reader applies on the way in.

matforge stores (see DESIGN.md):

* lengths in Å, total cell energy in eV, forces in eV/Å;
* stress as a full 3×3 tensor in eV/Å³ with ASE's sign, ``σ = (1/V) ∂E/∂ε``: tensile positive,
  so a compressed cell that pushes outwards has *negative* stress.

VASP (and hence MPtrj and mlearn) prints stress in kBar with the opposite sign (positive =
compressive). With 1 kBar = 0.1 GPa and 1 eV/Å³ = 160.21766208 GPa::

    σ_ase [eV/Å³] = -0.1 · σ_vasp [kBar] / 160.21766208

Voigt orders differ between codes; ``voigt_to_matrix`` takes the order explicitly. ASE's order is
(xx, yy, zz, yz, xz, xy); VASP's OUTCAR and mlearn's ``virial_stress`` use (xx, yy, zz, xy, yz, xz).
"""

from __future__ import annotations

import numpy as np

EV_PER_A3_IN_GPA = 160.21766208
"""1 eV/Å³ expressed in GPa."""

KBAR_IN_GPA = 0.1

VOIGT_ASE = ("xx", "yy", "zz", "yz", "xz", "xy")
VOIGT_VASP = ("xx", "yy", "zz", "xy", "yz", "xz")

_AXIS = {"x": 0, "y": 1, "z": 2}

VASP_KBAR_TO_ASE = (
    "stress: VASP kBar (compressive positive) -> eV/A^3, ASE sign (tensile positive): "
    "s_ase = -0.1 * s_kbar / 160.21766208"
)


def voigt_to_matrix(values: np.ndarray | list[float], order: tuple[str, ...] = VOIGT_ASE) -> np.ndarray:
    """Return the symmetric 3×3 matrix of six Voigt components given in ``order``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.shape != (6,):
        raise ValueError(f"expected 6 Voigt components, got shape {np.shape(values)}")
    m = np.zeros((3, 3), dtype=np.float64)
    for value, comp in zip(v, order):
        i, j = _AXIS[comp[0]], _AXIS[comp[1]]
        m[i, j] = m[j, i] = value
    return m


def matrix_to_voigt(m: np.ndarray, order: tuple[str, ...] = VOIGT_ASE) -> np.ndarray:
    """Return the six Voigt components of a 3×3 matrix in ``order`` (ASE order by default)."""
    m = np.asarray(m, dtype=np.float64).reshape(3, 3)
    return np.array([m[_AXIS[c[0]], _AXIS[c[1]]] for c in order])


def kbar_vasp_to_ase(stress_kbar: np.ndarray) -> np.ndarray:
    """Convert a VASP-sign stress in kBar (any shape) to ASE sign in eV/Å³."""
    return -KBAR_IN_GPA * np.asarray(stress_kbar, dtype=np.float64) / EV_PER_A3_IN_GPA


def gpa_to_ev_per_a3(stress_gpa: np.ndarray) -> np.ndarray:
    """Convert GPa to eV/Å³ without changing the sign."""
    return np.asarray(stress_gpa, dtype=np.float64) / EV_PER_A3_IN_GPA
