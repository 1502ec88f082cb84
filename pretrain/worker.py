"""The training loop each Ray Train worker runs (``TorchTrainer(train_loop_per_worker=...)``).

One step on every rank::

    batch  ← this rank's next pre-built atom-budget batch (no collective; the sampler deals batches,
             each step's work balanced across ranks by an estimated cost per structure, whose weights
             are measured once at the start: matforge.pretrain.cost_calibration)
    counts ← start all_reduce(objective.counts(batch))     (label counts, known from the batch alone)
    out    ← DDP(model)(batch, forces=…, stress=…, create_graph=…)        (autograd EFS)
    terms  ← objective.terms(out, batch)                                  (sum, count) per term
    loss   ← Σ_k w_k · sum_k · W / counts_k     → backward → DDP averages → exact global mean
             (the waits for counts and gradients timed: matforge.pretrain.sync_timing)
    clip, AdamW step, lr ← schedule(step)

The counts' all-reduce runs while the forward pass does, so a step has one point where the ranks
wait for each other (DDP's gradient all-reduce at the end of the backward) instead of two: every
such point costs the difference between the ranks' times up to it: on a shared 2-core machine the
blocking count all-reduce after the forward measured 3–7 ms of a ~70 ms step on each rank.

Around it: normalisation fitted once on rank 0 and broadcast (skipped on resume: it lives in the
model's buffers), validation every ``eval_every`` steps on the unwrapped model (each rank its share
of the val batches, sums and counts all-reduced), TensorBoard + progress on rank 0 every ``log_every``
steps (the window's loss sums stay on the device until then and go out with the throughput counters
in one all-reduce: no step waits for the device to report a number), and a checkpoint
every ``checkpoint_every`` steps through ``ray.train.report`` (rank 0 writes it; all ranks report,
since report is a barrier).
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from matforge.pretrain.audit import BATCH_LOG_ENV, BatchLog, maybe_inject_fault
from matforge.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from matforge.pretrain.config import PretrainConfig, from_dict
from matforge.pretrain.distributed import broadcast_json, start_all_reduce_sum
from matforge.pretrain.evaluation import Evaluator
from matforge.pretrain.monitor import LossWindow, Monitor, ThroughputMeter, peak_memory_mb, reduce_window
from matforge.training.schedule import LRSchedule, build_optimizer
from matforge.training.weight_gradients import backward_to_weights, trainable_weights
from matforge.pretrain.storage_check import check_worker_storage
from matforge.pretrain.sync_timing import attach_sync_timer


def build_objective(cfg: PretrainConfig):
    from matforge.models.objectives import build_objective as _build

    return _build(
        cfg.objective, loss_kind=cfg.loss.kind,
        weights={"energy": cfg.loss.energy, "forces": cfg.loss.forces, "stress": cfg.loss.stress, "noise": cfg.loss.noise},
        noise_std=cfg.denoise.std, equilibrium_only=cfg.denoise.equilibrium_only,
        properties=list(cfg.data.properties), property_weights=dict(cfg.loss.properties), seed=cfg.train.seed,
    )


def build_model(cfg: PretrainConfig, objective: Any, elements: list[int]):
    """Backbone from the registry + the heads the objective needs, in the run's dtype."""
    from matforge.models.model import AtomisticModel
    from matforge.models.registry import create

    backbone = create(cfg.model.name, **cfg.model.hyperparameters)
    model = AtomisticModel(backbone, objective.build_heads(backbone), elements=elements)
    return model.to(torch.float64 if cfg.train.dtype == "float64" else torch.float32)


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """Ray Train entry point; ``payload = {"config": to_dict(cfg), "provenance": {...}}``."""
    import ray.train
    import ray.train.torch

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import make_loader
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.models.objectives import combine
    from matforge.pretrain.ray_logging import quiet_ray_train_loggers

    import warnings

    quiet_ray_train_loggers()  # again here: Ray Train's worker logging set-up resets what the hook set

    # DDP notes that a (1, F) weight's gradient from the double backward is transposed; harmless
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    cfg = from_dict(payload["config"])
    provenance: dict[str, Any] = dict(payload.get("provenance", {}))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, cfg.scaling.threads_per_worker))
    device = ray.train.torch.get_device()
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    # Ray Train's local mode (num_workers=0) runs without Ray: asking it for a node would start one
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    print(f"[matforge] rank {rank} of {world} on node {node_id} host {socket.gethostname()}", flush=True)
    check_worker_storage(run_dir, payload.get("storage_token"), _dataset_digests(provenance), rank, node_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)

    train_records = open_dataset(cfg.data.train, split=cfg.data.train_split)
    objective = build_objective(cfg)
    # on its device before the optimizer exists, so restored optimizer moments land there too
    model = build_model(cfg, objective, train_records.manifest.elements).to(device)
    backbone = model.backbone
    graph_config = GraphConfig(cutoff=backbone.cutoff, max_neighbors=backbone.max_neighbors,
                               properties=tuple(objective.properties), dtype=cfg.train.dtype)
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas))

    local_mode = cfg.scaling.num_workers == 0
    checkpoint = ray.train.get_checkpoint()
    local_checkpoint = _latest_local_checkpoint(run_dir) if local_mode and checkpoint is None else None
    if checkpoint is not None or local_checkpoint is not None:
        if local_checkpoint is not None:
            state = load_checkpoint(local_checkpoint, model, optimizer)
        else:
            with checkpoint.as_directory() as directory:
                state = load_checkpoint(Path(directory), model, optimizer)
        objective.apply_fit(model, state.fitted)  # also restores what is not a buffer (model.elements)
        state.config = payload["config"]  # the driver checked that only free keys changed (pretrain.resume_check)
        if state.world_size != world:
            print(f"[matforge] rank {rank}: resuming a {state.world_size}-worker run on {world} workers; "
                  "batches are dealt anew from the saved epoch position", flush=True)
        if rank == 0:
            print(f"[matforge] resumed at step {state.step} (epoch {state.epoch}, batch {state.batch_index})", flush=True)
    else:
        state = TrainState(config=payload["config"], data_manifest_sha256=provenance.get("dataset_manifest_sha256", ""))
        fitted = objective.fit(train_records, model) if rank == 0 else None
        state.fitted = broadcast_json(fitted, device)
        if rank != 0:
            objective.apply_fit(model, state.fitted)
    transform = objective.record_transform()
    cost = None
    if cfg.data.balance_ranks and world > 1:
        from matforge.datasets.step_balance import structure_costs

        from matforge.pretrain.cost_calibration import run_balance_weights

        state.balance_weights = run_balance_weights(cfg, state, model, objective, train_records, graph_config,
                                                    transform, device, world, rank)
        cost = structure_costs(train_records.natoms, train_records.volume, backbone.cutoff, state.balance_weights)
    inert = freeze_inert_parameters(model, objective)
    if inert and rank == 0:
        print(f"[matforge] objective {objective.name!r} cannot train {', '.join(inert)}: kept fixed", flush=True)
    ddp_model = ray.train.torch.prepare_model(
        model, move_to_device=False, parallel_strategy_kwargs=_ddp_options(model)) if world > 1 else model
    trainable = trainable_weights(model)   # the backward pass stops at these (training/weight_gradients.py)
    state.world_size = world
    from matforge.datasets.prefetch import ThreadPrefetch, resolve_loader_workers, resolve_prefetch_mode

    busy_cores = ctx.get_local_world_size() * max(1, cfg.scaling.threads_per_worker)  # training threads here
    cores = len(os.sched_getaffinity(0))
    loader_workers = resolve_loader_workers(cfg.data.loader_workers, busy_cores, cores, device.type)
    loader, sampler = make_loader(
        train_records, graph_config, cfg.data.max_atoms, shuffle=True, seed=cfg.train.seed, world_size=world,
        rank=rank, num_workers=loader_workers, epoch=state.epoch, start_batch=state.batch_index, cost=cost,
        cache_mb=cfg.data.graph_cache_mb, **({"transform": transform} if transform is not None else {}),
    )
    prefetch: ThreadPrefetch | None = None
    prefetch_mode = resolve_prefetch_mode(cfg.data.prefetch_thread, loader_workers, busy_cores, cores, device.type)
    if prefetch_mode != "none":
        loader = prefetch = ThreadPrefetch(loader, next_pass=lambda: sampler.set_epoch(sampler.epoch + 1, 0))
    if rank == 0:
        where = "in-process; prefetch thread: " + prefetch_mode if loader_workers == 0 else \
            f"by {loader_workers} DataLoader process(es) per worker"
        print(f"[matforge] batches built {where}", flush=True)
    if len(sampler) == 0:
        raise ValueError(f"{cfg.data.train}: no training batches for rank {rank} of {world} "
                         f"(too few records for {world} workers?)")
    evaluator = Evaluator(None, objective, device)
    if cfg.data.val:
        from matforge.datasets.sampler import strided_share

        val_records = open_dataset(cfg.data.val, split=cfg.data.val_split)
        share = val_records.subset(strided_share(len(val_records), world, rank))  # each structure once
        val_loader: Any = []
        if len(share):
            val_loader, _ = make_loader(
                share, graph_config, cfg.data.max_atoms, shuffle=False, seed=cfg.train.seed, num_workers=0,
                **({"transform": transform} if transform is not None else {}),
            )
        evaluator = Evaluator(val_loader, objective, device)

    schedule = LRSchedule(optimizer, cfg.optim.lr, cfg.train.max_steps, cfg.optim.warmup_steps, cfg.optim.schedule,
                          cfg.optim.min_lr_ratio, cfg.optim.plateau_factor, cfg.optim.plateau_patience)
    if state.schedule:
        schedule.load_state_dict(state.schedule)
    monitor = Monitor(run_dir / "tensorboard", enabled=rank == 0, start_step=state.step, max_steps=cfg.train.max_steps)
    if state.step == 0:
        monitor.hparams(payload["config"], state.fitted)
    batch_log = BatchLog(run_dir / "batches" / f"rank{rank}.jsonl" if os.environ.get(BATCH_LOG_ENV) else None)
    sync_timer = attach_sync_timer(ddp_model, device, enabled=cfg.scaling.measure_sync_wait)
    meter = ThroughputMeter(measures_sync=sync_timer.measures)
    window = LossWindow(device)
    weights = objective.weights()
    grad_norm = torch.tensor(0.0)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    metrics: dict[str, float] = dict(state.metrics)
    launched_at = float(payload.get("launched_at", time.time()))
    first_step_logged = False

    idle_helpers = bool(payload.get("embedded_ray")) and cfg.scaling.idle_ray_helpers
    _idle_ray_helpers(idle_helpers, rank, world, device)
    model.train()
    while state.step < cfg.train.max_steps:
        for batch, wait in _timed(loader):
            t1 = time.perf_counter()
            step = state.step + 1
            maybe_inject_fault(rank, step, run_dir)
            lr = schedule.step_to(step)
            batch = batch.to(device)
            if prefetch is not None and prefetch_mode == "step":
                prefetch.release()    # the next batch is built through this step, filling its waits
            batch_log.write(step, state.epoch, state.batch_index, batch.idx)
            local_counts = objective.counts(batch)
            names = list(local_counts)
            pending_counts = start_all_reduce_sum(torch.stack([local_counts[n] for n in names]).to(device))
            out = ddp_model(batch, forces=objective.needs_forces, stress=objective.needs_stress,
                            create_graph=objective.create_graph)
            terms = objective.terms(out, batch)
            if sorted(terms) != sorted(names):
                raise RuntimeError(f"objective {objective.name!r}: counts() names {names} but terms() {list(terms)}")
            loss = combine(terms, weights, dict(zip(names, sync_timer.wait_counts(pending_counts))), world)
            optimizer.zero_grad(set_to_none=True)
            if prefetch is not None and prefetch_mode == "backward":
                prefetch.release()    # the next batch is built while the backward runs without the GIL
            backward_to_weights(loss, trainable)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            state.step = step
            state.batch_index += 1
            meter.add(int(batch.num_nodes), int(batch.num_graphs), wait, time.perf_counter() - t1,
                      sync_timer.take_step())
            window.add(terms)

            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                logged = reduce_window(window, meter, weights, world)
                logged.update({"lr": lr, "grad_norm": float(grad_norm), "memory/peak_mb": peak_memory_mb(device),
                               "epoch": state.epoch})
                if not first_step_logged:
                    _idle_ray_helpers(idle_helpers, rank, world, device)  # helpers Ray started since
                    # wall time from the driver's launch to the end of this attempt's first logged window
                    logged["time/launch_to_first_log_s"] = time.time() - launched_at
                    first_step_logged = True
                monitor.scalars(step, logged)
                monitor.progress(step, logged)
                metrics.update({k: v for k, v in logged.items() if k != "epoch"})

            if step % cfg.train.eval_every == 0 or step == cfg.train.max_steps:
                val = evaluator(model)
                if val:
                    monitor.scalars(step, val)
                    metrics.update(val)
                    schedule.observe(val["val/loss"])
                    if rank == 0:
                        print(f"[matforge] validation step {step}: "
                              + "  ".join(f"{k[4:]} {v:.4g}" for k, v in val.items()), flush=True)

            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.max_steps:
                state.schedule = schedule.state_dict()
                state.metrics = dict(metrics)
                _report(model, optimizer, state, cfg, provenance, rank, metrics, run_dir if local_mode else None)
            if state.step >= cfg.train.max_steps:
                break
        else:  # this rank's batches of the epoch are exhausted (all ranks have the same count)
            state.epoch += 1
            state.batch_index = 0
            if prefetch is None:  # the prefetch thread moved the sampler on already (its next_pass)
                sampler.set_epoch(state.epoch, 0)
    monitor.close()
    batch_log.close()


