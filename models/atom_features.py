"""CGCNN's 92-dimensional element features as a lookup table indexed by atomic number.

The features come from ``models/data/atom_init.json`` (Xie & Grossman 2018, MIT; see
``models/data/README.md``): for each element Z = 1..100 a vector of 92 zeros and ones, the
concatenated one-hot encodings of binned element properties. The table returned here has one row
per atomic number so that ``table[z]`` gathers the features of a batch of atoms:

    table : (101, 92) float32,  table[Z] = atom_init[Z] for Z = 1..100,  table[0] = 0.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import torch
from torch import Tensor

NUM_ELEMENTS = 100
FEATURE_DIM = 92


@functools.lru_cache(maxsize=1)
def _table() -> Tensor:
    text = resources.files("matforge.models").joinpath("data/atom_init.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    table = torch.zeros((NUM_ELEMENTS + 1, FEATURE_DIM), dtype=torch.float32)
    for key, values in raw.items():
        z = int(key)
        if not 1 <= z <= NUM_ELEMENTS or len(values) != FEATURE_DIM:
            raise ValueError(f"atom_init.json: bad entry for element {key!r} (needs Z in 1..{NUM_ELEMENTS}, "
                             f"{FEATURE_DIM} values)")
        table[z] = torch.tensor(values, dtype=torch.float32)
    missing = [z for z in range(1, NUM_ELEMENTS + 1) if not table[z].any()]
    if missing:
        raise ValueError(f"atom_init.json: no features for elements {missing}")
    return table


def cgcnn_atom_features() -> Tensor:
    """(101, 92) float32 table of CGCNN element features; row Z for element Z, row 0 zeros.

    Returns a copy, so callers may move or modify it freely (the parsed file is cached).
    """
    return _table().clone()
