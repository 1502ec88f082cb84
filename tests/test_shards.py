"""The shard layer: global indexing across shards, refusal of damaged or foreign data, processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest

from matforge.datasets import open_dataset
from matforge.datasets.errors import DatasetError
from matforge.datasets.manifest import MANIFEST_NAME, Manifest
from matforge.datasets.shards import HEADER_KEY, open_env, read_header, record_key, shard_name
from matforge.datasets.synth import synth_records, write_synth


def _copy(synth_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(synth_dir, out)
    return out


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / MANIFEST_NAME
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_rollover_and_global_indexing(tmp_path):
    expected = list(synth_records(10, seed=4))
    report = write_synth(tmp_path / "ds", 10, seed=4, shard_size=3)
    assert report.num_shards == 4
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.lmdb")) == [shard_name(k) for k in range(4)]
    manifest = Manifest.read(tmp_path / "ds")
    assert [s.num_records for s in manifest.shards] == [3, 3, 3, 1]
    assert [s.num_atoms for s in manifest.shards] == [sum(r.natoms for r in expected[k:k + 3]) for k in (0, 3, 6, 9)]
    assert [s.file for s in manifest.shards] == [shard_name(k) for k in range(4)]
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 10
    for i, record in enumerate(expected):
        got = ds[i]
        assert got.id == record.id and np.array_equal(got.positions, record.positions)
        assert got.energy == record.energy and np.array_equal(got.stress, record.stress)
    assert ds[-1].id == expected[-1].id and ds[-10].id == expected[0].id
    assert np.array_equal(ds.natoms, [r.natoms for r in expected])
    for bad in (10, -11):
        with pytest.raises(IndexError):
            ds[bad]
    view = ds.subset([9, 2, 3])
    assert [r.id for r in view] == [expected[k].id for k in (9, 2, 3)]
    assert [r.id for r in view.subset([2, 0])] == [expected[3].id, expected[9].id]


def test_shard_headers_and_keys(synth_dir):
    manifest = Manifest.read(synth_dir)
    for k, info in enumerate(manifest.shards):
        header = read_header(synth_dir / info.file)
        assert header["dataset_id"] == manifest.dataset_id and header["shard_index"] == k
        assert header["num_records"] == info.num_records and header["num_atoms"] == info.num_atoms
        with open_env(synth_dir / info.file).begin() as txn:  # this process's shared read-only handle
            keys = [key for key, _ in txn.cursor()]
        assert sorted(keys) == sorted([record_key(i) for i in range(info.num_records)] + [HEADER_KEY])
        assert all(len(key) == 8 for key in keys if key != HEADER_KEY)


def test_truncated_shard_is_refused_naming_the_file(synth_dir, tmp_path):
    out = _copy(synth_dir, tmp_path)
    shard = out / shard_name(1)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        open_dataset(out)
    assert str(shard) in str(err.value)


def test_truncated_shard_with_matching_manifest_is_still_refused(synth_dir, tmp_path):
    """Even if the manifest is edited to the cut size, the file is refused (reading the missing
    pages would otherwise kill the process with SIGBUS)."""
    out = _copy(synth_dir, tmp_path)
    shard = out / shard_name(0)
    data = shard.read_bytes()
    shard.write_bytes(data[:8192])
    _edit_manifest(out, lambda m: m["shards"][0].update(bytes=8192))
    with pytest.raises(DatasetError, match=f"{shard_name(0)}: truncated shard"):
        open_dataset(out)


def test_foreign_lmdb_is_refused(synth_dir, tmp_path):
    out = _copy(synth_dir, tmp_path)
    shard = out / shard_name(0)
    shard.unlink()
    env = lmdb.open(str(shard), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for i in range(16):
            txn.put(str(i).encode(), pickle.dumps({"structure": i}))
    env.close()
    _edit_manifest(out, lambda m: m["shards"][0].update(bytes=shard.stat().st_size))
    with pytest.raises(DatasetError, match="not a matforge shard") as err:
        open_dataset(out)
    assert str(shard) in str(err.value)


def test_not_an_lmdb_file_is_refused(synth_dir, tmp_path):
    out = _copy(synth_dir, tmp_path)
    shard = out / shard_name(2)
    size = shard.stat().st_size
    shard.write_bytes(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))
    with pytest.raises(DatasetError, match=shard_name(2)):
        open_dataset(out)


@pytest.mark.parametrize("version", [99, 0, "1"])
def test_unknown_schema_version_is_refused(synth_dir, tmp_path, version):
    out = _copy(synth_dir, tmp_path)
    _edit_manifest(out, lambda m: m.update(schema_version=version))
    with pytest.raises(DatasetError, match=f"schema version {version!r}"):
        open_dataset(out)


def test_missing_manifest_or_shard_is_refused(synth_dir, tmp_path):
    out = _copy(synth_dir, tmp_path)
    (out / shard_name(1)).unlink()
    with pytest.raises(DatasetError, match=f"{shard_name(1)}: shard listed in the manifest is missing"):
        open_dataset(out)
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(DatasetError, match="no manifest.json"):
        open_dataset(out)
    with pytest.raises(DatasetError, match="not a directory"):
        open_dataset(tmp_path / "absent")


def test_shards_swapped_between_positions_are_refused(synth_dir, tmp_path):
    out = _copy(synth_dir, tmp_path)
    a, b = out / shard_name(0), out / shard_name(1)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    _edit_manifest(out, lambda m: (m["shards"][0].update(bytes=len(b_bytes)), m["shards"][1].update(bytes=len(a_bytes))))
    with pytest.raises(DatasetError, match="another dataset or position"):
        open_dataset(out)


def test_checksum_verification_catches_a_flipped_byte(synth_dir, tmp_path):
    out = _copy(synth_dir, tmp_path)
    manifest = Manifest.read(out)
    shard = out / shard_name(2)
    data = bytearray(shard.read_bytes())
    ds = open_dataset(out)
    blob = ds.raw(len(ds) - 1)
    at = bytes(data).find(blob[-64:])  # inside the last record's arrays: LMDB still opens
    assert at > 0
    data[at + 10] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert shard.stat().st_size == manifest.shards[2].bytes
    open_dataset(out)  # size and header are fine ...
    with pytest.raises(DatasetError, match="checksum differs"):
        open_dataset(out, verify_checksums=True)  # ... the checksum is not


def _ids_and_positions(ds) -> list[tuple[str, bytes]]:
    return [(r.id, r.positions.tobytes()) for r in ds]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_dataset_pickled_into_another_process_reads_the_same_records(synth_dir, method):
    ds = open_dataset(synth_dir)
    expected = _ids_and_positions(ds)  # opens the environments in this process first
    assert len(pickle.dumps(ds)) < 20_000  # paths and small arrays, no environment or records
    with mp.get_context(method).Pool(1) as pool:
        got = pool.apply(_ids_and_positions, (ds,))
        got_view = pool.apply(_ids_and_positions, (ds.subset([35, 0, 17]),))
    assert got == expected
    assert got_view == [expected[35], expected[0], expected[17]]


def test_reopen_after_the_directory_was_replaced(tmp_path):
    """A process that read a dataset sees the new one after ``--overwrite`` replaced it."""
    out = tmp_path / "ds"
    write_synth(out, 4, seed=1)
    assert open_dataset(out)[0].id.startswith("emt-s1-")
    write_synth(out, 5, seed=2, overwrite=True)
    ds = open_dataset(out)
    assert len(ds) == 5 and [r.id for r in ds] == [r.id for r in synth_records(5, seed=2)]