def freeze_inert_parameters(model: torch.nn.Module, objective: Any) -> list[str]:
    """Freeze what the objective's loss cannot reach (``objective.inert_parameters``, e.g. the energy
    head's output bias under derivative denoising), so every trained parameter gets a gradient on
    every rank, as DistributedDataParallel requires; return their names."""
    inert = {id(p) for p in objective.inert_parameters(model)}
    names = []
    for name, p in model.named_parameters():
        if id(p) in inert:
            p.requires_grad_(False)
            names.append(name)
    return names


def _ddp_options(model: torch.nn.Module) -> dict[str, Any]:
    """DistributedDataParallel options for ``model``.

    DDP's default broadcasts every buffer from rank 0 at the start of each forward: one blocking
    collective per step. The buffers here (element references, normalisers, radial constants) are fitted
    once, broadcast before training and constant after, so that broadcast is skipped, unless a module
    updates buffers in training (BatchNorm running statistics), where rank 0's statistics stay the ones
    every rank uses, as DDP does by default.
    """
    updates_buffers = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return {"forward_sync_buffers": updates_buffers, "gradient_as_bucket_view": True}


def _idle_ray_helpers(enabled: bool, rank: int, world: int, device: torch.device) -> None:
    """Ray's bookkeeping actors of an embedded instance, and each rank's own task-loop thread, at idle
    priority (every rank calls this)."""
    if enabled:
        from matforge.pretrain.helper_priority import idle_helpers_of_this_run, idle_task_loop_thread

        loop_idled = idle_task_loop_thread()
        changed = idle_helpers_of_this_run(rank, world, device)
        if changed:
            print(f"[matforge] {len(changed)} Ray helper processes set to idle CPU priority"
                  + (" (and each rank's Ray task-loop thread)" if loop_idled else ""), flush=True)


