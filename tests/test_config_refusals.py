"""What the pre-training config refuses before anything starts (issue 18 §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matforge.pretrain.config import ConfigError, load_config

BASE = ["data.train=somewhere"]


@pytest.mark.parametrize("objective", ["energy_forces", "efs", "denoise_derivative"])
@pytest.mark.parametrize("arch", ["cgcnn", "cgcnn_attention"])
def test_force_objectives_on_a_non_smooth_backbone_are_refused(objective: str, arch: str) -> None:
    with pytest.raises(ConfigError, match=r"needs an energy that is smooth.*cgcnn_smooth or painn.*allow_non_smooth"):
        load_config("efs", [*BASE, f"objective={objective}", f"model.name={arch}"])
    cfg = load_config("efs", [*BASE, f"objective={objective}", f"model.name={arch}", "model.allow_non_smooth=true"])
    assert cfg.model.allow_non_smooth


@pytest.mark.parametrize("arch", ["cgcnn_smooth", "painn"])
def test_smooth_backbones_take_force_objectives(arch: str) -> None:
    assert load_config("efs", [*BASE, f"model.name={arch}"]).model.name == arch


def test_energy_and_property_objectives_take_any_backbone() -> None:
    for objective in ("energy", "denoise_head"):
        assert load_config("efs", [*BASE, f"objective={objective}", "model.name=cgcnn"]).objective == objective


@pytest.mark.parametrize("key", ["run.storage_path", "data.train", "data.val"])
def test_uris_are_refused_with_the_shared_storage_advice(key: str) -> None:
    """An s3:// run directory used to become a local folder named 's3:' on the driver."""
    with pytest.raises(ConfigError, match=rf"{key}: 's3://bucket/x' is a URI.*same path on every node"):
        load_config("efs", [*BASE, f"{key}=s3://bucket/x"])


def test_strided_shares_hold_every_record_once() -> None:
    from matforge.datasets.sampler import strided_share

    for n in (0, 1, 5, 12):
        for world in (1, 2, 3, 7):
            shares = [strided_share(n, world, r) for r in range(world)]
            joined = np.sort(np.concatenate(shares))
            assert joined.tolist() == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError):
        strided_share(5, 2, 2)


def test_validation_loss_is_the_weighted_training_loss(synth_dir) -> None:
    """``val/loss`` (what the plateau schedule watches) is Σ_k w_k · mean_k of the objective's terms."""
    from torch_geometric.data import Batch

    from matforge.datasets.graphs import GraphBuilder
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create
    from matforge.pretrain.evaluation import Evaluator

    records = open_dataset(synth_dir)
    objective = build_objective("efs")
    torch.manual_seed(0)
    backbone = create("painn", hidden=8, num_interactions=1, cutoff=4.0)
    model = AtomisticModel(backbone, objective.build_heads(backbone)).double()
    objective.fit(records, model)
    builder = GraphBuilder(cutoff=4.0, dtype="float64")
    batches = [Batch.from_data_list([builder(records[i], i) for i in chunk]) for chunk in ([0, 1, 2], [3, 4])]
    whole = Batch.from_data_list([builder(records[i], i) for i in range(5)])
    val = Evaluator(batches, objective, torch.device("cpu"))(model)
    out = model(whole, forces=True, stress=True)
    expected = float(objective.loss(out, whole).detach())
    assert val["val/loss"] == pytest.approx(expected, rel=1e-9)
    metrics = objective.metrics(out, whole)
    assert val["val/forces_mae"] == pytest.approx(float(metrics["forces_mae"].mean()), rel=1e-9)


def test_packaged_configs_survive_a_lost_worker_by_default() -> None:
    from matforge.pretrain.config import packaged_configs

    names = packaged_configs()
    assert {"quickstart", "efs", "denoise_derivative", "denoise_head", "combined"} <= set(names)
    for name in names:
        assert load_config(name, BASE).run.max_failures == 2, name
