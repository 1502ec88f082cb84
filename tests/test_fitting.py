"""Fitted statistics: least-squares element references recover known per-element energies exactly,
rank deficiency gives the minimum-norm solution, normalisers equal numpy's statistics, and the
fitted dict survives JSON and sets the same buffers on another rank's model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from matforge.datasets.convert import convert
from matforge.datasets.record import Record
from matforge.datasets.shard_dataset import open_dataset
from matforge.models.fitting import (collect_labels, fit_element_references, fit_energy, parse_composition,
                                     sample_indices)
from matforge.models.model import AtomisticModel
from matforge.models.objectives import build_objective
from matforge.models.registry import create

ELEMENTS = [3, 8, 26, 29]
REFS = {3: -1.9, 8: -4.9, 26: -8.3, 29: -3.7}   # eV per atom, the "true" references
GOLD = 79                                      # only in a record without energy


def random_record(rng: np.random.Generator, k: int, refs: dict[int, float] | None, elements: list[int],
                  per_atom_offset: float = 0.0, forces: bool = True, props: dict | None = None) -> Record:
    n = int(rng.integers(2, 9))
    numbers = rng.choice(elements, size=n)
    energy = None if refs is None else float(sum(refs[int(z)] for z in numbers) + n * per_atom_offset)
    return Record(id=f"r{k}", numbers=numbers.astype(np.int64), positions=rng.uniform(0, 8, (n, 3)),
                  cell=8.0 * np.eye(3), pbc=np.ones(3, dtype=bool), energy=energy,
                  forces=rng.normal(0, 0.3, (n, 3)) if forces else None, properties=dict(props or {}),
                  equilibrium=bool(k % 3 == 0))


@pytest.fixture(scope="module")
def exact_records() -> list[Record]:
    """30 structures with E = Σ n_Z ref_Z exactly, random forces; one extra without energy holding gold."""
    rng = np.random.default_rng(0)
    records = [random_record(rng, k, REFS, ELEMENTS) for k in range(30)]
    records.append(random_record(rng, 30, None, [GOLD, 29]))
    return records


@pytest.fixture(scope="module")
def exact_dir(tmp_path_factory, exact_records):
    out = tmp_path_factory.mktemp("fit") / "exact"
    convert([], out, shard_size=8, records=iter(exact_records))
    return out


def new_model(objective, seed: int = 0) -> AtomisticModel:
    torch.manual_seed(seed)
    backbone = create("painn", hidden=8, num_interactions=1, cutoff=4.0)
    return AtomisticModel(backbone, objective.build_heads(backbone))


def test_least_squares_recovers_known_element_energies_from_shards(exact_dir, exact_records):
    dataset = open_dataset(exact_dir)
    objective = build_objective("efs")
    model = new_model(objective)
    fitted = objective.fit(dataset, model)
    assert fitted["records_used"] == 31 and fitted["energy_records"] == 30
    assert fitted["element_refs_rank"] == 4
    assert set(fitted["element_refs"]) == {"3", "8", "26", "29"}
    for z, ref in REFS.items():
        assert fitted["element_refs"][str(z)] == pytest.approx(ref, abs=1e-9)
        assert model.element_refs[z].item() == pytest.approx(ref, rel=1e-6)   # float32 buffer
    # gold occurs in the training data but in no energy record: reference 0, reported
    assert fitted["element_refs_unfitted"] == [GOLD] and model.element_refs[GOLD].item() == 0.0
    assert fitted["elements"] == [3, 8, 26, 29, GOLD] and model.elements == [3, 8, 26, 29, GOLD]
    assert float(model.element_refs.abs().sum()) == pytest.approx(sum(abs(v) for v in REFS.values()), rel=1e-6)
    # noise-free energies: no residual, so the shift is 0; the scale is the RMS of all force components
    all_forces = np.concatenate([r.forces for r in exact_records])
    assert fitted["energy_shift"] == pytest.approx(0.0, abs=1e-9)
    assert fitted["energy_scale_source"] == "forces_rms"
    assert fitted["energy_scale"] == pytest.approx(float(np.sqrt(np.mean(all_forces ** 2))), rel=1e-12)
    head = model.heads["energy"]
    assert head.scale.item() == pytest.approx(fitted["energy_scale"], rel=1e-6)
    assert head.spec()["scale"] == fitted["energy_scale"] and head.spec()["shift"] == fitted["energy_shift"]


def test_elements_come_from_the_view_not_the_whole_directory(exact_dir):
    view = open_dataset(exact_dir).subset(np.arange(30))       # without the gold record
    fitted = build_objective("energy").fit(view, new_model(build_objective("energy")))
    assert fitted["elements"] == ELEMENTS and fitted["element_refs_unfitted"] == []


def test_normalisers_equal_numpy_statistics_with_noisy_energies():
    rng = np.random.default_rng(1)
    records = [random_record(rng, k, REFS, ELEMENTS, per_atom_offset=float(rng.normal(0.05, 0.02)), forces=False)
               for k in range(25)]
    fitted = fit_energy(collect_labels(records))
    # independent solution: the normal equations (full rank here)
    a = np.array([[np.sum(r.numbers == z) for z in ELEMENTS] for r in records], dtype=float)
    e = np.array([r.energy for r in records])
    refs = np.linalg.solve(a.T @ a, a.T @ e)
    np.testing.assert_allclose([fitted["element_refs"][str(z)] for z in ELEMENTS], refs, rtol=1e-9)
    residual = (e - a @ refs) / a.sum(axis=1)
    assert fitted["energy_shift"] == pytest.approx(residual.mean(), rel=1e-9, abs=1e-12)
    assert fitted["energy_scale_source"] == "energy_std"               # no forces in these records
    assert fitted["energy_scale"] == pytest.approx(residual.std(), rel=1e-9)
    assert fitted["energy_scale"] > 1e-3


def test_rank_deficient_compositions_give_the_minimum_norm_solution():
    # only SrTiO3 supercells: Sr, Ti and O counts are proportional (1:1:3) in every structure
    per_formula = -8.0 - 9.5 + 3 * -4.9
    counts = np.array([[k, k, 3 * k] for k in (1, 2, 4, 8)], dtype=float)
    energies = counts[:, 0] * per_formula
    refs, rank = fit_element_references(counts, energies)
    assert rank == 1
    # minimum norm along the single direction (1, 1, 3): refs = c (1, 1, 3) with 11 c = per_formula
    np.testing.assert_allclose(refs, np.array([1.0, 1.0, 3.0]) * per_formula / 11, rtol=1e-12)
    np.testing.assert_allclose(counts @ refs, energies, rtol=1e-12)       # every training energy is exact
    with pytest.raises(ValueError, match=r"need counts \(M, K\) and energies \(M,\)"):
        fit_element_references(counts, energies[:2])


def test_property_normalisers_and_missing_labels():
    rng = np.random.default_rng(2)
    records = []
    for k in range(12):
        props = {"const": 2.5}
        if k % 4:
            props["gap"] = float(rng.uniform(0, 5))
        records.append(random_record(rng, k, REFS, ELEMENTS, props=props))
    objective = build_objective("combined", properties=["gap", "const"])
    model = new_model(objective)
    fitted = objective.fit(records, model)
    gaps = np.array([r.properties["gap"] for r in records if "gap" in r.properties])
    assert fitted["properties"]["gap"] == {"mean": pytest.approx(gaps.mean(), rel=1e-12),
                                           "std": pytest.approx(gaps.std(), rel=1e-12), "count": 9}
    assert fitted["properties"]["const"] == {"mean": 2.5, "std": 1.0, "count": 12}    # no spread -> std 1
    head = model.heads["properties"]
    np.testing.assert_allclose(head.mean.numpy(), [gaps.mean(), 2.5], rtol=1e-6)
    np.testing.assert_allclose(head.std.numpy(), [gaps.std(), 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="property 'bulk_modulus': none of the 12 records sampled"):
        build_objective("combined", properties=["bulk_modulus"]).fit(records, model)


def test_fitted_dict_survives_json_and_sets_the_same_buffers_on_another_rank(exact_records):
    for name, props in (("efs", ()), ("combined", ("gap",))):
        records = [dataclasses.replace(r, properties={"gap": 0.1 * k})
                   for k, r in enumerate(exact_records) if r.energy is not None]
        rank0, rank1 = build_objective(name, properties=props), build_objective(name, properties=props)
        model0, model1 = new_model(rank0, seed=0), new_model(rank1, seed=1)
        fitted = json.loads(json.dumps(rank0.fit(records, model0)))     # the broadcast / card copy
        rank1.apply_fit(model1, fitted)
        buffers0 = {k: v for k, v in model0.state_dict().items() if "mlp" not in k and "backbone" not in k}
        buffers1 = {k: v for k, v in model1.state_dict().items() if "mlp" not in k and "backbone" not in k}
        assert buffers0.keys() == buffers1.keys() and len(buffers0) >= 3
        for key in buffers0:
            torch.testing.assert_close(buffers0[key], buffers1[key], rtol=0, atol=0, msg=key)
        assert model0.elements == model1.elements
        assert {k: h.spec() for k, h in model0.heads.items()} == {k: h.spec() for k, h in model1.heads.items()}


def test_sampling_is_a_deterministic_subset():
    np.testing.assert_array_equal(sample_indices(5, 10), np.arange(5))
    picked = sample_indices(1000, 50, seed=3)
    assert picked.shape == (50,) and np.all(np.diff(picked) > 0) and picked.max() < 1000
    np.testing.assert_array_equal(picked, sample_indices(1000, 50, seed=3))
    assert not np.array_equal(picked, sample_indices(1000, 50, seed=4))
    with pytest.raises(ValueError, match="max_records must be >= 1"):
        sample_indices(5, 0)


def test_fit_reads_at_most_max_records(exact_dir):
    objective = build_objective("energy", seed=5)
    fitted = objective.fit(open_dataset(exact_dir), new_model(objective), max_records=10)
    assert fitted["records_used"] == 10
    again = build_objective("energy", seed=5).fit(open_dataset(exact_dir), new_model(objective), max_records=10)
    assert again == fitted


def test_fits_refuse_data_without_the_labels_they_need():
    rng = np.random.default_rng(3)
    unlabelled = [random_record(rng, k, None, ELEMENTS, forces=False) for k in range(4)]
    with pytest.raises(ValueError, match="objective 'energy': none of the 4 records sampled .* has an energy label"):
        build_objective("energy").fit(unlabelled, new_model(build_objective("energy")))
    off_equilibrium = [r for r in unlabelled if not r.equilibrium]
    objective = build_objective("denoise_derivative")
    with pytest.raises(ValueError, match="none of the 2 records sampled from a list of 2 records is flagged relaxed"):
        objective.fit(off_equilibrium, new_model(objective))
    one_relaxed = [random_record(rng, k, None, ELEMENTS, forces=False) for k in range(150)]
    for k, record in enumerate(one_relaxed):
        record.equilibrium = k == 0
    with pytest.raises(ValueError, match="only 1 of the 150 records sampled .* are flagged relaxed .* "
                                         "denoise.equilibrium_only=false"):
        objective.fit(one_relaxed, new_model(objective))
    fitted = build_objective("denoise_derivative", equilibrium_only=False).fit(off_equilibrium, new_model(objective))
    assert fitted["element_refs"] == {} and fitted["energy_scale"] == 1.0 and fitted["energy_shift"] == 0.0
    with pytest.raises(ValueError, match="empty dataset"):
        collect_labels([])


def test_parse_composition():
    assert parse_composition("8:3-22:1-38:1") == {8: 3, 22: 1, 38: 1}
    with pytest.raises(ValueError, match="malformed composition 'Sr:1'"):
        parse_composition("Sr:1")
