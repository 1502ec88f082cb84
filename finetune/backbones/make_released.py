"""Regenerate the released backbones shipped in this folder from the original CGCNN checkpoints.

Run from the repository root::

    python finetune/backbones/make_released.py [--shared /work/shared/data] [--out finetune/backbones]

For each entry of :data:`RELEASES` it reads ``<shared>/cgcnn/pre-trained/<file>.pth.tar`` safely
(``torch.load(weights_only=True)``, see :mod:`matforge.models.cgcnn_import`), converts it to a
matforge backbone (float32 weights as released, float64 target normaliser) and writes
``<out>/<name>/card.json`` + ``model.safetensors``, replacing an earlier copy. The card's provenance
is the importer's (source file and its sha256, original args, epoch, best validation MAE) plus the
release metadata below: ``name``, ``licence``, ``trained_on``, ``released_by``, ``converted_by``.

Structure counts in ``trained_on`` are the checkpoints' own ``train_size + val_size + test_size``
and ``train_size`` (the release README does not state them); the data are Materials Project's
(Jain et al., APL Mater. 1, 011002 (2013); 2017-04-19 snapshot per the checkpoints' data paths);
units are the README's (its "log(GPa)" is log10, as the normalisers' means of ~1.6-2.0 show).
This script is not part of the installed package; the directories it writes are.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_SHARED = Path(os.environ.get("MATFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))

LICENCE = "MIT (github.com/txie-93/cgcnn, Copyright (c) 2018 Tian Xie)"
RELEASED_BY = ("Tian Xie and Jeffrey C. Grossman, github.com/txie-93/cgcnn (pre-trained models of "
               "Phys. Rev. Lett. 120, 145301 (2018))")
CONVERTED_BY = "matforge finetune/backbones/make_released.py (matforge.models.cgcnn_import.convert_checkpoint)"

# name -> (checkpoint file, one sentence on the training data)
RELEASES: dict[str, tuple[str, str]] = {
    "cgcnn-formation-energy": (
        "formation-energy-per-atom.pth.tar",
        "Formation energy per atom (eV/atom) of 46,742 Materials Project structures (28,046 in training)."),
    "cgcnn-band-gap": (
        "band-gap.pth.tar",
        "Band gap (eV) of 27,429 Materials Project structures (16,458 in training)."),
    "cgcnn-bulk-moduli": (
        "bulk-moduli.pth.tar",
        "Bulk modulus, log10(GPa), of 3,399 Materials Project structures with elastic data (2,041 in training)."),
    "cgcnn-shear-moduli": (
        "shear-moduli.pth.tar",
        "Shear modulus, log10(GPa), of 3,399 Materials Project structures with elastic data (2,041 in training)."),
}


def make_one(name: str, checkpoint: Path, out: Path) -> Path:
    """Convert ``checkpoint`` and write the backbone ``out/name`` with the release provenance."""
    import torch

    from matforge.models.backbone_file import save
    from matforge.models.cgcnn_import import convert_checkpoint

    model, provenance = convert_checkpoint(checkpoint)
    # the released weights are float32; the head's normaliser stays float64, as the importer builds it
    wide = [k for k, p in model.named_parameters() if p.dtype != torch.float32]
    if wide:
        raise SystemExit(f"make_released: {checkpoint}: parameters not float32: {', '.join(wide)}")
    provenance.update(name=name, licence=LICENCE, trained_on=RELEASES[name][1], released_by=RELEASED_BY,
                      converted_by=CONVERTED_BY)
    return save(model, out / name, provenance=provenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the released CGCNN backbones into this folder.")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help=f"shared data folder holding cgcnn/pre-trained/ (default {DEFAULT_SHARED})")
    parser.add_argument("--out", type=Path, default=HERE, help=f"where to write the backbones (default {HERE})")
    args = parser.parse_args(argv)
    released = args.shared / "cgcnn" / "pre-trained"
    if not released.is_dir():
        print(f"make_released: error: {released}: no such folder (pass --shared)", file=sys.stderr)
        return 2
    for name, (file, _) in RELEASES.items():
        path = make_one(name, released / file, args.out)
        size = (path / "model.safetensors").stat().st_size
        print(f"wrote {path} ({size / 1024:.0f} kB weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