def _timed(loader: Any):
    """Yield ``(batch, seconds spent waiting for it)``."""
    iterator = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t0


def _dataset_digests(provenance: dict[str, Any]) -> dict[str, str]:
    """``{directory: manifest sha256}`` of the datasets the driver opened (see pretrain.data_prep)."""
    found = {provenance.get("train", ""): provenance.get("dataset_manifest_sha256", "")}
    found[provenance.get("val", "")] = provenance.get("val_manifest_sha256", "")
    return {directory: digest for directory, digest in found.items() if directory and digest}


def _latest_local_checkpoint(run_dir: Path) -> Path | None:
    from matforge.pretrain.export import find_checkpoint

    try:
        return find_checkpoint(run_dir)
    except FileNotFoundError:
        return None


def _report(model: Any, optimizer: Any, state: TrainState, cfg: PretrainConfig, provenance: dict[str, Any],
            rank: int, metrics: dict[str, float], local_run_dir: Path | None = None) -> None:
    """Checkpoint (rank 0) and report (every rank: ``ray.train.report`` is a barrier).

    In Ray Train's local mode (no workers) Ray does not persist checkpoints, so they are written
    straight into the run directory as ``checkpoint_<step>`` and only the last K are kept.
    """
    import shutil

    import ray.train

    from matforge.pretrain.report_commit import wait_until_report_taken

    finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    report = {"step": state.step, "epoch": state.epoch, **finite}
    if rank != 0:
        ray.train.report(report)
        wait_until_report_taken(expected=True)  # the checkpoint is registered once every rank's report is taken
        return
    card_provenance = {**provenance, "objective": cfg.objective, "steps": state.step, "metrics": finite,
                       "normalisation": state.fitted, "run": cfg.run.name}
    if local_run_dir is not None:
        target = local_run_dir / f"checkpoint_{state.step:09d}"
        partial = local_run_dir / f".checkpoint_{state.step:09d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_checkpoint(partial, model, optimizer, state, provenance=card_provenance)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        kept = sorted(p for p in local_run_dir.glob("checkpoint_*") if p.is_dir())
        for old in kept[: max(0, len(kept) - cfg.train.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(target)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), model, optimizer, state, provenance=card_provenance)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    wait_until_report_taken(expected=True)
