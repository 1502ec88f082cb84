"""Driver-side data preparation before workers start.

* Paths in the config become absolute (Ray workers run in another working directory).
* With ``data.synth.structures > 0`` and no dataset at ``data.train`` yet, EMT-labelled data is
  generated there (``matforge data synth``) and split by trajectory into ``train``/``val`` with
  ``data.synth.val_fraction``: the quick start needs nothing but the package.
* Every dataset is opened once (manifest, shard headers) so a bad path fails here, with one clear
  message, not in N workers; the training manifest's sha256 goes into the provenance.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from matforge.pretrain.config import PretrainConfig


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def manifest_sha256(directory: str) -> str:
    from matforge.datasets.manifest import MANIFEST_NAME

    return hashlib.sha256((Path(directory) / MANIFEST_NAME).read_bytes()).hexdigest()


def ensure_synth(cfg: PretrainConfig) -> None:
    """Generate and split the EMT dataset the config asks for, if it is not there yet."""
    synth = cfg.data.synth
    train = Path(cfg.data.train)
    if synth.structures <= 0:
        return
    from matforge.datasets.splits import write_splits
    from matforge.datasets.synth import write_synth

    if not (train / "manifest.json").is_file():
        print(f"[matforge] generating {synth.structures} EMT structures into {train}", flush=True)
        write_synth(train, synth.structures, seed=synth.seed, elements=synth.elements, max_atoms=synth.max_atoms,
                    command="matforge pretrain (data.synth)")
    if not (train / "splits" / "split.json").is_file():
        fractions = [1.0 - synth.val_fraction, synth.val_fraction]
        write_splits(train, fractions, names=["train", "val"], group="trajectory", seed=synth.seed)


def prepare(cfg: PretrainConfig) -> tuple[PretrainConfig, dict[str, str]]:
    """Return a config with absolute paths (data ready) and the provenance of the data."""
    from matforge.datasets.shard_dataset import open_dataset

    data = dataclasses.replace(cfg.data, train=_absolute(cfg.data.train), val=_absolute(cfg.data.val))
    run = dataclasses.replace(cfg.run, storage_path=_absolute(cfg.run.storage_path))
    cfg = dataclasses.replace(cfg, data=data, run=run)
    ensure_synth(cfg)
    train = open_dataset(cfg.data.train, split=cfg.data.train_split)
    if len(train) == 0:
        raise ValueError(f"{cfg.data.train}: the training set is empty")
    provenance = {"train": cfg.data.train, "train_split": cfg.data.train_split or "",
                  "dataset_manifest_sha256": manifest_sha256(cfg.data.train)}
    if cfg.data.val:
        open_dataset(cfg.data.val, split=cfg.data.val_split)
        provenance["val"] = cfg.data.val
        provenance["val_split"] = cfg.data.val_split or ""
        provenance["val_manifest_sha256"] = manifest_sha256(cfg.data.val)
    return cfg, provenance
