"""Encode a :class:`Record` to bytes and back, without pickle.

Each LMDB value is one safetensors blob (``safetensors.numpy.save``): a JSON header followed by
raw little-endian arrays. Decoding parses JSON and copies buffers; it never executes code.

Tensors in the blob:

* ``numbers`` int16 (N,), ``positions`` float64 (N, 3), ``cell`` float64 (3, 3), ``pbc`` bool (3,)
* optional ``energy`` float64 (), ``forces`` float64 (N, 3), ``stress`` float64 (3, 3)
* ``prop.<name>`` float64 () for each named property
* ``meta`` uint8: UTF-8 JSON ``{"id", "source", "trajectory", "frame", "equilibrium"}``
"""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from matforge.datasets.record import Record

_PROP_PREFIX = "prop."


def encode(record: Record) -> bytes:
    """Serialise a validated record."""
    tensors: dict[str, np.ndarray] = {
        "numbers": record.numbers.astype(np.int16),
        "positions": np.ascontiguousarray(record.positions, dtype=np.float64),
        "cell": np.ascontiguousarray(record.cell, dtype=np.float64),
        "pbc": np.asarray(record.pbc, dtype=bool),
    }
    if record.energy is not None:
        tensors["energy"] = np.asarray(record.energy, dtype=np.float64)
    if record.forces is not None:
        tensors["forces"] = np.ascontiguousarray(record.forces, dtype=np.float64)
    if record.stress is not None:
        tensors["stress"] = np.ascontiguousarray(record.stress, dtype=np.float64)
    for name, value in record.properties.items():
        tensors[_PROP_PREFIX + name] = np.asarray(value, dtype=np.float64)
    meta = {
        "id": record.id,
        "source": record.source,
        "trajectory": record.trajectory,
        "frame": record.frame,
        "equilibrium": record.equilibrium,
    }
    tensors["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    return _st_save(tensors)


def decode(blob: bytes) -> Record:
    """Rebuild a record from :func:`encode`'s bytes. Raises ``ValueError`` on a malformed blob."""
    try:
        t = _st_load(bytes(blob))
        meta = json.loads(t.pop("meta").tobytes().decode("utf-8"))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"not a matforge record: {exc}") from None
    try:
        return _record(t, meta)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # well-formed safetensors, wrong contents
        raise ValueError(f"not a matforge record: missing or malformed field ({type(exc).__name__}: {exc})") from None


def _record(t: dict[str, np.ndarray], meta: dict) -> Record:
    energy = t.get("energy")
    properties = {k[len(_PROP_PREFIX):]: float(v) for k, v in t.items() if k.startswith(_PROP_PREFIX)}
    return Record(
        id=meta["id"],
        numbers=t["numbers"].astype(np.int64),
        positions=t["positions"],
        cell=t["cell"],
        pbc=t["pbc"],
        energy=None if energy is None else float(energy),
        forces=t.get("forces"),
        stress=t.get("stress"),
        properties=properties,
        source=meta.get("source", ""),
        trajectory=meta.get("trajectory", ""),
        frame=meta.get("frame"),
        equilibrium=meta.get("equilibrium"),
    )
