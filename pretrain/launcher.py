"""Driver side of ``matforge pretrain``: prepare data, start (or join) Ray, run the TorchTrainer.

Locally an embedded Ray instance is started with the machine's CPUs; with ``address`` the run joins
a cluster (``ray://``, ``host:port`` or ``auto``; inside a Ray job, the ``RAY_ADDRESS`` the job server
sets). Before the first step every worker checks that it sees the run directory and the data as the
driver does (:mod:`matforge.pretrain.storage_check`). Ray Train V2 then runs ``scaling.num_workers`` workers
(gloo on CPU, NCCL on GPU), each executing :func:`matforge.pretrain.worker.train_loop_per_worker`.

Fault tolerance: ``FailureConfig(max_failures=run.max_failures)`` restarts the worker group from the
last reported checkpoint when a worker dies; launching again with the same ``run.name`` and
``run.storage_path`` resumes from the run's latest checkpoint (Ray restores its checkpoint manager
from the run directory). After training the final model is exported to ``<run>/export``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matforge.pretrain.audit import BATCH_LOG_ENV, FAULT_ENV
from matforge.pretrain.config import ConfigError, PretrainConfig, to_dict
from matforge.pretrain.report_commit import EMBEDDED_POLL_INTERVAL_S

PASSED_ENV = (FAULT_ENV, BATCH_LOG_ENV)  # test instruments, passed on to the workers

@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path | None
    export_dir: Path | None
    metrics: dict[str, Any]


def worker_env(cfg: PretrainConfig) -> dict[str, str]:
    threads = str(max(1, cfg.scaling.threads_per_worker))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
           # print() in workers goes straight to their stdout (streamed once to the driver); Ray's
           # print patch would also route it through a logger and show every line twice
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    return env


def check_local_gpus(cfg: PretrainConfig, address: str | None) -> None:
    """Refuse a GPU run that this machine cannot hold, before anything starts.

    An embedded Ray instance has only this machine's GPUs. Asked for more (or for any where torch sees
    none), Ray Train would wait for resources that never come: it gives up on a worker group after 60 s
    and tries again, without limit (these retries do not count against ``run.max_failures``). A cluster joined with ``--address`` is not checked: it may have (or add)
    GPU nodes this machine does not see.
    """
    if address or not cfg.scaling.use_gpu:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = max(1, cfg.scaling.num_workers)
    if have < need:
        raise ConfigError(f"scaling.use_gpu=true with scaling.num_workers={cfg.scaling.num_workers} needs {need} "
                          f"GPU(s) on this machine, and torch sees {have}"
                          + (f" (torch {torch.__version__} is a CPU build)" if torch.version.cuda is None else "")
                          + "; set scaling.use_gpu=false, use fewer workers, or join a GPU cluster with --address")


def _announce_resume(run_dir: Path, cfg: PretrainConfig, provenance: dict[str, str]) -> None:
    """Refuse to resume ``run_dir`` under another experiment's settings; say what changed if it resumes."""
    from matforge.pretrain.resume_check import check_resume

    found = check_resume(run_dir, to_dict(cfg), provenance.get("dataset_manifest_sha256", ""))
    if found is None:
        return
    checkpoint, changes = found
    print(f"[matforge] {run_dir} has checkpoints: resuming from {checkpoint.name}"
          + (" with changed settings: " + "; ".join(changes) if changes else ""), flush=True)


JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job server for a job's entrypoint


def without_job_settings(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """``runtime_env`` less what the enclosing Ray job's runtime env already sets.

    Inside a job (``matforge cluster submit --env OMP_NUM_THREADS=4``), Ray refuses a driver runtime env
    that sets the same environment variable or field again; the job's value is the user's choice, so
    it is kept and matforge's default for that key is dropped."""
    import json

    try:
        job = json.loads(os.environ.get(JOB_CONFIG_ENV) or "{}")
    except ValueError:
        return runtime_env
    job_env = (job.get("runtime_env") or {}) if isinstance(job, dict) else {}
    if not isinstance(job_env, dict) or not job_env:
        return runtime_env
    taken = set((job_env.get("env_vars") or {}))
    kept = {k: v for k, v in runtime_env.items() if k == "env_vars" or k not in job_env}
    kept["env_vars"] = {k: v for k, v in runtime_env.get("env_vars", {}).items() if k not in taken}
    return kept


def _init_ray(cfg: PretrainConfig, address: str | None) -> bool:
    """Start (or join) Ray; True when this started an embedded instance of its own."""
    import ray

    if ray.is_initialized():
        return False
    from matforge.pretrain.ray_logging import SETUP_HOOK

    runtime_env: dict[str, Any] = {"env_vars": worker_env(cfg), "worker_process_setup_hook": SETUP_HOOK}
    if address:
        ray.init(address=address, runtime_env=without_job_settings(runtime_env), log_to_driver=True)
        return False
    needed = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    cpus = os.cpu_count() or 1
    if needed > cpus:
        print(f"[matforge] {cfg.scaling.num_workers} workers × {cfg.scaling.cpus_per_worker} CPU exceed the "
              f"machine's {cpus} cores; oversubscribing", flush=True)
    # an embedded instance has no spot nodes to be preempted: skip Train's preemption-watcher actor
    runtime_env["env_vars"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    # the controller collects reports (and so registers checkpoints) at each poll (pretrain.report_commit)
    runtime_env["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(EMBEDDED_POLL_INTERVAL_S)
    ray.init(num_cpus=max(cpus, int(needed + 0.999)), include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=True, configure_logging=True, logging_level="WARNING",
             logging_config=ray.LoggingConfig(log_level="WARNING"))
    return True


def run_pretrain(cfg: PretrainConfig, address: str | None = None, export: bool = True,
                 launched_at: float | None = None) -> PretrainResult:
    """Run (or resume) the pre-training ``cfg`` describes; return where its outputs are."""
    launched_at = time.time() if launched_at is None else launched_at
    # inside a Ray job's entrypoint (matforge cluster submit) RAY_ADDRESS names the job's cluster; ray.init
    # reads it too, so an embedded instance could not start there anyway
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_local_gpus(cfg, address)
    from matforge.pretrain.data_prep import prepare

    cfg, provenance = prepare(cfg)
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    _announce_resume(run_dir, cfg, provenance)
    from matforge.pretrain.storage_check import write_marker

    storage_token = write_marker(run_dir)
    embedded = _init_ray(cfg, address) if cfg.scaling.num_workers > 0 else False
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from matforge.pretrain.worker import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg), "provenance": provenance, "launched_at": launched_at,
                           "embedded_ray": embedded, "storage_token": storage_token},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=RunConfig(name=cfg.run.name, storage_path=cfg.run.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             # locally Ray runs without its dashboard, so Train's placement-group
                             # cleaner cannot reach the state API and warns every few seconds
                             logging_config=LoggingConfig(log_level="WARNING" if address else "ERROR")),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
    )
    result = trainer.fit()
    checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else None
    export_dir = None
    if export and checkpoint is not None:
        from matforge.pretrain.export import export as export_backbone

        export_dir = export_backbone(checkpoint, run_dir / "export")
    return PretrainResult(run_dir=run_dir, checkpoint=checkpoint, export_dir=export_dir, metrics=dict(result.metrics or {}))
