"""The released backbone ``matforge-efs-small`` (finetune/backbones/matforge-efs-small, written by
finetune/backbones/make_efs_small.py from a ``matforge bench science`` run): listed, described by its
card, an ASE calculator whose forces and stress are derivatives of its energy, and a starting point for
fine-tuning on a fresh install (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from finetune_data import write_property_set
from matforge.cli.main import main
from matforge.finetune.api import finetune
from matforge.finetune.registry import describe, released_path
from matforge.models.calculator import MatforgeCalculator

NAME = "matforge-efs-small"


def test_listed_with_its_card(capsys: pytest.CaptureFixture) -> None:
    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    info = rows[NAME]
    assert info == describe(NAME) and info["architecture"] == "painn"
    provenance = json.loads((released_path(NAME) / "card.json").read_text())["provenance"]
    assert provenance["objective"] == "efs" and provenance["steps"] >= 1000
    assert provenance["corpus"]["labels_source"]["model"] == "CHGNet"
    assert "Modified BSD" in provenance["licence"] and "CHGNet" in provenance["trained_on"]
    assert provenance["leakage"]["corpus_records_matching_downstream"] == 0
    assert provenance["leakage"]["records_dropped_before_training"] >= 0
    assert provenance["corpus"]["commands"][0].startswith("matforge data synth --calculator chgnet")
    assert {"val/forces_mae", "val/stress_mae", "val/energy_per_atom_mae"} <= set(provenance["validation"])
    assert provenance["good_for"] and provenance["not_for"]
    downstream = provenance["downstream"]   # the science run's table: every task, against scratch
    assert {r["task"] for r in downstream} == {"matbench_jdft2d", "2d_workfunction", "perov5_heat_all"}
    assert all(r["seeds"] == 3 and np.isfinite([r["mae"], r["scratch_mae"], r["change_percent"]]).all()
               for r in downstream)
    assert (released_path(NAME) / "model.safetensors").stat().st_size < 2_000_000   # a few hundred kB


def test_ase_calculator_forces_and_stress_are_derivatives() -> None:
    atoms = bulk("NaCl", "rocksalt", a=5.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell.array @ np.diag([1.01, 0.99, 1.0]), scale_atoms=True)
    atoms.calc = MatforgeCalculator(NAME, dtype="float64")
    energy = atoms.get_potential_energy()
    assert np.isfinite(energy)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-5)
    assert np.allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=1e-6)
    assert np.abs(forces.sum(axis=0)).max() < 1e-9   # no net force on a periodic cell


def test_fine_tunes_on_a_small_property_set(tmp_path: Path) -> None:
    props = write_property_set(tmp_path / "props", n=40)
    metrics = finetune(NAME, props, "vpa", tmp_path / "out", units="Å³/atom", strategy="freeze:1", epochs=3,
                       batch_size=16, progress=False, tensorboard=False, warmup_epochs=1)
    assert np.isfinite(metrics["test_mae"]) and metrics["trainable_parameters"] < metrics["total_parameters"]
