"""Grouped, deterministic splits: no group straddles, every record in exactly one split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from matforge.cli.main import main
from matforge.datasets import open_dataset
from matforge.datasets.errors import DatasetError
from matforge.datasets.manifest import Manifest, read_index
from matforge.datasets.splits import (
    SPLIT_INFO_NAME,
    assign_groups,
    check_fractions,
    make_splits,
    read_split_info,
    write_splits,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 120-record EMT dataset: 10 MD runs of 4 frames plus 80 single structures."""
    from matforge.datasets.synth import write_synth

    out = tmp_path_factory.mktemp("splits") / "emt"
    write_synth(out, 120, seed=11, max_atoms=8)
    return out


@pytest.fixture
def writable(dataset, tmp_path):
    shutil.copytree(dataset, tmp_path / "ds")
    return tmp_path / "ds"


def _check_partition(parts, n):
    joined = np.concatenate(list(parts))
    assert joined.shape[0] == n and np.array_equal(np.sort(joined), np.arange(n))  # union = all, disjoint
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, no repeats


def _groups_do_not_straddle(parts, codes):
    owners: dict[int, str] = {}
    for name, p in parts.items():
        for code in np.unique(codes[p]).tolist():
            assert owners.setdefault(code, name) == name, f"group {code} in {owners[code]} and {name}"


@pytest.mark.parametrize("group, column", [("trajectory", "trajectory_code"), ("composition", "composition_code")])
def test_groups_never_straddle(dataset, group, column):
    splits, info = make_splits(dataset, [0.6, 0.2, 0.2], group=group, seed=3)
    codes = read_index(dataset)[column]
    _check_partition(splits.values(), 120)
    _groups_do_not_straddle(splits, codes)
    assert list(splits) == ["train", "val", "test"]
    assert info.counts == {k: len(v) for k, v in splits.items()}
    assert sum(info.groups.values()) == np.unique(codes).shape[0]


def test_md_frames_stay_together_with_record_ids(dataset):
    splits, _ = make_splits(dataset, [0.5, 0.25, 0.25], group="trajectory", seed=0)
    ds = open_dataset(dataset)
    side = {}
    for name, indices in splits.items():
        for i in indices:
            record = ds[int(i)]
            if record.frame is not None:
                assert side.setdefault(record.trajectory, name) == name
    assert len(side) == 10


def test_fractions_are_close_to_targets(dataset):
    manifest = Manifest.read(dataset)
    codes = read_index(dataset)["trajectory_code"]
    largest_group = int(np.bincount(codes).max())
    assert largest_group == 4
    for seed in range(5):
        splits, _ = make_splits(dataset, [0.8, 0.1, 0.1], group="trajectory", seed=seed)
        for fraction, p in zip([0.8, 0.1, 0.1], splits.values()):
            assert abs(len(p) - fraction * manifest.num_records) <= largest_group


def test_ungrouped_split_hits_targets_exactly_when_they_are_whole(dataset):
    splits, _ = make_splits(dataset, [0.75, 0.25], group="none", seed=1)
    assert [len(p) for p in splits.values()] == [90, 30]


