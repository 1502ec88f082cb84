"""``matforge export``: a training checkpoint (or a run's latest) → the backbone file format.

A run directory holds Ray's ``checkpoint_<time>/`` folders; each has ``state.json`` with its step.
The latest complete one is the one with the highest step. The exported backbone is the model the
checkpoint holds, with a card whose provenance names the run, objective, steps, final validation
metrics and the training data's manifest hash. Loading it needs neither Ray nor this package.

A validation metric with nothing to average (e.g. the denoising error of relaxed structures when the
validation set holds none) is NaN in the checkpoint and ``null`` in the card, which is strict JSON.
"""

from __future__ import annotations

import math
from pathlib import Path

from matforge.training.checkpoint import MODEL_DIR, STATE_FILE, read_state


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the run directory's latest checkpoint."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory or checkpoint")
    candidates = []
    for child in path.iterdir():
        if child.is_dir() and (child / STATE_FILE).is_file() and (child / MODEL_DIR).is_dir():
            try:
                state, _ = read_state(child)
            except ValueError:
                continue
            candidates.append((state.step, child.name, child))
    if not candidates:
        raise FileNotFoundError(f"{path}: no training checkpoint found (expected checkpoint_*/state.json)")
    return max(candidates)[2]


def card_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """The checkpoint's metrics for the card: a non-finite value (no sample to average) becomes None."""
    return {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}


def export(path: str | Path, out: str | Path) -> Path:
    """Write the backbone of checkpoint/run ``path`` to ``out``; returns ``out``."""
    from matforge.models.backbone_file import load, read_card

    checkpoint = find_checkpoint(path)
    state, _ = read_state(checkpoint)
    model = load(checkpoint / MODEL_DIR)
    card = read_card(checkpoint / MODEL_DIR)
    provenance = dict(card.get("provenance") or {})
    provenance.update({
        "exported_from": str(checkpoint.resolve()),
        "steps": state.step,
        "epoch": state.epoch,
        "metrics": card_metrics(state.metrics),
        "dataset_manifest_sha256": state.data_manifest_sha256 or provenance.get("dataset_manifest_sha256", ""),
        "objective": state.config.get("objective", provenance.get("objective")),
        "config": state.config,
    })
    return model.save(out, provenance=provenance)
