"""An independent re-implementation of the original CGCNN code's predictions, for the tests.

It follows Xie & Grossman's ``cgcnn/data.py`` (``CIFData.__getitem__``), ``cgcnn/model.py``
(``ConvLayer``, ``CrystalGraphConvNet``) and ``predict.py`` step by step, with the original's data
layout (dense (N, M) neighbour tables) and shares no code with matforge's featurisation or model:

* structure: ``pymatgen.core.Structure.from_file`` (the CIF as written);
* atom features: the rows of an ``atom_init.json`` parsed here;
* neighbours: ``Structure.get_all_neighbors(radius)``, each list sorted by distance, the first
  ``max_num_nbr`` kept; a shorter list is padded with neighbour index 0 at distance ``radius + 1``;
* Gaussians: ``exp(-(d - μ)² / step²)`` with ``μ = numpy.arange(0, radius + step, step)``, in
  float64, then float32 as the original's ``torch.Tensor``;
* model: embedding, ``n_conv`` gated convolutions (BatchNorm over the flattened (N·M) table),
  mean pooling, softplus, conv_to_fc, softplus, hidden layers, fc_out, log-softmax for
  classification; the regression output de-normalised as ``o·std + mean``, the classification
  output as ``exp(log p)[:, 1]`` (``predict.py``).

BatchNorm is evaluated with the checkpoint's running statistics (``model.eval()``), or, with
``training=True``, with the statistics of the given batch (as ``model.train()`` would).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def read_atom_init(path: Path) -> dict[int, np.ndarray]:
    """``{Z: features}`` from an ``atom_init.json``."""
    return {int(k): np.asarray(v, dtype=float) for k, v in json.loads(Path(path).read_text()).items()}


def featurise(structure: Any, atom_init: dict[int, np.ndarray], radius: float = 8.0, max_num_nbr: int = 12,
              dmin: float = 0.0, step: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(atom_fea (N, 92), nbr_fea (N, M, K), nbr_fea_idx (N, M)) of a pymatgen Structure."""
    atom_fea = np.vstack([atom_init[site.specie.number] for site in structure])
    idx_rows, dist_rows = [], []
    for neighbours in structure.get_all_neighbors(radius, include_index=True):
        neighbours = sorted(neighbours, key=lambda nbr: nbr.nn_distance)[:max_num_nbr]
        missing = max_num_nbr - len(neighbours)
        idx_rows.append([nbr.index for nbr in neighbours] + [0] * missing)
        dist_rows.append([nbr.nn_distance for nbr in neighbours] + [radius + 1.0] * missing)
    centres = np.arange(dmin, radius + step, step)
    gaussians = np.exp(-(np.asarray(dist_rows)[..., np.newaxis] - centres) ** 2 / step ** 2)
    return (torch.tensor(atom_fea, dtype=torch.float32), torch.tensor(gaussians, dtype=torch.float32),
            torch.tensor(idx_rows, dtype=torch.long))


def featurise_cif(path: Path, atom_init: dict[int, np.ndarray], **kwargs: Any):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_file(str(path))
    return featurise(structure, atom_init, **kwargs)


def _linear(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _batch_norm(x: torch.Tensor, sd: dict, name: str, training: bool) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{name}.running_mean"].clone(), sd[f"{name}.running_var"].clone(),
                        sd[f"{name}.weight"], sd[f"{name}.bias"], training, 0.1, 1e-5)


def forward(sd: dict, n_conv: int, n_h: int, crystals: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
            classification: bool = False, training: bool = False) -> torch.Tensor:
    """Raw network output (B, 1 or 2) of the original model for a batch of featurised crystals."""
    atom_fea = torch.cat([c[0] for c in crystals])
    nbr_fea = torch.cat([c[1] for c in crystals])
    offsets = np.cumsum([0] + [c[0].shape[0] for c in crystals])
    nbr_idx = torch.cat([c[2] + int(offsets[k]) for k, c in enumerate(crystals)])
    h = _linear(atom_fea, sd, "embedding")
    n, m = nbr_idx.shape
    for k in range(n_conv):
        width = h.shape[1]
        total = torch.cat([h.unsqueeze(1).expand(n, m, width), h[nbr_idx, :], nbr_fea], dim=2)
        gated = _linear(total, sd, f"convs.{k}.fc_full")
        gated = _batch_norm(gated.view(-1, 2 * width), sd, f"convs.{k}.bn1", training).view(n, m, 2 * width)
        gate, core = gated.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(gate) * F.softplus(core), dim=1)
        h = F.softplus(h + _batch_norm(summed, sd, f"convs.{k}.bn2", training))
    pooled = torch.cat([h[offsets[k]:offsets[k + 1]].mean(dim=0, keepdim=True) for k in range(len(crystals))])
    out = F.softplus(_linear(F.softplus(pooled), sd, "conv_to_fc"))
    for k in range(n_h - 1):
        out = F.softplus(_linear(out, sd, f"fcs.{k}"))
    out = _linear(out, sd, "fc_out")
    return F.log_softmax(out, dim=1) if classification else out


def predict(sd: dict, args: dict, normalizer: dict, crystals: list) -> list[float]:
    """What the original ``predict.py`` writes for each crystal (de-normalised or P(class 1))."""
    classification = args["task"] == "classification"
    with torch.no_grad():
        out = forward(sd, args["n_conv"], args["n_h"], crystals, classification=classification)
    if classification:
        return torch.exp(out)[:, 1].tolist()
    return (out * normalizer["std"] + normalizer["mean"]).view(-1).tolist()
