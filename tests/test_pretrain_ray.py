"""Pre-training on a local Ray instance with 2 gloo workers: failure recovery, resume by name, export.

Integration tests (about a minute each on 2 cores): they start Ray once for the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matforge.datasets.splits import write_splits
from matforge.datasets.synth import write_synth
from matforge.pretrain.config import load_config
from matforge.pretrain.launcher import run_pretrain
from matforge.pretrain.audit import BATCH_LOG_ENV, FAULT_ENV

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def emt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emt") / "emt"
    write_synth(out, 60, seed=11, max_atoms=16)
    write_splits(out, [0.8, 0.2], names=["train", "val"], group="trajectory", seed=0)
    return out


def _config(data: Path, storage: Path, *extra: str):
    return load_config("quickstart", [
        f"data.train={data}", f"data.val={data}", "data.synth.structures=0", "data.max_atoms=48",
        "data.loader_workers=0", "scaling.num_workers=2", f"run.storage_path={storage}", "run.name=ddp",
        "model.hyperparameters={hidden: 8, num_interactions: 1, cutoff: 4.0}", "train.checkpoint_every=4",
        "train.eval_every=4", "train.log_every=2", "optim.warmup_steps=2", *extra,
    ])


def _steps_seen(run_dir: Path, rank: int) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = {}
    for line in (run_dir / "batches" / f"rank{rank}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        seen.setdefault(entry["step"], set()).add(entry["idx_sha1"])
    return seen


def test_sigkilled_worker_recovers_and_rerun_resumes(ray_session, emt_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(BATCH_LOG_ENV, "1")
    monkeypatch.setenv(FAULT_ENV, "rank=1,step=10,mode=kill")
    result = run_pretrain(_config(emt_dir, tmp_path, "train.max_steps=12", "run.max_failures=1",
                                  "scaling.idle_ray_helpers=true", "scaling.measure_sync_wait=true",
                                  "data.calibrate_balance=true"))
    run_dir = result.run_dir
    assert (run_dir / ".fault-injected-rank1-step10").exists()  # the worker really was killed
    assert result.metrics["step"] == 12
    streamed = "".join(capfd.readouterr())
    # progress streams to the driver from rank 0 only; Ray Train's per-report and cleaner chatter does not
    assert streamed.count("[matforge] step 2/12 ") == 1, streamed[-3000:]
    # the checkpoint of step 8, reported two steps before the kill, was registered (pretrain.report_commit)
    assert "[matforge] resumed at step 8 " in streamed, streamed[-3000:]
    assert "Reporting training result" not in streamed
    # the step balance's weights were measured once, on both ranks together, and kept in the checkpoint
    assert streamed.count("[matforge] step balance: ") == 1, streamed[-3000:]
    saved = json.loads((Path(result.checkpoint) / "state.json").read_text())["balance_weights"]
    assert len(saved) == 3 and all(w >= 0 for w in saved) and any(w > 0 for w in saved)
    assert "Failed to query Ray Train Controller" not in streamed
    from matforge.pretrain.helper_priority import idle_policy_supported

    if idle_policy_supported():  # Ray's bookkeeping went idle, and training went on through the kill
        assert "Ray helper processes set to idle CPU priority (and each rank's Ray task-loop thread)" in streamed

    for rank in (0, 1):
        seen = _steps_seen(run_dir, rank)
        assert sorted(seen) == list(range(1, 13))
        # steps replayed after the restart saw exactly the batches of the first attempt
        assert all(len(hashes) == 1 for hashes in seen.values()), seen
    rank0, rank1 = _steps_seen(run_dir, 0), _steps_seen(run_dir, 1)
    assert all(rank0[s] != rank1[s] for s in rank0)  # the ranks train on different batches

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [2, 4, 6, 8, 10, 12]  # no doubling back
    for tag in ("lr", "grad_norm", "throughput/atoms_per_s", "throughput/structures_per_s",
                "time/data_wait_fraction", "memory/peak_mb", "val/forces_mae", "loss/forces"):
        assert tag in acc.Tags()["scalars"], tag

    # launching again under the same name continues from the last checkpoint
    monkeypatch.delenv(FAULT_ENV)
    again = run_pretrain(_config(emt_dir, tmp_path, "train.max_steps=16"))
    assert again.metrics["step"] == 16
    seen = _steps_seen(run_dir, 0)
    assert sorted(seen) == list(range(1, 17)) and all(len(h) == 1 for h in seen.values())

    # the exported backbone loads and computes energies in a process where `import ray` fails
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from ase.build import bulk\n"
        "from matforge.models import MatforgeCalculator\n"
        f"atoms = bulk('Cu', 'fcc', a=3.6, cubic=True); atoms.calc = MatforgeCalculator({str(again.export_dir)!r})\n"
        "e = atoms.get_potential_energy(); f = atoms.get_forces(); s = atoms.get_stress()\n"
        "assert 'ray' not in sys.modules or sys.modules['ray'] is None\n"
        "print(e, abs(f).max(), s.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k not in (FAULT_ENV, BATCH_LOG_ENV)})
    assert out.returncode == 0, out.stderr
    energy, fmax, shape = out.stdout.split(maxsplit=2)
    assert float(fmax) < 1e-3  # fcc Cu: forces vanish by symmetry
    card = json.loads((again.export_dir / "card.json").read_text())
    assert card["provenance"]["steps"] == 16 and "val/forces_mae" in card["provenance"]["metrics"]


@pytest.fixture(scope="module")
def property_emt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EMT structures with two named properties (for the ``combined`` config)."""
    import numpy as np

    from matforge.datasets.convert import convert
    from matforge.datasets.synth import synth_records

    records = []
    for record in synth_records(40, seed=3, max_atoms=16):
        record.properties = {"volume_per_atom": abs(np.linalg.det(record.cell)) / record.natoms,
                             "mean_z": float(np.mean(record.numbers))}
        records.append(record)
    out = tmp_path_factory.mktemp("props") / "props"
    convert([], out, records=records)
    write_splits(out, [0.75, 0.25], names=["train", "val"], group="none", seed=0)
    return out


SMALL = {"painn": "{hidden: 8, num_interactions: 1, cutoff: 4.0}", "cgcnn": "{atom_fea_len: 8, n_conv: 1}"}


@pytest.mark.parametrize("name", ["quickstart", "efs", "denoise_derivative", "denoise_head", "combined"])
def test_every_packaged_config_takes_steps_on_two_workers(ray_session, emt_dir: Path, property_emt_dir: Path,
                                                          tmp_path: Path, name: str) -> None:
    base = load_config(name, ["data.train=x"])
    data = property_emt_dir if name == "combined" else emt_dir
    extra = ["data.properties=[volume_per_atom, mean_z]"] if name == "combined" else []
    cfg = load_config(name, [
        f"data.train={data}", f"data.val={data}", "data.train_split=train", "data.val_split=val",
        "data.synth.structures=0", "data.max_atoms=48", "data.loader_workers=0", "scaling.num_workers=2",
        f"model.hyperparameters={SMALL[base.model.name]}", "train.max_steps=3", "train.eval_every=3",
        "train.checkpoint_every=3", "train.log_every=1", "optim.warmup_steps=1", f"run.storage_path={tmp_path}",
        "denoise.equilibrium_only=false", *extra])
    result = run_pretrain(cfg, export=False)
    assert result.metrics["step"] == 3
    assert any(k.startswith("val/") and k != "val/loss" for k in result.metrics), result.metrics
    assert result.checkpoint is not None
