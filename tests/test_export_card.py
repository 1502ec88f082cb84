"""``matforge export``'s card: metrics that had nothing to average are null, and the card is strict JSON."""

from __future__ import annotations

import json
import math

import torch

from matforge.models.backbone_file import read_card
from matforge.models.heads import EnergyHead
from matforge.models.model import AtomisticModel
from matforge.models.registry import create
from matforge.pretrain.export import card_metrics, export
from matforge.training.checkpoint import TrainState, save_checkpoint


def test_undefined_metric_is_null_in_the_card(tmp_path):
    torch.manual_seed(0)
    model = AtomisticModel(create("cgcnn_smooth", hidden=8, num_interactions=1, num_radial=4),
                           {"energy": EnergyHead(8, hidden=8)})
    state = TrainState(step=7, metrics={"val/noise_mae_relaxed": float("nan"), "val/energy_mae": 0.25,
                                        "val/loss": float("inf")})
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "run" / "checkpoint_000001", model, optimizer, state)
    out = export(tmp_path / "run", tmp_path / "exported")
    card = read_card(out)
    assert card["provenance"]["steps"] == 7
    assert card["provenance"]["metrics"] == {"val/noise_mae_relaxed": None, "val/energy_mae": 0.25, "val/loss": None}
    text = (out / "card.json").read_text()
    json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))  # no NaN/Infinity


def test_card_metrics_keeps_finite_values_exactly():
    assert card_metrics({"a": 1e-30, "b": -2, "c": math.nan}) == {"a": 1e-30, "b": -2.0, "c": None}
