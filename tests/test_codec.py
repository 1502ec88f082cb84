"""Round trips of the record codec (safetensors blob, no pickle) and refusal of malformed blobs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from safetensors.numpy import save

from matforge.datasets.codec import decode, encode
from matforge.datasets.record import Record, validate


def _full_record() -> Record:
    rng = np.random.default_rng(7)
    n = 5
    return validate(Record(
        id="Fe₂O₃-β/ü 🙂 #1",
        numbers=np.array([26, 26, 8, 8, 100]),
        positions=rng.normal(size=(n, 3)),
        cell=np.diag([4.1, 5.2, 6.3]) + 0.1 * rng.normal(size=(3, 3)),
        pbc=np.array([True, False, True]),
        energy=-12.345678901234567,
        forces=rng.normal(size=(n, 3)),
        stress=rng.normal(size=(3, 3)),
        properties={"band_gap": 1.25, "heat.ref": -0.5, "énergie": 3e-300},
        source="dir/файл.extxyz",
        trajectory="mp-1234 ✓",
        frame=17,
        equilibrium=False,
    ))


def _assert_same(a: Record, b: Record) -> None:
    assert a.id == b.id and a.source == b.source and a.trajectory == b.trajectory
    assert a.frame == b.frame and type(a.frame) is type(b.frame)
    assert a.equilibrium is b.equilibrium
    for name in ("numbers", "positions", "cell", "pbc", "forces", "stress"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
        else:
            assert y.dtype == x.dtype and y.shape == x.shape, name
            assert np.array_equal(x, y), name
    assert (a.energy is None and b.energy is None) or a.energy == b.energy
    assert a.properties == b.properties


def test_round_trip_all_fields_bit_exact():
    record = _full_record()
    back = decode(encode(record))
    _assert_same(record, back)
    assert back.numbers.dtype == np.int64 and back.pbc.dtype == bool
    assert back.energy.hex() == record.energy.hex()


def test_round_trip_without_labels_keeps_none():
    record = validate(Record(id="bare", numbers=np.array([1]), positions=np.zeros((1, 3)),
                             cell=np.zeros((3, 3)), pbc=np.array([False, False, False])))
    back = decode(encode(record))
    _assert_same(record, back)
    assert back.energy is None and back.forces is None and back.stress is None
    assert back.properties == {} and back.frame is None and back.equilibrium is None


@pytest.mark.parametrize("frame, equilibrium", [(0, False), (0, True), (None, True), (3, None)])
def test_falsy_frame_and_flag_survive(frame, equilibrium):
    record = _full_record()
    record.frame, record.equilibrium = frame, equilibrium
    back = decode(encode(record))
    assert back.frame == frame and back.equilibrium is equilibrium


def test_energy_only_and_forces_only_records():
    record = _full_record()
    record.forces = record.stress = None
    back = decode(encode(record))
    assert back.forces is None and back.stress is None and back.energy == record.energy
    record = _full_record()
    record.energy = None
    back = decode(encode(record))
    assert back.energy is None and np.array_equal(back.forces, record.forces)


def _blob(**tensors: np.ndarray) -> bytes:
    return save(tensors)


def _meta(obj: object) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


@pytest.mark.parametrize("blob", [
    b"",
    b"\x00" * 8,
    b"not a record at all, just text" * 3,
    bytes(np.random.default_rng(0).integers(0, 256, size=256, dtype=np.uint8)),
    pickle.dumps({"id": "x", "numbers": [1]}),
    encode(_full_record())[:-7],  # cut short
    _blob(numbers=np.zeros(1, np.int16)),  # no meta
    _blob(meta=_meta({"id": "x"})),  # meta but no arrays
    _blob(meta=_meta([1, 2]), numbers=np.zeros(1, np.int16)),  # meta not an object
    _blob(meta=np.frombuffer(b"\xff\xfe{", dtype=np.uint8), numbers=np.zeros(1, np.int16)),  # not UTF-8 JSON
], ids=["empty", "zeros", "text", "random", "pickle", "cut-short", "no-meta", "no-arrays", "meta-list", "meta-not-utf8"])
def test_malformed_blob_is_a_value_error(blob):
    with pytest.raises(ValueError, match="not a matforge record"):
        decode(blob)
