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


SYNTH_COMMAND = "matforge pretrain (data.synth)"  # the manifest's command of data generated here


def ensure_synth(cfg: PretrainConfig) -> None:
    """Generate and split the EMT dataset the config asks for, if it is not there yet.

    Only into a missing or empty directory, and splits only into data generated here: a user's
    directory (a mistyped dataset path, a dataset without splits) is never written to."""
    synth = cfg.data.synth
    train = Path(cfg.data.train)
    if synth.structures <= 0:
        return
    from matforge.datasets.manifest import Manifest
    from matforge.datasets.splits import write_splits
    from matforge.datasets.synth import write_synth

    if not (train / "manifest.json").is_file():
        if train.exists() and (not train.is_dir() or any(train.iterdir())):
            raise ValueError(f"data.train: {train} exists and is not a matforge dataset (no manifest.json); EMT data "
                             "(data.synth.structures > 0) is generated only into a missing or empty directory. Point "
                             "data.train at shards made by `matforge data convert`, or set data.synth.structures=0")
        print(f"[matforge] generating {synth.structures} EMT structures into {train}", flush=True)
        write_synth(train, synth.structures, seed=synth.seed, elements=synth.elements, max_atoms=synth.max_atoms,
                    command=SYNTH_COMMAND)
    if Manifest.read(train).command != SYNTH_COMMAND:
        return  # a dataset of the user's: its splits are made with `matforge data split`
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
