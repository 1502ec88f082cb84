"""The pre-training runs of both experiments, through ``matforge pretrain``'s own path (Ray Train).

Each run is a packaged pre-training config (``efs`` for energy / energy_forces / efs, the denoising
configs for denoising, ``combined`` for exp2) with dotted overrides that put every run of an
experiment on the same data, backbone and step budget (:class:`matforge.experiments.plan.PretrainBudget`).
It is launched with :func:`matforge.pretrain.launcher.run_pretrain` in this process, so the runs
share one embedded Ray instance (started by the first, shut down by :func:`shutdown_ray`). Layout::

    OUT/pretrain/<label>/          the run directory (checkpoints, TensorBoard): a rerun resumes it
    OUT/pretrain/<label>.json      wall time of each session that trained it, steps, last metrics
    OUT/backbones/<label>/         the exported backbone (card.json + model.safetensors)

A run is done when its latest checkpoint holds ``steps`` steps; an export when its card exists.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matforge.experiments.plan import BackbonePlan, PretrainBudget

CONFIG_OF = {"energy": "efs", "energy_forces": "efs", "efs": "efs", "denoise_derivative": "denoise_derivative",
             "denoise_head": "denoise_head", "combined": "combined"}


@dataclass(frozen=True)
class PretrainRun:
    """One pre-training: ``label`` (``exp1-efs``, ``exp2-combined``), objective, data, backbone, budget."""

    experiment: str
    name: str
    objective: str
    data: str
    train_split: str | None
    val_split: str | None
    backbone: BackbonePlan
    budget: PretrainBudget
    properties: tuple[str, ...] = ()
    denoise_equilibrium_only: bool = False   # denoising objectives: noise relaxed frames only

    @property
    def label(self) -> str:
        return f"{self.experiment}-{self.name}"

    def overrides(self, out: Path) -> list[str]:
        """The ``key=value`` overrides of this run onto its packaged config."""
        b = self.budget
        items = [f"objective={self.objective}", f"data.train={self.data}", "data.synth.structures=0",
                 f"data.train_split={_yaml(self.train_split)}",
                 f"data.val={self.data if self.val_split else 'null'}", f"data.val_split={_yaml(self.val_split)}",
                 f"data.max_atoms={b.max_atoms}", "data.loader_workers=-1",
                 f"model.name={self.backbone.name}", f"model.hyperparameters={json.dumps(self.backbone.hyperparameters)}",
                 f"train.max_steps={b.steps}", f"train.eval_every={min(b.eval_every, b.steps)}",
                 f"train.checkpoint_every={min(b.checkpoint_every, b.steps)}", f"train.seed={b.seed}",
                 f"optim.lr={b.lr}", f"optim.warmup_steps={b.warmup_steps}", f"scaling.num_workers={b.num_workers}",
                 f"run.storage_path={out / 'pretrain'}", f"run.name={self.label}"]
        if self.properties:
            items.append(f"data.properties={json.dumps(list(self.properties))}")
        if self.objective.startswith("denoise"):
            items.append(f"denoise.equilibrium_only={str(self.denoise_equilibrium_only).lower()}")
        return items

    def command(self, out: Path) -> str:
        """The equivalent ``matforge pretrain`` command line (for the report)."""
        import shlex

        return shlex.join(["matforge", "pretrain", "--config", CONFIG_OF[self.objective], "--no-export",
                           *self.overrides(out)])


def _yaml(value: str | None) -> str:
    return "null" if value is None else value


def run_dir(out: Path, run: PretrainRun) -> Path:
    return out / "pretrain" / run.label


def backbone_dir(out: Path, run: PretrainRun) -> Path:
    return out / "backbones" / run.label


def timing_file(out: Path, run: PretrainRun) -> Path:
    return out / "pretrain" / f"{run.label}.json"


def trained_steps(out: Path, run: PretrainRun) -> int:
    """Steps of the run's latest checkpoint (0 when none)."""
    from matforge.pretrain.export import find_checkpoint
    from matforge.training.checkpoint import read_state

    try:
        state, _ = read_state(find_checkpoint(run_dir(out, run)))
    except (FileNotFoundError, ValueError):
        return 0
    return int(state.step)


def pretrain_done(out: Path, run: PretrainRun) -> bool:
    return trained_steps(out, run) >= run.budget.steps


def export_done(out: Path, run: PretrainRun) -> bool:
    return (backbone_dir(out, run) / "card.json").is_file()


def pretrain(out: Path, run: PretrainRun) -> None:
    """Run (or resume) the pre-training; add this session's wall time to ``<label>.json``."""
    from matforge.pretrain.config import load_config
    from matforge.pretrain.launcher import run_pretrain

    cfg = load_config(CONFIG_OF[run.objective], run.overrides(out))
    t0 = time.perf_counter()
    result = run_pretrain(cfg, export=False)
    wall = time.perf_counter() - t0
    path = timing_file(out, run)
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
    record["sessions"].append({"wall_s": wall, "steps_after": trained_steps(out, run)})
    record.update({"label": run.label, "objective": run.objective, "arch": run.backbone.name, "steps": run.budget.steps,
                   "wall_s": sum(s["wall_s"] for s in record["sessions"]),
                   "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}})
    from matforge.finetune.bench_results import write_json_atomic

    write_json_atomic(path, record)


def export(out: Path, run: PretrainRun) -> None:
    """Export the run's latest checkpoint to ``OUT/backbones/<label>``."""
    from matforge.pretrain.export import export as export_backbone

    export_backbone(run_dir(out, run), backbone_dir(out, run))


def read_timing(out: Path, run: PretrainRun) -> dict[str, Any]:
    path = timing_file(out, run)
    return json.loads(path.read_text()) if path.is_file() else {}


def shutdown_ray() -> None:
    """Shut down the Ray instance the runs started in this process, if any."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
