"""Pre-training in Ray Train's local mode (no Ray cluster): every objective end to end, exact resume.

These run the real worker loop (`matforge.pretrain.worker.train_loop_per_worker`) in-process with
tiny models, so they are fast; the multi-worker paths are in test_pretrain_ray.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from matforge.datasets.convert import convert
from matforge.datasets.splits import write_splits
from matforge.datasets.synth import synth_records, write_synth
from matforge.pretrain.config import load_config
from matforge.pretrain.launcher import run_pretrain
from matforge.pretrain.audit import BATCH_LOG_ENV, FAULT_ENV

TINY_PAINN = ["model.name=painn", "model.hyperparameters={hidden: 8, num_interactions: 1, cutoff: 4.0}"]


@pytest.fixture(scope="module")
def emt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emt") / "emt"
    write_synth(out, 48, seed=3, max_atoms=16)
    write_splits(out, [0.75, 0.25], names=["train", "val"], group="trajectory", seed=0)
    return out


@pytest.fixture(scope="module")
def property_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EMT structures with two named properties (one missing on every third record)."""
    records = []
    for k, record in enumerate(synth_records(36, seed=5, max_atoms=16)):
        record.properties = {"volume_per_atom": abs(np.linalg.det(record.cell)) / record.natoms}
        if k % 3:
            record.properties["mean_z"] = float(np.mean(record.numbers))
        records.append(record)
    out = tmp_path_factory.mktemp("props") / "props"
    convert([], out, records=records)
    write_splits(out, [0.75, 0.25], names=["train", "val"], group="none", seed=0)
    return out


def _config(data: Path, run: Path, name: str, *extra: str, model: list[str] = TINY_PAINN):
    return load_config("quickstart", [
        f"data.train={data}", f"data.val={data}", "data.synth.structures=0", "data.max_atoms=64",
        "data.loader_workers=0", "scaling.num_workers=0", f"run.storage_path={run}", f"run.name={name}",
        "train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=3", "train.log_every=3",
        "optim.warmup_steps=2", *model, *extra,
    ])


def _scalars(tb_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.parametrize("objective, extra, metrics", [
    ("efs", [], ["energy_per_atom_mae", "forces_mae", "stress_mae"]),
    ("energy_forces", [], ["energy_per_atom_mae", "forces_mae"]),
    ("energy", [], ["energy_per_atom_mae"]),
    ("denoise_derivative", ["denoise.equilibrium_only=false"], ["denoise_mae"]),
    ("denoise_head", ["denoise.equilibrium_only=false"], ["denoise_mae"]),
])
def test_objective_trains_checkpoints_and_exports(emt_dir: Path, tmp_path: Path, objective: str, extra: list[str],
                                                  metrics: list[str]) -> None:
    from matforge.models import load

    cfg = _config(emt_dir, tmp_path, objective, f"objective={objective}", *extra)
    result = run_pretrain(cfg)
    assert result.metrics["step"] == 6
    for name in metrics:
        value = result.metrics[f"val/{name}"]
        assert np.isfinite(value) and value > 0
    assert sorted(p.name for p in result.run_dir.glob("checkpoint_*")) == ["checkpoint_000000003", "checkpoint_000000006"]
    model = load(result.export_dir)
    card = json.loads((result.export_dir / "card.json").read_text())
    assert card["provenance"]["objective"] == objective and card["provenance"]["steps"] == 6
    manifest_hash = hashlib.sha256((emt_dir / "manifest.json").read_bytes()).hexdigest()
    assert card["provenance"]["dataset_manifest_sha256"] == manifest_hash
    if objective.startswith("energy") or objective == "efs":
        # per-element references were fitted on the train split and travel with the model
        assert torch.count_nonzero(model.element_refs) == len(card["elements"])
    assert _scalars(result.run_dir / "tensorboard", "loss") == [3, 6]


def test_combined_objective_learns_named_properties_with_missing_labels(property_dir: Path, tmp_path: Path) -> None:
    cfg = _config(property_dir, tmp_path, "combined", "objective=combined",
                  "data.properties=[volume_per_atom, mean_z]",
                  model=["model.name=cgcnn", "model.hyperparameters={atom_fea_len: 8, n_conv: 1}"])
    result = run_pretrain(cfg)
    assert np.isfinite(result.metrics["val/volume_per_atom_mae"])
    assert np.isfinite(result.metrics["val/mean_z_mae"])
    card = json.loads((result.export_dir / "card.json").read_text())
    assert card["heads"]["properties"]["names"] == ["volume_per_atom", "mean_z"]


def test_resume_after_a_crash_continues_exactly(emt_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails at step 5 and is launched again equals an uninterrupted run, bit for bit,
    and sees the same batches at every step."""
    from safetensors.torch import load_file

    monkeypatch.setenv(BATCH_LOG_ENV, "1")
    common = ["train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4", "train.log_every=2"]
    reference = run_pretrain(_config(emt_dir, tmp_path, "reference", *common))

    monkeypatch.setenv(FAULT_ENV, "rank=0,step=5,mode=raise")
    crashed = _config(emt_dir, tmp_path, "crashed", *common, "run.max_failures=0")  # let the crash end it
    with pytest.raises(Exception, match="fault injection"):
        run_pretrain(crashed)
    monkeypatch.delenv(FAULT_ENV)
    resumed = run_pretrain(crashed)  # same run name: picks up checkpoint_000000004

    ref_weights = load_file(str(reference.export_dir / "model.safetensors"))
    new_weights = load_file(str(resumed.export_dir / "model.safetensors"))
    assert ref_weights.keys() == new_weights.keys()
    for key in ref_weights:
        assert torch.equal(ref_weights[key], new_weights[key]), key

    def batches(run: Path) -> dict[int, set[str]]:
        seen: dict[int, set[str]] = {}
        for line in (run / "batches" / "rank0.jsonl").read_text().splitlines():
            entry = json.loads(line)
            seen.setdefault(entry["step"], set()).add(entry["idx_sha1"])
        return seen

    ref, new = batches(reference.run_dir), batches(resumed.run_dir)
    assert sorted(new) == list(range(1, 9))
    assert all(len(hashes) == 1 for hashes in new.values())  # step 5 ran twice with the same batch
    assert ref == new
    # TensorBoard: the replayed step is purged, the curve never doubles back
    steps = _scalars(resumed.run_dir / "tensorboard", "loss")
    assert steps == [2, 4, 6, 8]
