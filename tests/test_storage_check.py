"""The workers' check that they see the driver's run directory and data (pretrain.storage_check)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from matforge.pretrain.storage_check import (MARKER_DIR, StorageCheckError, check_dataset, check_marker,
                                             check_worker_storage, write_marker)


def test_marker_round_trip_and_one_marker_per_launch(tmp_path: Path) -> None:
    first = write_marker(tmp_path / "run")
    second = write_marker(tmp_path / "run")
    assert first != second and len(second) == 32
    assert [p.name for p in (tmp_path / "run" / MARKER_DIR).iterdir()] == [f"{second}.token"]
    check_marker(tmp_path / "run", second, rank=1, node_id="abc")
    with pytest.raises(StorageCheckError, match="rank 1 on node abc .*does not see the run directory"):
        check_marker(tmp_path / "run", first, rank=1, node_id="abc")


def test_a_node_without_the_shared_mount_is_named(tmp_path: Path) -> None:
    token = write_marker(tmp_path / "shared" / "run")
    elsewhere = tmp_path / "local-disk" / "run"  # what a node lacking the mount sees at that path
    with pytest.raises(StorageCheckError) as info:
        check_worker_storage(elsewhere, token, {}, rank=3, node_id="node7")
    assert "rank 3 on node node7" in str(info.value) and str(elsewhere) in str(info.value)
    assert not elsewhere.exists()  # the check creates nothing on the wrong disk


def test_dataset_digest_must_match_the_drivers(tmp_path: Path, synth_dir: Path) -> None:
    digest = hashlib.sha256((synth_dir / "manifest.json").read_bytes()).hexdigest()
    check_dataset(str(synth_dir), digest, rank=0)
    copy = tmp_path / "copy"
    shutil.copytree(synth_dir, copy)
    (copy / "manifest.json").write_text((copy / "manifest.json").read_text().replace("{", "{ ", 1))
    with pytest.raises(StorageCheckError, match="sees a different dataset"):
        check_dataset(str(copy), digest, rank=1, node_id="n1")
    with pytest.raises(StorageCheckError, match=r"rank 2 .*cannot read the dataset .*missing"):
        check_worker_storage(tmp_path, None, {str(tmp_path / "missing"): digest}, rank=2)


def test_synth_never_writes_into_a_users_directory(tmp_path: Path, synth_dir: Path) -> None:
    """data.synth generates only into a missing or empty directory, and splits only data it generated."""
    from matforge.pretrain.config import load_config
    from matforge.pretrain.data_prep import ensure_synth

    mistyped = tmp_path / "mptrj"
    mistyped.mkdir()
    (mistyped / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"mptrj exists and is not a matforge dataset .*data.synth.structures=0"):
        ensure_synth(load_config("efs", [f"data.train={mistyped}"]))
    assert [p.name for p in mistyped.iterdir()] == ["notes.txt"]
    users = tmp_path / "users"
    shutil.copytree(synth_dir, users)  # a dataset without splits, made by someone else
    shutil.rmtree(users / "splits", ignore_errors=True)
    before = sorted(p.relative_to(users) for p in users.rglob("*"))
    ensure_synth(load_config("efs", [f"data.train={users}"]))
    assert sorted(p.relative_to(users) for p in users.rglob("*")) == before
    fresh = tmp_path / "fresh"
    ensure_synth(load_config("efs", [f"data.train={fresh}", "data.synth.structures=12"]))
    assert (fresh / "manifest.json").is_file() and (fresh / "splits" / "split.json").is_file()


def test_inside_a_job_the_jobs_own_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray refuses a driver runtime env that repeats a key of the job's (matforge cluster submit --env)."""
    import json

    from matforge.pretrain.launcher import JOB_CONFIG_ENV, without_job_settings

    ours = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, "worker_process_setup_hook": "x.y"}
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    assert without_job_settings(ours) == ours
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "4"},
                                                                   "worker_process_setup_hook": "mine.hook"}}))
    assert without_job_settings(ours) == {"env_vars": {"MKL_NUM_THREADS": "1"}}
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {"pip": ["x"]}}))
    assert without_job_settings(ours) == ours
