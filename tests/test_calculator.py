"""The ASE calculator: ASE's own finite differences of our energy give our forces and stress (so the
units, the sign and the Voigt order are ASE's), MD conserves energy, a relaxation with a cell filter
lowers the energy, float32 and float64 agree, and a saved backbone loads by path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from matforge.models.calculator import MatforgeCalculator
from matforge.models.heads import EnergyHead, PropertyHead
from matforge.models.model import AtomisticModel
from matforge.models.registry import create

CUTOFF = 4.5
ARCHS = {
    "cgcnn_smooth": dict(hidden=16, num_interactions=2, cutoff=CUTOFF, num_radial=8, avg_neighbors=4.0),
    "painn": dict(hidden=16, num_interactions=2, cutoff=CUTOFF, num_radial=8),
}


def make_model(arch: str, seed: int = 0, **kwargs) -> AtomisticModel:
    torch.manual_seed(seed)
    return AtomisticModel(create(arch, **ARCHS[arch]), {"energy": EnergyHead(16, hidden=16)}, **kwargs)


def rattled_rocksalt(seed: int = 0) -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.05, seed=seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + np.array([[0.01, 0.02, 0], [0.02, -0.01, 0.01], [0, 0.01, 0]])),
                   scale_atoms=True)
    return atoms


@pytest.fixture(params=list(ARCHS))
def arch(request) -> str:
    return request.param


def test_forces_and_stress_equal_ase_numerical_derivatives(arch):
    atoms = rattled_rocksalt()
    atoms.calc = MatforgeCalculator(make_model(arch), dtype="float64")
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.abs(forces).max() > 1e-3 and np.abs(stress).max() > 1e-4
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)
    numeric_f = calculate_numerical_forces(atoms, eps=1e-4)
    numeric_s = calculate_numerical_stress(atoms, eps=1e-5, voigt=True)
    np.testing.assert_allclose(forces, numeric_f, rtol=0, atol=1e-4 * np.abs(numeric_f).max())
    np.testing.assert_allclose(stress, numeric_s, rtol=0, atol=1e-4 * np.abs(numeric_s).max())


def test_velocity_verlet_conserves_energy():
    """40 steps of 1 fs NVE on a landscape made steep (per-atom energy scale 30, forces ~1 eV/Å):
    the potential energy swings by tenths of an eV while the total stays within 0.2% of that
    swing (forces off by 1% would drift ~1%)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = rattled_rocksalt()
    model = make_model("painn")
    model.heads["energy"].set_normalization(30.0, 0.0)
    atoms.calc = MatforgeCalculator(model, dtype="float64")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    total, potential = [], []

    def record() -> None:
        potential.append(atoms.get_potential_energy())
        total.append(potential[-1] + atoms.get_kinetic_energy())

    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(40)
    assert np.ptp(potential) > 0.1
    assert np.ptp(total) < 2e-3 * np.ptp(potential), f"energy drift {np.ptp(total):.2e} eV"


def test_relaxation_with_cell_filter_lowers_the_energy(arch):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = rattled_rocksalt(seed=1)
    atoms.calc = MatforgeCalculator(make_model(arch), dtype="float64")
    e0 = atoms.get_potential_energy()
    f0 = np.abs(FrechetCellFilter(atoms).get_forces()).max()
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=1e-4, steps=15)
    assert atoms.get_potential_energy() < e0
    assert np.abs(FrechetCellFilter(atoms).get_forces()).max() < f0


def test_float32_agrees_with_float64():
    atoms = rattled_rocksalt()
    model = make_model("painn")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for dtype in ("float64", "float32"):
        model.load_state_dict(state)
        calc = MatforgeCalculator(model, dtype=dtype)
        calc.calculate(atoms, ["energy", "forces", "stress"])
        results[dtype] = dict(calc.results)
        assert results[dtype]["forces"].dtype == np.float64
    r64, r32 = results["float64"], results["float32"]
    assert r32["energy"] == pytest.approx(r64["energy"], rel=1e-5)
    np.testing.assert_allclose(r32["forces"], r64["forces"], atol=1e-4 * np.abs(r64["forces"]).max())
    np.testing.assert_allclose(r32["stress"], r64["stress"], atol=1e-4 * np.abs(r64["stress"]).max())


def test_molecule_gives_forces_but_no_stress():
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], pbc=False)
    water.calc = MatforgeCalculator(make_model("painn"), dtype="float64")
    forces = water.get_forces()
    assert forces.shape == (3, 3) and np.isfinite(water.get_potential_energy())
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-12)   # no external field: Σ F = 0
    numeric = calculate_numerical_forces(water, eps=1e-4)
    np.testing.assert_allclose(forces, numeric, atol=1e-4 * np.abs(numeric).max())
    with pytest.raises(PropertyNotImplementedError):
        water.get_stress()


def test_unseen_element_and_missing_energy_head_are_refused():
    calc = MatforgeCalculator(make_model("painn", elements=[11, 17]), dtype="float64")
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"Cu \(Z=29\)"):
        atoms.get_potential_energy()
    no_energy = AtomisticModel(create("painn", **ARCHS["painn"]), {"p": PropertyHead(16, ["gap"])})
    with pytest.raises(ValueError, match="no 'energy' head"):
        MatforgeCalculator(no_energy)
    with pytest.raises(ValueError, match="dtype must be one of"):
        MatforgeCalculator(make_model("painn"), dtype="float16")


def test_loads_a_saved_backbone_by_path(tmp_path):
    model = make_model("cgcnn_smooth")
    model.save(tmp_path / "backbone")
    atoms = rattled_rocksalt()
    direct = MatforgeCalculator(model, dtype="float64")
    by_path = MatforgeCalculator(tmp_path / "backbone", dtype="float64")
    direct.calculate(atoms, ["energy", "forces", "stress"])
    by_path.calculate(atoms, ["energy", "forces", "stress"])
    assert by_path.results["energy"] == pytest.approx(direct.results["energy"], rel=1e-12)
    np.testing.assert_allclose(by_path.results["forces"], direct.results["forces"], atol=1e-12)
    np.testing.assert_allclose(by_path.results["stress"], direct.results["stress"], atol=1e-12)


def test_a_released_backbone_is_found_by_name():
    """A name from `matforge backbones` works as well as a path; an unknown bare name lists the known."""
    with pytest.raises(ValueError, match="no 'energy' head"):   # found: the CGCNN release predicts a property
        MatforgeCalculator("cgcnn-formation-energy")
    with pytest.raises(Exception, match="unknown released backbone 'no-such-backbone'.*cgcnn-band-gap"):
        MatforgeCalculator("no-such-backbone")
