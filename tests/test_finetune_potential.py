"""Fine-tuning a potential (``--target efs`` / ``energy_forces``) on new DFT-like labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from matforge.finetune.api import finetune

PAINN = {"hidden": 8, "num_interactions": 1, "cutoff": 4.0, "num_radial": 8}
FAST = {"epochs": 3, "batch_size": 8, "progress": False, "tensorboard": False, "warmup_epochs": 1,
        "split": "0.6,0.2,0.2"}
# the parent saw its training split's elements only; an element only in its val/test side is new here
CHILD = {**FAST, "allow_new_elements": True}


@pytest.fixture(scope="module")
def parent(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pot") / "parent"
    finetune("none", synth_dir, "efs", out, arch="painn", hyperparameters=PAINN, **FAST)
    return out


def _shifted_copy(synth_dir: Path, out: Path, shift: dict[int, float]) -> Path:
    """The synth records with every energy moved by Σ_i shift[Z_i] (a new DFT energy zero)."""
    from matforge.datasets.convert import convert
    from matforge.datasets.shard_dataset import open_dataset

    ds = open_dataset(synth_dir)
    records = []
    for i in range(len(ds)):
        r = ds[i]
        if r.energy is not None:
            r.energy = float(r.energy + sum(shift.get(int(z), 0.0) for z in r.numbers))
        records.append(r)
    convert([], out, records=records)
    return out


def test_efs_run_gives_a_potential_and_a_calculator(parent: Path, synth_dir: Path) -> None:
    from matforge.models import MatforgeCalculator, load

    model = load(parent)
    assert sorted(model.heads) == ["energy"]
    metrics = json.loads((parent / "metrics.json").read_text())
    for key in ("test_energy_per_atom_mae", "test_forces_mae", "test_stress_mae", "test_mae"):
        assert np.isfinite(metrics[key]), key
    from matforge.datasets.shard_dataset import open_dataset

    atoms = open_dataset(synth_dir)[0].to_ase()
    atoms.calc = MatforgeCalculator(str(parent))
    forces = atoms.get_forces()
    assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
    assert np.isfinite(atoms.get_potential_energy())


def test_reference_energies_are_refitted_before_the_first_step(parent: Path, synth_dir: Path, tmp_path: Path) -> None:
    """A new energy zero per element is absorbed by the refit: with no training at all (lr ~ 0),
    the energy error on the shifted data equals the error on the original data."""
    from matforge.models import load

    from matforge.datasets.shard_dataset import open_dataset

    elements = open_dataset(synth_dir).manifest.elements
    shift = {int(z): float(s) for z, s in zip(elements, np.linspace(-3.0, 2.0, len(elements)))}
    shifted = _shifted_copy(synth_dir, tmp_path / "shifted", shift)
    frozen = dict(CHILD, epochs=1, lr=1e-12, warmup_epochs=0)
    base = finetune(str(parent), synth_dir, "efs", tmp_path / "a", **frozen)
    moved = finetune(str(parent), shifted, "efs", tmp_path / "b", **frozen)
    assert moved["test_energy_per_atom_mae"] == pytest.approx(base["test_energy_per_atom_mae"], rel=1e-3, abs=1e-5)
    refs_a = torch.tensor(json.loads((tmp_path / "a" / "card.json").read_text())["element_refs"])
    refs_b = torch.tensor(json.loads((tmp_path / "b" / "card.json").read_text())["element_refs"])
    for z, s in shift.items():
        if refs_a[z] != 0:
            assert float(refs_b[z] - refs_a[z]) == pytest.approx(s, abs=1e-3)


def test_pretrained_energy_head_is_kept_and_forces_trained(parent: Path, synth_dir: Path, tmp_path: Path) -> None:
    from matforge.models import load

    m = finetune(str(parent), synth_dir, "energy_forces", tmp_path / "c", strategy="freeze:0", **CHILD)
    assert m["dropped_heads"] == [] and "test_forces_mae" in m and "test_stress_mae" not in m
    before, after = load(parent), load(tmp_path / "c")
    known = torch.tensor(before.elements)  # frozen rows; an element new to the parent got a fresh, trained row
    assert torch.equal(before.backbone.embedding.weight[known], after.backbone.embedding.weight[known])
    assert not torch.equal(before.backbone.blocks[0].message.filter.weight,
                           after.backbone.blocks[0].message.filter.weight)


def test_efs_without_stress_labels_is_refused(parent: Path, tmp_path: Path) -> None:
    from matforge.datasets.convert import convert
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.finetune.errors import FinetuneError

    src = open_dataset(Path(json.loads((parent / "card.json").read_text())["provenance"]["data"]["directory"]))
    records = []
    for i in range(len(src)):
        r = src[i]
        r.stress = None
        records.append(r)
    convert([], tmp_path / "nostress", records=records)
    with pytest.raises(FinetuneError, match="no training record has a stress"):
        finetune(str(parent), tmp_path / "nostress", "efs", None, **CHILD)