def test_deterministic_and_seed_dependent(dataset):
    a, _ = make_splits(dataset, [0.8, 0.1, 0.1], seed=4)
    b, _ = make_splits(dataset, [0.8, 0.1, 0.1], seed=4)
    c, _ = make_splits(dataset, [0.8, 0.1, 0.1], seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_assign_groups_on_known_groups():
    # groups 0..5 with sizes 1..6 (21 records); a zero fraction receives nothing
    codes = np.repeat(np.arange(6), np.arange(1, 7))
    parts = assign_groups(codes, [0.5, 0.0, 0.5], seed=0)
    assert parts[1].shape == (0,)
    _check_partition(parts, 21)
    _groups_do_not_straddle(dict(zip("abc", parts)), codes)
    assert abs(len(parts[0]) - 10.5) <= 6
    # a single split takes everything
    assert np.array_equal(assign_groups(codes, [1.0], seed=9)[0], np.arange(21))
    # no records: empty splits
    assert [p.shape for p in assign_groups(np.array([], dtype=np.int64), [0.5, 0.5], 0)] == [(0,), (0,)]


@pytest.mark.parametrize("fractions, names, message", [
    ([0.8, 0.1], None, "must sum to 1"),
    ([0.7, 0.5, -0.2], None, "must not be negative"),
    ([1.2, -0.2], None, "must not be negative"),
    ([0.5, float("nan"), 0.5], None, "finite"),
    ([], None, "no fractions"),
    ([0.5, 0.5], ["train"], "1 names"),
    ([0.5, 0.5], ["a", "a"], "distinct"),
    ([0.5, 0.5], ["a", "../b"], "letters, digits"),
    ([0.25] * 4, None, "need explicit names"),
])
def test_bad_fractions_and_names_are_clear_errors(fractions, names, message):
    with pytest.raises(ValueError, match=message):
        check_fractions(fractions, names)


def test_default_names_and_float_rounding():
    assert check_fractions([0.8, 0.1, 0.1]) == ([0.8, 0.1, 0.1], ["train", "val", "test"])
    assert check_fractions([0.7, 0.3])[1] == ["train", "test"]
    assert check_fractions([1 / 3] * 3, ["a", "b", "c"])[1] == ["a", "b", "c"]


def test_write_and_open_split_views(writable):
    info = write_splits(writable, [0.8, 0.1, 0.1], group="trajectory", seed=2)
    full = open_dataset(writable)
    seen = []
    for name in ("train", "val", "test"):
        indices = np.load(writable / "splits" / f"{name}.npy", allow_pickle=False)
        view = open_dataset(writable, split=name)
        assert len(view) == info.counts[name] == indices.shape[0]
        assert [view[i].id for i in range(len(view))] == [full[int(g)].id for g in indices]
        assert np.array_equal(view.natoms, full.natoms[indices])
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(full)))
    raw = json.loads((writable / "splits" / SPLIT_INFO_NAME).read_text())
    assert raw["dataset_id"] == full.manifest.dataset_id and raw["seed"] == 2 and raw["group"] == "trajectory"
    assert raw["fractions"] == [0.8, 0.1, 0.1] and raw["counts"] == info.counts
    assert read_split_info(writable) == info
    with pytest.raises(DatasetError, match="no split named 'holdout'"):
        open_dataset(writable, split="holdout")


def test_existing_splits_are_kept_unless_overwrite(writable):
    write_splits(writable, [0.5, 0.5], seed=0)
    before = {p.name: p.read_bytes() for p in (writable / "splits").iterdir()}
    with pytest.raises(DatasetError, match="splits already exist"):
        write_splits(writable, [0.8, 0.1, 0.1], seed=1)
    assert {p.name: p.read_bytes() for p in (writable / "splits").iterdir()} == before
    write_splits(writable, [0.8, 0.1, 0.1], seed=1, overwrite=True)
    assert sorted(p.name for p in (writable / "splits").iterdir()) == [SPLIT_INFO_NAME, "test.npy", "train.npy", "val.npy"]
    assert sorted(p.name for p in writable.iterdir() if p.name.startswith(".")) == []  # no temp folders left


def test_bad_fractions_write_nothing(writable):
    with pytest.raises(ValueError, match="sum to 1"):
        write_splits(writable, [0.9, 0.2])
    assert not (writable / "splits").exists()


def test_split_of_a_missing_dataset_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        make_splits(tmp_path / "nothing", [1.0])


def test_cli(writable, capsys):
    assert main(["data", "split", str(writable), "--fractions", "0.5,0.5", "--names", "a,b",
                 "--group", "composition", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "by composition (seed 7)" in out
    a = open_dataset(writable, split="a")
    b = open_dataset(writable, split="b")
    assert len(a) + len(b) == 120
    expected, _ = make_splits(writable, [0.5, 0.5], names=["a", "b"], group="composition", seed=7)
    assert np.array_equal(a.indices, expected["a"])
    with pytest.raises(SystemExit, match="must sum to 1"):
        main(["data", "split", str(writable), "--fractions", "0.5,0.6", "--overwrite"])
    with pytest.raises(SystemExit, match="comma-separated numbers"):
        main(["data", "split", str(writable), "--fractions", "half,half", "--overwrite"])
    assert main(["data", "split", str(writable)]) == 2  # splits exist: a one-line DatasetError, exit 2
    assert "splits already exist" in capsys.readouterr().err
