"""Forces and stress of ``AtomisticModel`` against finite differences, and the model's other physics
(issue 3); the symmetries are in ``test_model_symmetry.py``, the structures and helpers in
``efs_physics.py``.

Every check runs in float64 on real structures (mlearn Mo frames, perov5 cells; see
``tests/fixtures/physics/README.md``) and on derived cells: a left-handed cell, a 1-atom cell, a
3×3×3 supercell, an isolated atom. Models are untrained but seeded, with their linear weights scaled
up so the energy is a strongly non-linear function of the geometry (the checks assert that forces
and stresses are far from zero, so they are not vacuous).

Finite differences re-run the neighbour list (vesin) at every displaced geometry. That is the
energy function an optimiser or MD integrator actually sees. Re-using the unperturbed edge list
would instead differentiate a fixed graph (pairs that leave the sphere would keep contributing
and pairs that enter would be missed), i.e. test autograd against itself, and would hide any jump
of the energy when a pair crosses the cutoff. With a smooth envelope (value and slope zero at
r_c) the two agree to O(h³) even when a pair sits at the cutoff; ``test_pair_crossing_the_cutoff``
puts one exactly there.

To add a backbone (e.g. ``cgcnn_attention`` once it has a smooth variant), add its small
hyper-parameters to ``efs_physics.ARCHS``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from efs_physics import (ARCHS, PEROV5, STRUCTURES, assert_close_relative, deform, efs, energy, fd_forces, fd_stress,
                         graph_batch, make_model, make_record, supercell)

from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.record import Record
from matforge.models.model import AtomisticModel
from matforge.models.registry import create

@pytest.fixture(scope="module", params=list(ARCHS))
def model(request) -> AtomisticModel:
    return make_model(request.param)


# ----------------------------------------------------------------------------------------------
# derivatives against finite differences


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_forces_and_stress_match_finite_differences(model, name):
    record = STRUCTURES[name]
    _, forces, stress = efs(model, record)
    rng = np.random.default_rng(0)
    n = record.natoms
    if n <= 6:
        components = [(i, k) for i in range(n) for k in range(3)]
    else:
        components = [(int(i), int(k)) for i, k in zip(rng.choice(n, 6, replace=False), rng.integers(0, 3, 6))]
    analytic = np.array([forces[i, k] for i, k in components])
    if n > 1:
        assert np.abs(forces).max() > 0.02, "forces are ~0: the test would be vacuous"
        assert_close_relative(analytic, fd_forces(model, record, components), f"{name} forces")
    else:  # one atom per cell: every atom is an inversion centre, the force vanishes exactly
        np.testing.assert_allclose(forces, 0.0, atol=1e-12)
    assert np.abs(stress).max() > 1e-3, "stress is ~0: the test would be vacuous"
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    assert_close_relative(stress, fd_stress(model, record), f"{name} stress")


def test_large_supercell_derivatives_and_extensivity(model):
    """3×3×3 perov5 supercell (135 atoms): E = 27 E_cell, forces tile, stress equal, and a few
    force components and the full stress against finite differences."""
    cell = STRUCTURES["perov5-CuCdN3-rattled"]
    big = supercell(cell, (3, 3, 3))
    e1, f1, s1 = efs(model, cell)
    e27, f27, s27 = efs(model, big)
    assert e27 == pytest.approx(27 * e1, rel=1e-12)
    np.testing.assert_allclose(f27, np.tile(f1, (27, 1)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s27, s1, rtol=1e-9, atol=1e-13)
    components = [(7, 0), (64, 1), (133, 2)]
    assert_close_relative(np.array([f27[i, k] for i, k in components]), fd_forces(model, big, components),
                          "supercell forces")
    assert_close_relative(s27, fd_stress(model, big), "supercell stress")


# ----------------------------------------------------------------------------------------------
# signs, isolated atoms, batching, element references, training graph


def test_stress_sign_follows_ase_convention(model):
    """ASE: σ = (1/V) ∂E/∂ε, tensile positive. So if tr σ > 0 the energy falls when the cell
    shrinks, and if tr σ < 0 it falls when the cell grows. Checked on a perov5 cell stretched by
    +4% and compressed by -4% (the random model's energy decides which sign each one has)."""
    base = PEROV5[0]
    for s in (0.04, -0.04):
        cell = deform(base, s * np.eye(3))
        _, _, stress = efs(model, cell)
        trace = float(np.trace(stress))
        assert abs(trace) > 1e-3
        step = 1e-3 * np.sign(trace)
        e0 = energy(model, cell)
        assert energy(model, deform(cell, -step * np.eye(3))) < e0 < energy(model, deform(cell, step * np.eye(3)))


def test_isolated_atom_has_finite_energy_and_zero_force(model):
    lonely = make_record("Mo-in-a-box", [42], [[1.0, 2.0, 3.0]], 20.0 * np.eye(3))
    batch = graph_batch([lonely], model)
    assert batch.edge_index.shape[1] == 0 and bool(batch.isolated[0])
    out = model(batch, forces=True, stress=True)
    assert torch.isfinite(out["energy"]).all()
    assert out["forces"].abs().max() == 0.0
    assert out["stress"].abs().max() == 0.0
    # next to a real structure in one batch, it changes nothing of the other graph
    other = STRUCTURES["perov5-CuCdN3-rattled"]
    e, f, s = efs(model, other)
    joint = model(graph_batch([other, lonely], model), forces=True, stress=True)
    assert float(joint["energy"].detach()[0]) == pytest.approx(e, rel=1e-12)
    assert float(joint["energy"].detach()[1]) == pytest.approx(float(out["energy"].detach()[0]), rel=1e-12)
    np.testing.assert_allclose(joint["forces"][: other.natoms].detach().numpy(), f, atol=1e-12)
    assert joint["forces"][other.natoms:].abs().max() == 0.0
    np.testing.assert_allclose(joint["stress"][0].detach().numpy(), s, atol=1e-14)


def test_pair_crossing_the_cutoff_is_smooth(model):
    """A Mo dimer in a large box, separated through the cutoff r_c. The envelope has u = u' = u'' = 0
    at r_c, so the pair's energy vanishes like (r_c - r)³ and its force like (r_c - r)²: shrinking
    the gap 10× must shrink them ~1000× and ~100×; beyond r_c there is no interaction at all."""
    box = 30.0 * np.eye(3)
    rc = model.cutoff

    def dimer(r: float) -> Record:
        return make_record("dimer", [42, 42], [[5.0, 5.0, 5.0], [5.0 + r, 5.0, 5.0]], box)

    e_free, f_free, _ = efs(model, dimer(rc + 1e-3))
    assert np.abs(f_free).max() == 0.0
    e_mid, f_mid, _ = efs(model, dimer(0.8 * rc))
    assert abs(e_mid - e_free) > 1e-3 and np.abs(f_mid).max() > 1e-3  # the pair does interact
    gaps = (1e-2, 1e-3)
    de, df = [], []
    for h in gaps:
        e, f, _ = efs(model, dimer(rc - h))
        de.append(abs(e - e_free))
        df.append(np.abs(f).max())
    assert de[0] > 0 and df[0] > 0
    assert np.log10(de[0] / de[1]) == pytest.approx(3.0, abs=0.1)
    assert np.log10(df[0] / df[1]) == pytest.approx(2.0, abs=0.1)


def test_batch_equals_single_graphs(model):
    """Stress and forces are per graph: a batch of different cells gives each graph's own values."""
    names = ["mlearn-Mo-surface-6", "perov5-VIrO3-left-handed", "Mo-1-atom", "mlearn-Mo-bcc-2-rattled"]
    records = [STRUCTURES[n] for n in names]
    out = model(graph_batch(records, model), forces=True, stress=True)
    start = 0
    for k, record in enumerate(records):
        e, f, s = efs(model, record)
        assert float(out["energy"].detach()[k]) == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(out["forces"][start:start + record.natoms].detach().numpy(), f, atol=1e-12)
        np.testing.assert_allclose(out["stress"][k].detach().numpy(), s, atol=1e-14)
        start += record.natoms
    # an unbatched Data (no ``batch`` vector) is one graph
    single = GraphBuilder(cutoff=model.cutoff, max_neighbors=model.max_neighbors, dtype="float64")(records[1])
    out1 = model(single, forces=True, stress=True)
    e, f, s = efs(model, records[1])
    assert float(out1["energy"].detach()[0]) == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose(out1["stress"][0].detach().numpy(), s, atol=1e-14)


def test_element_reference_energies_add_per_atom(model):
    record = STRUCTURES["perov5-CuCdN3-rattled"]
    refs = torch.zeros(101, dtype=torch.float64)
    refs[29], refs[48], refs[7] = -1.5, -0.25, -3.0   # Cu, Cd, N
    with_refs = AtomisticModel(model.backbone, {"energy": model.heads["energy"]}, element_refs=refs).double()
    e, f, s = efs(model, record)
    e_r, f_r, s_r = efs(with_refs, record)
    expected = sum({29: -1.5, 48: -0.25, 7: -3.0}[int(z)] for z in record.numbers)
    assert e_r - e == pytest.approx(expected, abs=1e-12)
    np.testing.assert_array_equal(f_r, f)
    np.testing.assert_array_equal(s_r, s)


def test_training_graph_gives_correct_parameter_gradients(model):
    """create_graph=True: d/dθ Σ F² by double backward equals the finite difference in θ."""
    record = STRUCTURES["mlearn-Mo-surface-6"]
    batch = graph_batch([record], model)
    out = model(batch, forces=True, stress=True, create_graph=True)
    assert out["forces"].requires_grad and out["stress"].requires_grad
    param = next(p for p in model.backbone.blocks[0].parameters() if p.dim() == 2)
    model.zero_grad()
    (out["forces"].pow(2).sum() + out["stress"].pow(2).sum()).backward()
    grad = param.grad.detach().clone()
    index = tuple(int(v) for v in torch.nonzero(grad.abs() == grad.abs().max())[0])
    h = 1e-6
    losses = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            param[index] += sign * h
        o = model(batch, forces=True, stress=True)
        losses.append(float(o["forces"].pow(2).sum() + o["stress"].pow(2).sum()))
        with torch.no_grad():
            param[index] -= sign * h
    model.zero_grad()
    assert grad[index].abs() > 1e-6
    assert float(grad[index]) == pytest.approx((losses[0] - losses[1]) / (2 * h), rel=1e-5)


def test_inference_outputs_are_detached_and_need_an_energy_head(model):
    batch = graph_batch([STRUCTURES["Mo-1-atom"]], model)
    with torch.no_grad():
        out = model(batch, forces=True, stress=True)
    assert not out["energy"].requires_grad and not out["forces"].requires_grad
    assert not batch.pos.requires_grad
    no_energy = AtomisticModel(model.backbone, {})
    with pytest.raises(ValueError, match="'energy' head"):
        no_energy(batch, forces=True)


def test_check_elements_names_unseen_elements():
    model = AtomisticModel(create("painn", **ARCHS["painn"]), {}, elements=[42, 8])
    model.check_elements(torch.tensor([42, 8, 42]))
    with pytest.raises(ValueError, match=r"element\(s\) N \(Z=7\), Cu \(Z=29\);"):
        model.check_elements(torch.tensor([42, 29, 7]))
    AtomisticModel(create("painn", **ARCHS["painn"]), {}).check_elements(torch.tensor([1, 100]))


def test_strain_leaf_for_callers_and_zero_stress_without_a_cell(model):
    """strain=True hands back the strain leaf: differentiating the energy by it gives V·σ. A
    non-periodic graph (zero cell) has no volume: its stress is returned as zeros, forces as usual."""
    record = STRUCTURES["perov5-CuCdN3-rattled"]
    out = model(graph_batch([record], model), strain=True)
    (grad,) = torch.autograd.grad(out["energy"].sum(), out["strain"])
    _, _, stress = efs(model, record)
    np.testing.assert_allclose(grad[0].numpy() / abs(np.linalg.det(record.cell)), stress, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="strain=False contradicts stress=True"):
        model(graph_batch([record], model), stress=True, strain=False)
    molecule = make_record("Mo3", [42, 42, 42], [[0, 0, 0], [2.6, 0, 0], [1.2, 2.1, 0.3]], np.zeros((3, 3)),
                       pbc=(False, False, False))
    out = model(graph_batch([molecule], model), forces=True, stress=True)
    assert out["stress"].abs().max() == 0.0
    assert out["forces"].abs().max() > 1e-3
    torch.testing.assert_close(out["forces"].sum(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
