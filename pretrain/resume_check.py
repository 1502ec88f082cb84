"""Whether a run's last checkpoint may be resumed under the config given now, checked on the driver.

Re-running ``matforge pretrain`` with the name of a run that has checkpoints resumes it. That is
right for the same experiment carried on (more steps, other intervals, other feeding of the workers),
and wrong for another experiment that happens to reuse the name: a different model would fail deep
inside a worker with a wall of tensor-shape mismatches (and Ray Train would retry it), while a
different loss, optimiser or training set would resume silently into a run that is neither.

So before anything starts, the config saved in the checkpoint (``TrainState.config``, the config of
the attempt that wrote it) is compared with the one given now, key by dotted key:

* fixed, so a change is refused with every changed key listed (:data:`FIXED_PREFIXES`): the model
  and its hyper-parameters, the objective, the loss weights, denoising, the optimiser and its
  schedule, the seed, the dtype, the training split and properties, and how batches are made
  (atoms per batch, rank balancing); the training data itself is compared by its manifest's
  sha256, not by path, so a dataset that moved still resumes;
* the number of workers (0 and 1 are both one rank): each rank's position inside the epoch
  depends on it, so a change would skip or replay batches; refused;
* free, so a change is only reported: everything else (``train.max_steps``, the intervals, the
  other ``scaling.*`` keys, validation data, how batches are fed, ``run.max_failures``,
  ``data.synth``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matforge.pretrain.config import ConfigError

NOT_COMPARED = ("data.train", "run.name", "run.storage_path")  # the data by content; the run is where it is
FIXED_PREFIXES = ("model.", "objective", "loss.", "denoise.", "optim.", "train.seed", "train.dtype",
                  "data.train_split", "data.properties", "data.max_atoms", "data.balance_ranks",
                  "data.balance_weights")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _is_fixed(key: str) -> bool:
    return any(key == p.rstrip(".") or key.startswith(p) for p in FIXED_PREFIXES)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(fixed, free)`` changes from ``saved`` to ``current``, each as ``"key: old -> new"``.

    :data:`NOT_COMPARED` are left out: the data are compared by content (:func:`check_resume`), and a
    run directory that was moved or renamed is still the same run."""
    old, new = flatten(saved), flatten(current)
    fixed, free = [], []
    for key in sorted(set(old) | set(new)):
        if key in NOT_COMPARED or old.get(key) == new.get(key):
            continue
        line = f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
        (fixed if _is_fixed(key) else free).append(line)
    return fixed, free


def check_resume(run_dir: Path, current: dict[str, Any], data_sha256: str) -> tuple[Path, list[str]] | None:
    """``None`` when ``run_dir`` has no checkpoint (a new run); else ``(checkpoint, free changes)``.

    Raises :class:`~matforge.pretrain.config.ConfigError` naming the run, the checkpoint and every
    fixed key that changed, or the data whose content changed."""
    from matforge.training.checkpoint import read_state
    from matforge.pretrain.export import find_checkpoint

    if not run_dir.is_dir():
        return None
    try:
        checkpoint = find_checkpoint(run_dir)
    except FileNotFoundError:
        return None
    state, _ = read_state(checkpoint)
    problems: list[str] = []
    if state.config:
        fixed, free = config_changes(state.config, current)
        problems += fixed
    else:
        free = []
    saved_world = max(1, int(flatten(state.config).get("scaling.num_workers", 0) or 0)) if state.config else None
    world = max(1, int(flatten(current).get("scaling.num_workers", 0) or 0))
    if saved_world is not None and saved_world != world:
        problems.append(f"scaling.num_workers: {saved_world} worker(s) at the checkpoint, {world} now; the position "
                        "inside the epoch (batches dealt per rank) cannot be carried over exactly, so batches would be "
                        f"skipped or replayed: resume with {saved_world} worker(s)")
    if state.data_manifest_sha256 and data_sha256 and state.data_manifest_sha256 != data_sha256:
        problems.append(f"data.train: the training data changed (manifest sha256 {state.data_manifest_sha256[:12]}… "
                        f"at the checkpoint, {data_sha256[:12]}… in {current.get('data', {}).get('train')})")
    if problems:
        raise ConfigError(f"run {run_dir} has a checkpoint at step {state.step} ({checkpoint.name}) made with "
                          f"another experiment's settings; resuming it would mix two runs:\n  "
                          + "\n  ".join(problems)
                          + "\nuse another run.name for the new settings, or the checkpoint's settings to resume")
    return checkpoint, free
