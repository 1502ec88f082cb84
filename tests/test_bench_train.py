"""``matforge bench train``: the EFS-over-energy step report on tiny inputs (JSON keys, labels,
hyper-parameters, errors, the docs section). No timing assertions (speed is read off the benchmark)."""

from __future__ import annotations

import json
import math

import pytest

from matforge.cli.main import main

TINY = ["--steps", "1", "--repeats", "1", "--warmup", "0", "--batches", "1", "--same-process"]


def _run_json(capsys, *args: str) -> dict:
    assert main(["bench", "train", *args, "--json"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    return json.loads(out)


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_json_keys_on_perov5_rows(perov5_dir, capsys):
    report = _run_json(capsys, str(perov5_dir), *TINY, "--max-atoms", "10")
    assert set(report["efs_over_energy"]) == {"cgcnn_smooth", "painn", "cgcnn_attention", "cgcnn"}
    assert all(_positive(v) for v in report["efs_over_energy"].values())
    assert sorted(report["efs_backbones"]) == ["cgcnn_smooth", "painn"]
    for name, entry in report["efs"].items():
        assert entry["placeholder_labels"] is True  # perov5 has no energies, forces or stress
        assert entry["atoms_per_batch"] == 10.0  # two 5-atom cells per 10-atom budget
        assert entry["ratio"] == pytest.approx(entry["efs"]["step_ms"] / entry["energy"]["step_ms"])
        assert entry["efs"]["atoms_per_s"] == pytest.approx(5 * entry["efs"]["structures_per_s"])
        # the force graph keeps more than the energy graph; both hold at least the batch's node features
        assert entry["graph_mb"]["efs"] > entry["graph_mb"]["energy"] > 0
        assert entry["efs_graph_kb_per_atom"] == pytest.approx(1024 * entry["graph_mb"]["efs"] / 10)
        for step in ("energy", "efs"):   # CPU time split by mode, memory first touched (getrusage; Linux here)
            best = entry[step]
            assert best["user_s_per_step"] >= 0 and best["kernel_s_per_step"] >= 0 and best["faulted_mb_per_step"] >= 0
            assert best["user_s_per_step"] + best["kernel_s_per_step"] > 0
    assert report["threads"] >= 1 and report["max_atoms"] == 10


def test_dataset_labels_and_hyperparameters(synth_dir, capsys):
    isolated = [a for a in TINY if a != "--same-process"]   # the default: each backbone in a fresh process
    report = _run_json(capsys, str(synth_dir), *isolated, "--backbones", "painn,cgcnn_smooth", "--max-atoms", "40",
                       "--threads", "1", "--hyperparameter", "cutoff=3.5", "--hyperparameter", "num_radial=8",
                       "--hyperparameter", "num_interactions=1")
    assert report["efs"]["painn"]["placeholder_labels"] is False
    for name in ("painn", "cgcnn_smooth"):
        assert report["efs"][name]["kernels"] in ("auto", "compiled", "eager")   # the fresh process's own
        hp = report["efs"][name]["hyperparameters"]
        assert (hp["cutoff"], hp["num_radial"], hp["num_interactions"]) == (3.5, 8, 1)
    assert report["threads"] == 1


def test_missing_or_bad_arguments_are_clear_errors(tmp_path, perov5_dir):
    with pytest.raises(SystemExit, match="needs a shard directory"):
        main(["bench", "train"])
    with pytest.raises(SystemExit, match="no such shard directory"):
        main(["bench", "train", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="unknown backbone"):
        main(["bench", "train", str(perov5_dir), "--backbones", "schnet"])
    with pytest.raises(SystemExit, match="width: no backbone among painn takes it"):
        main(["bench", "train", str(perov5_dir), "--backbones", "painn", "--hyperparameter", "width=3"])
    with pytest.raises(SystemExit, match="expects KEY=VALUE"):
        main(["bench", "train", str(perov5_dir), "--hyperparameter", "cutoff"])


def test_docs_section_per_setting(synth_dir, tmp_path, capsys):
    docs = tmp_path / "benchmarks.md"
    common = [str(synth_dir), *TINY, "--backbones", "painn", "--max-atoms", "40", "--threads", "1", "--docs", str(docs)]
    assert main(["bench", "train", *common]) == 0
    assert main(["bench", "train", *common, "--hyperparameter", "cutoff=3.5"]) == 0
    printed = capsys.readouterr().out
    text = docs.read_text()
    assert text.count("<!-- matforge bench train -->") == 1
    assert text.count("<!-- matforge bench train cutoff=3.5 -->") == 1
    row = next(line for line in printed.splitlines() if line.startswith("painn "))
    assert row in text  # the figures are the printed ones
