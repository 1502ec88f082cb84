"""Training checkpoints: everything needed to continue a run exactly, with no pickle.

A checkpoint directory (what rank 0 hands to ``ray.train.report``) holds::

    model/                 the model in the backbone file format (card.json + model.safetensors)
    optimizer.safetensors  every tensor of the optimizer state, keyed ``state.<param>.<name>``
    rng.safetensors        torch RNG states (CPU, and CUDA when present)
    state.json             step, sampler position (epoch, batch index), schedule state, the
                           optimizer's non-tensor state and param groups, the config, the fitted
                           normalisation, the last metrics, the data manifest hash

Training resumes from (epoch, batch index) with the same optimizer moments, schedule and RNG, so
it sees exactly the batches (and, for denoising, the noise) it would have seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"
MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """The non-tensor progress of a run."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0            # batches of `epoch` already consumed on each rank
    schedule: dict[str, Any] = field(default_factory=dict)
    fitted: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data_manifest_sha256: str = ""
    world_size: int = 1
    balance_weights: list[float] | None = None  # per atom, edge, pair: how steps are balanced (measured once)


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainState, provenance: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint into ``directory`` (created; expected empty)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_DIR, provenance=provenance)  # type: ignore[operator]
    tensors, meta = optimizer_to_flat(optimizer.state_dict())
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for k, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{k}"] = s
    save_file(rng, str(directory / RNG_FILE))
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **state.__dict__, "optimizer": meta}
    tmp = directory / (STATE_FILE + ".partial")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, directory / STATE_FILE)
    return directory


def read_state(directory: Path) -> tuple[TrainState, dict[str, Any]]:
    """``(TrainState, optimizer meta)`` of a checkpoint; raises ValueError naming the file."""
    path = Path(directory) / STATE_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a matforge training checkpoint ({exc})") from None
    version = payload.pop("checkpoint_version", None)
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {version!r}; this matforge reads {CHECKPOINT_VERSION}")
    meta = payload.pop("optimizer")
    known = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in payload.items() if k in known}), meta


def load_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> TrainState:
    """Restore weights (strictly: every key must match), optimizer and RNG; return the state."""
    from matforge.models.backbone_file import WEIGHTS_FILE

    directory = Path(directory)
    state, meta = read_state(directory)
    weights = load_file(str(directory / MODEL_DIR / WEIGHTS_FILE))
    model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        flat = load_file(str(directory / OPTIMIZER_FILE))
        optimizer.load_state_dict(optimizer_from_flat(flat, meta))
    if restore_rng:
        rng = load_file(str(directory / RNG_FILE))
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available():
            cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
    return state
