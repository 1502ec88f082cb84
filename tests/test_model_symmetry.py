"""Symmetries of ``AtomisticModel``'s energy, forces and stress (issue 3): rotations (covariant
forces and stress), reflections, translations, permutations, the same crystal in a left-handed cell,
and extensivity over supercells; on the real and derived structures of ``efs_physics.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from efs_physics import (ARCHS, PEROV5, STRUCTURES, efs, left_handed, make_model, make_record, random_rotation,
                         rattle, supercell)

from matforge.models.model import AtomisticModel

@pytest.fixture(scope="module", params=list(ARCHS))
def model(request) -> AtomisticModel:
    return make_model(request.param)


# ----------------------------------------------------------------------------------------------
# symmetries


@pytest.mark.parametrize("name", ["mlearn-Mo-AIMD-54", "perov5-VIrO3-left-handed", "Mo-1-atom"])
def test_rotation_invariance_and_covariance(model, name):
    record = STRUCTURES[name]
    rot = random_rotation(seed=7)
    rotated = make_record(record.id, record.numbers, record.positions @ rot.T, record.cell @ rot.T)
    e, f, s = efs(model, record)
    e_r, f_r, s_r = efs(model, rotated)
    assert e_r == pytest.approx(e, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(f_r, f @ rot.T, atol=1e-10)
    np.testing.assert_allclose(s_r, rot @ s @ rot.T, atol=1e-12)


def test_reflection_invariance(model):
    """Both backbones are O(3)-invariant: the mirror image has the same energy, mirrored forces."""
    record = STRUCTURES["mlearn-Mo-AIMD-54"]
    mirror = np.diag([1.0, -1.0, 1.0])
    mirrored = make_record(record.id, record.numbers, record.positions @ mirror, record.cell @ mirror)
    e, f, s = efs(model, record)
    e_m, f_m, s_m = efs(model, mirrored)
    assert e_m == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(f_m, f @ mirror, atol=1e-10)
    np.testing.assert_allclose(s_m, mirror @ s @ mirror, atol=1e-12)


def test_translation_and_permutation_invariance(model):
    record = STRUCTURES["mlearn-Mo-AIMD-54"]
    rng = np.random.default_rng(3)
    e, f, s = efs(model, record)
    shifted = make_record(record.id, record.numbers, record.positions + np.array([1.3, -7.1, 0.4]), record.cell)
    e_t, f_t, s_t = efs(model, shifted)
    assert e_t == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(f_t, f, atol=1e-10)
    np.testing.assert_allclose(s_t, s, atol=1e-12)
    perm = rng.permutation(record.natoms)
    permuted = make_record(record.id, record.numbers[perm], record.positions[perm], record.cell)
    e_p, f_p, s_p = efs(model, permuted)
    assert e_p == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(f_p, f[perm], atol=1e-10)
    np.testing.assert_allclose(s_p, s, atol=1e-12)


def test_left_handed_cell_is_the_same_crystal(model):
    """Lattice vectors (b, a, c) describe the crystal of (a, b, c): same E, F and stress (|det|)."""
    right = rattle(PEROV5[1], 0.05, seed=3)
    left = left_handed(right)
    assert np.linalg.det(left.cell) < 0 < np.linalg.det(right.cell)
    e_r, f_r, s_r = efs(model, right)
    e_l, f_l, s_l = efs(model, left)
    assert e_l == pytest.approx(e_r, rel=1e-12)
    np.testing.assert_allclose(f_l, f_r, atol=1e-10)
    np.testing.assert_allclose(s_l, s_r, atol=1e-12)


@pytest.mark.parametrize("name", ["mlearn-Mo-surface-6", "perov5-CuCdN3-rattled", "Mo-1-atom"])
def test_supercell_is_extensive(model, name):
    record = STRUCTURES[name]
    e, f, s = efs(model, record)
    e8, f8, s8 = efs(model, supercell(record, (2, 2, 2)))
    assert e8 == pytest.approx(8 * e, rel=1e-12)
    np.testing.assert_allclose(f8, np.tile(f, (8, 1)), atol=1e-10)
    np.testing.assert_allclose(s8, s, atol=1e-12)
