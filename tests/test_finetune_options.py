"""Fine-tuning from an original CGCNN checkpoint, on a shard directory's own splits, with the
plateau schedule, weight EMA, layer-wise decay and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune_data import write_property_set
from matforge.finetune.api import finetune

FAST = {"epochs": 4, "batch_size": 16, "progress": False, "tensorboard": False, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def props(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_property_set(tmp_path_factory.mktemp("ftopt") / "props", n=48)


def _write_cgcnn_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A small checkpoint in the original CGCNN layout (reference parameter names, args, normaliser)."""
    from matforge.models.cgcnn import CGCNN, CGCNNHead

    torch.manual_seed(7)
    backbone, head = CGCNN(atom_fea_len=8, n_conv=2), CGCNNHead(in_dim=8, h_fea_len=16)
    state = {**backbone.state_dict(), **{k: v for k, v in head.state_dict().items() if k not in ("mean", "std")}}
    args = {"task": "regression", "atom_fea_len": 8, "n_conv": 2, "h_fea_len": 16, "n_h": 1,
            "data_options": ["root", 0, "vpa"]}
    torch.save({"state_dict": state, "args": args, "normalizer": {"mean": 10.0, "std": 2.0}, "epoch": 3}, path)
    return backbone.state_dict()


def test_original_cgcnn_checkpoint_is_imported_on_the_fly(props: Path, tmp_path: Path) -> None:
    from matforge.models import load

    checkpoint = tmp_path / "model_best.pth.tar"
    original = _write_cgcnn_checkpoint(checkpoint)
    finetune(str(checkpoint), props, "vpa", tmp_path / "o", strategy="probe", **FAST)
    model = load(tmp_path / "o")
    parent = model.card["provenance"]["parent"]
    assert parent["kind"] == "cgcnn_checkpoint" and parent["path"] == str(checkpoint) and len(parent["sha256"]) == 64
    for name, tensor in original.items():  # probe: the backbone is the checkpoint's, untouched
        assert torch.equal(model.backbone.state_dict()[name], tensor), name


def test_shard_splits_are_used_as_written(props: Path, tmp_path: Path) -> None:
    import shutil

    from matforge.datasets.shard_dataset import load_split, open_dataset
    from matforge.datasets.splits import write_splits

    data = tmp_path / "split_copy"
    shutil.copytree(props, data)
    write_splits(data, [0.6, 0.2, 0.2], group="none", seed=5)
    finetune("none", data, "vpa", tmp_path / "o", arch="cgcnn", hyperparameters={"atom_fea_len": 8, "n_conv": 1},
             split="shards", **FAST)
    ds = open_dataset(data)
    written = json.loads((tmp_path / "o" / "split.json").read_text())
    for side in ("train", "val", "test"):
        assert written[side] == [ds[int(i)].id for i in load_split(data, side)]
    from matforge.finetune.errors import FinetuneError

    with pytest.raises(FinetuneError, match="the val and test sides .* share"):
        finetune("none", data, "vpa", None, arch="cgcnn", split="shards:train,val,val", **FAST)


def test_plateau_ema_lrdecay_and_tensorboard(props: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = finetune("cgcnn-formation-energy", props, "vpa", tmp_path / "o", schedule="plateau", ema_decay=0.9,
                 strategy="lrdecay:0.5", **{**FAST, "tensorboard": True})
    events = list((tmp_path / "o" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "lr", "val/mae", "val/rmse"} <= tags
    assert [e.step for e in acc.Scalars("val/mae")] == [1, 2, 3, 4]
    assert m["epochs_run"] == 4 and m["strategy"] == "lrdecay:0.5"
    training = json.loads((tmp_path / "o" / "card.json").read_text())["provenance"]["training"]
    assert training["schedule"] == "plateau" and training["ema_decay"] == 0.9


def test_reinit_rest_starts_the_unfrozen_blocks_afresh(props: Path, tmp_path: Path) -> None:
    from matforge.finetune.registry import released_path
    from matforge.models import load

    parent = load(released_path("cgcnn-formation-energy"))
    finetune("cgcnn-formation-energy", props, "vpa", tmp_path / "o", strategy="freeze:2", reinit_rest=True,
             **{**FAST, "epochs": 1, "lr": 1e-12, "warmup_epochs": 0})
    child = load(tmp_path / "o")
    for k in (0, 1):  # frozen: identical
        for name, t in parent.backbone.convs[k].state_dict().items():
            assert torch.equal(child.backbone.convs[k].state_dict()[name], t), (k, name)
    # re-initialised (and barely trained at lr 1e-12): far from the pre-trained weights
    w_parent = parent.backbone.convs[3].fc_full.weight
    w_child = child.backbone.convs[3].fc_full.weight
    assert (w_parent - w_child).abs().max() > 1e-2
    assert "rest re-initialised" in child.card["provenance"]["strategy"]
