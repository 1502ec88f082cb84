"""``matforge data merge`` and the combined copy under it (datasets/combine.py): every record of every
dataset in order with its labels, provenance nested in the manifest (the model that made the labels is
found through merges and filtered copies), duplicate ids skipped and counted, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from matforge.cli.main import main
from matforge.datasets.combine import history, model_labels, write_combined
from matforge.datasets.errors import DatasetError
from matforge.datasets.leakage_drop import write_without
from matforge.datasets.manifest import Manifest
from matforge.datasets.shard_dataset import open_dataset

CHGNET_LABELS = {"model": "CHGNet", "weights_version": "0.3.0", "licence": "Modified BSD"}


def _as_model_labelled(source: Path, out: Path) -> Path:
    """A copy of ``source`` whose manifest says its labels come from a model (as data synth --calculator writes)."""
    shutil.copytree(source, out)
    manifest = Manifest.read(out)
    manifest.sources = [{"path": "generated", "format": "generated", "labels_from_model": True,
                         "labels": dict(CHGNET_LABELS)}]
    manifest.write(out)
    return out


def _same_record(a, b) -> None:
    assert a.id == b.id and a.trajectory == b.trajectory and a.frame == b.frame
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    for label in ("energy", "forces", "stress"):
        x, y = getattr(a, label), getattr(b, label)
        assert (x is None) == (y is None), label
        if x is not None:
            np.testing.assert_array_equal(x, y)


def test_merge_keeps_every_record_in_order_and_the_label_provenance(synth_dir: Path, perov5_dir: Path,
                                                                    tmp_path: Path) -> None:
    corpus = _as_model_labelled(synth_dir, tmp_path / "corpus")
    out = tmp_path / "merged"
    result = write_combined([corpus, perov5_dir], out, command="matforge data merge A B --out C")
    first, second, merged = open_dataset(corpus), open_dataset(perov5_dir), open_dataset(out)
    assert (result.num_records, result.num_dropped, result.num_skipped) == (len(first) + len(second), 0, 0)
    assert len(merged) == len(first) + len(second)
    for k in range(len(first)):
        _same_record(merged[k], first[k])
    for k in range(len(second)):
        _same_record(merged[len(first) + k], second[k])
    entries = merged.manifest.sources
    assert [e["dataset_id"] for e in entries] == [first.manifest.dataset_id, second.manifest.dataset_id]
    assert [e["records_kept"] for e in entries] == [len(first), len(second)]
    assert entries[1]["sources"] == second.manifest.sources
    assert model_labels(entries) == [CHGNET_LABELS]

    # a filtered copy of the merge still names the labelling model, two levels down
    clean = write_without([out], {str(merged.directory): [0, 1]}, tmp_path / "clean", command="matforge data leakage C")
    assert clean.num_records == len(merged) - 2
    clean_manifest = open_dataset(tmp_path / "clean").manifest
    assert model_labels(clean_manifest.sources) == [CHGNET_LABELS]
    steps = history(clean_manifest)   # the merge, then the filtered copy (the fixtures' writers record no command)
    assert [s["command"] for s in steps] == ["matforge data merge A B --out C", "matforge data leakage C"]
    assert [s["records_dropped"] for s in steps] == [0, 2] and "leakage check" in steps[-1]["filter"]
    assert history(Manifest.read(tmp_path / "clean"), follow_paths=False) == steps   # nested, no path needed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_an_older_copy_is_followed_to_the_manifest_it_names(synth_dir: Path, tmp_path: Path) -> None:
    corpus = _as_model_labelled(synth_dir, tmp_path / "corpus")
    older = [{"path": str(corpus), "format": "matforge-lmdb", "records_read": 36}]  # no nested "sources"
    assert model_labels(older) == [CHGNET_LABELS]
    assert model_labels(older, follow_paths=False) == []
    assert model_labels([{"path": str(tmp_path / "gone"), "format": "matforge-lmdb"}]) == []


def test_duplicate_ids_are_skipped_and_counted(synth_dir: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(synth_dir, twin)
    result = write_combined([synth_dir, twin], tmp_path / "merged")
    assert (result.num_records, result.num_skipped) == (len(open_dataset(synth_dir)),) * 2
    assert (tmp_path / "merged" / "skipped.jsonl").read_text().count("\n") == result.num_skipped


def test_refusals_leave_nothing_behind(synth_dir: Path, perov5_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="given twice"):
        write_combined([synth_dir, synth_dir], tmp_path / "a")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        write_combined([synth_dir, perov5_dir], out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(DatasetError, match="cannot replace a dataset it is read from"):
        write_combined([synth_dir, perov5_dir], synth_dir, overwrite=True)
    with pytest.raises(DatasetError, match="outside 0"):
        write_combined([synth_dir], tmp_path / "b", {str(open_dataset(synth_dir).directory): [999]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_cli(synth_dir: Path, perov5_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    assert main(["data", "merge", str(synth_dir), str(perov5_dir), "--out", str(out)]) == 0
    total = len(open_dataset(synth_dir)) + len(open_dataset(perov5_dir))
    assert f"wrote {total} records of 2 datasets to {out}" in capsys.readouterr().out
    assert open_dataset(out).manifest.command.startswith("matforge ")
    for argv, message in [([str(synth_dir)], "at least two DIRs"),
                          ([str(synth_dir), str(tmp_path / "nope")], "no such directory"),
                          ([str(synth_dir), str(perov5_dir)], "not empty")]:
        with pytest.raises(SystemExit, match=message):
            main(["data", "merge", *argv, "--out", str(out)])
    corpus = _as_model_labelled(synth_dir, tmp_path / "corpus")
    assert main(["data", "merge", str(corpus), str(perov5_dir), "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"source    {corpus} [matforge-lmdb]  kept {len(open_dataset(corpus))} of {len(open_dataset(corpus))}" in shown
    assert "      labels from CHGNet 0.3.0 (Modified BSD), not measured" in shown   # the nested source, indented
