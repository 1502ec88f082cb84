"""Re-running a run name resumes only the same experiment (pretrain.resume_check), checked on the driver."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from matforge.datasets.splits import write_splits
from matforge.datasets.synth import write_synth
from matforge.training.checkpoint import read_state
from matforge.pretrain.config import ConfigError, load_config, to_dict
from matforge.pretrain.export import find_checkpoint
from matforge.pretrain.launcher import run_pretrain
from matforge.pretrain.resume_check import check_resume, config_changes, flatten

TINY = ["model.name=painn", "model.hyperparameters={hidden: 8, num_interactions: 1, cutoff: 4.0}"]


def _emt(directory: Path, seed: int) -> Path:
    write_synth(directory, 24, seed=seed, max_atoms=12)
    write_splits(directory, [0.75, 0.25], names=["train", "val"], group="trajectory", seed=0)
    return directory


def _config(data: Path, runs: Path, *extra: str):
    return load_config("quickstart", [
        f"data.train={data}", f"data.val={data}", "data.synth.structures=0", "data.max_atoms=48",
        "data.loader_workers=0", "scaling.num_workers=0", f"run.storage_path={runs}", "run.name=run",
        "train.max_steps=4", "train.eval_every=100", "train.checkpoint_every=2", "train.log_every=2", *TINY, *extra,
    ])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, runs): one 4-step local-mode run named ``run`` on 24 EMT structures."""
    root = tmp_path_factory.mktemp("resume")
    data = _emt(root / "data", seed=1)
    run_pretrain(_config(data, root / "runs"), export=False)
    return data, root / "runs"


@pytest.fixture
def copy(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    data, runs = finished
    shutil.copytree(runs, tmp_path / "runs")
    return data, tmp_path / "runs"


def test_flatten_and_changes_split_fixed_from_free():
    saved = {"model": {"name": "painn", "hyperparameters": {"hidden": 8}}, "optim": {"lr": 0.001},
             "train": {"max_steps": 4, "seed": 0}, "data": {"train": "/a", "max_atoms": 48, "properties": []},
             "scaling": {"num_workers": 2}}
    current = {"model": {"name": "painn", "hyperparameters": {"hidden": 16}}, "optim": {"lr": 0.001},
               "train": {"max_steps": 9, "seed": 0}, "data": {"train": "/b", "max_atoms": 48, "properties": []},
               "scaling": {"num_workers": 4}}
    assert flatten(saved)["model.hyperparameters.hidden"] == 8 and flatten(saved)["data.properties"] == []
    fixed, free = config_changes(saved, current)
    assert fixed == ["model.hyperparameters.hidden: 8 -> 16"]
    assert free == ["scaling.num_workers: 2 -> 4", "train.max_steps: 4 -> 9"]   # data.train: compared by content


def test_another_model_or_optimiser_is_refused_and_nothing_is_written(copy):
    data, runs = copy
    before = sorted(p.name for p in (runs / "run").iterdir())
    state_bytes = (find_checkpoint(runs / "run") / "state.json").read_bytes()
    cfg = _config(data, runs, "model.hyperparameters={hidden: 16, num_interactions: 1, cutoff: 4.0}", "optim.lr=0.01")
    with pytest.raises(ConfigError) as exc:
        run_pretrain(cfg, export=False)
    message = str(exc.value)
    assert f"run {runs / 'run'} has a checkpoint at step 4 (checkpoint_000000004)" in message
    assert "model.hyperparameters.hidden: 8 -> 16" in message and "optim.lr: 0.002 -> 0.01" in message
    assert "use another run.name" in message
    assert sorted(p.name for p in (runs / "run").iterdir()) == before
    assert (find_checkpoint(runs / "run") / "state.json").read_bytes() == state_bytes


def test_more_steps_resume_and_the_change_is_reported(copy, capsys):
    data, runs = copy
    result = run_pretrain(_config(data, runs, "train.max_steps=6"), export=False)
    out = capsys.readouterr().out
    assert "resuming from checkpoint_000000004 with changed settings: train.max_steps: 4 -> 6" in out
    assert "resumed at step 4" in out
    state, _ = read_state(result.checkpoint)
    assert state.step == 6 and state.config["train"]["max_steps"] == 6   # the next check compares with this


def test_changed_data_is_refused_moved_data_resumes(copy, tmp_path):
    from matforge.pretrain.data_prep import prepare

    data, runs = copy
    other, provenance = prepare(_config(_emt(tmp_path / "other", seed=2), runs))
    with pytest.raises(ConfigError, match=r"data.train: the training data changed \(manifest sha256 [0-9a-f]{12}"):
        check_resume(runs / "run", to_dict(other), provenance["dataset_manifest_sha256"])
    shutil.copytree(data, tmp_path / "moved")
    moved, provenance = prepare(_config(tmp_path / "moved", runs))
    found = check_resume(runs / "run", to_dict(moved), provenance["dataset_manifest_sha256"])
    # the validation data (the same directory's val split) moved with it: a free change, reported
    assert found is not None and found[0].name == "checkpoint_000000004"
    assert found[1] == [f"data.val: '{data}' -> '{tmp_path / 'moved'}'"]


def test_no_checkpoint_is_a_new_run(tmp_path, finished):
    data, _ = finished
    assert check_resume(tmp_path / "absent", to_dict(_config(data, tmp_path)), "") is None
    (tmp_path / "empty").mkdir()
    assert check_resume(tmp_path / "empty", to_dict(_config(data, tmp_path)), "") is None


def test_another_number_of_workers_is_refused(copy):
    data, runs = copy
    cfg = _config(data, runs, "scaling.num_workers=2")
    with pytest.raises(ConfigError, match=r"scaling.num_workers: 1 worker\(s\) at the checkpoint, 2 now"):
        check_resume(runs / "run", to_dict(cfg), "")
    # 0 (local mode) and 1 are both one rank: the position carries over
    assert check_resume(runs / "run", to_dict(_config(data, runs, "scaling.num_workers=1")), "") is not None
