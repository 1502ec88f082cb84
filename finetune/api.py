"""``finetune(...)``: one fine-tuning run, from a backbone and labelled structures to a model,
metrics, test predictions and a parity plot. ``matforge finetune`` calls it with the same arguments.

Steps::

    data   → ShardDataset (a shard directory, or any source converted once into the cache)
           → train / val / test views (fractions grouped by trajectory or composition, the shard
             directory's splits, or explicit id lists), optional train_size subsample
    parent → model (released name | backbone dir | CGCNN .pth.tar | none + arch), elements checked
           → new head for the target (the parent's other heads dropped), normaliser fitted on the
             training split (regression) or reference energies refitted (potentials)
           → strategy: full | freeze:K [--reinit-rest] | probe | lrdecay:F
    train  → in-memory graphs, AdamW + warm-up + cosine/plateau, early stopping (best epoch
             restored), optional EMA        (matforge.finetune.trainer)
    test   → metrics, predictions, parity plot, the model in the backbone format (matforge.finetune.outputs)

Metrics returned (and written to ``metrics.json``): ``task``, ``target``, ``units``,
``test_mae``, ``test_rmse``, ``test_r2`` (regression and potentials: energy per atom) or
``test_roc_auc``, ``test_accuracy``, ``test_log_loss`` (classification), the same with ``val_``
(the restored best epoch), potentials' ``test_forces_mae`` / ``test_stress_mae`` (eV/Å, eV/Å³) and
``test_energy_per_atom_mae``; ``train_size``, ``val_size``, ``test_size``, ``skipped`` (records
without the target, per side), ``trainable_parameters``, ``total_parameters``, ``best_epoch``,
``epochs_run``, ``wall_s``, ``strategy``, ``backbone``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from matforge.finetune.errors import FinetuneError

TASKS = ("regression", "classification")


def _task_of(target: str, task: str) -> str:
    from matforge.finetune.model_setup import POTENTIAL_TARGETS

    if target in POTENTIAL_TARGETS:
        return "potential"
    if task not in TASKS:
        raise FinetuneError(f"task {task!r} is not one of {', '.join(TASKS)} (potentials: --target efs|energy_forces)")
    return task


def _split_description(split: Any, group: str, seed: int, train_size: int | None,
                       stores: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(split, Mapping):
        kind: Any = "explicit ids"
    else:
        kind = split if isinstance(split, str) else ",".join(str(v) for v in split)
    ids = {side: store.ids for side, store in stores.items()}
    digest = hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()
    return {"split": kind, "group": group, "seed": seed, "train_size": train_size,
            "sizes": {side: len(store) for side, store in stores.items()}, "ids_sha256": digest}


def finetune(backbone: str | os.PathLike, data: str | os.PathLike | Sequence[str | os.PathLike], target: str,
             out: str | os.PathLike | None = None, *,
             arch: str | None = None, hyperparameters: dict[str, Any] | None = None,
             task: str = "regression", pooling: str = "mean", loss: str = "mae", units: str = "",
             strategy: str = "full", reinit_rest: bool = False,
             split: str | Sequence[float] | Mapping[str, Sequence[str]] = "0.8,0.1,0.1",
             split_group: str = "trajectory", train_size: int | None = None,
             epochs: int = 300, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0,
             warmup_epochs: int = 5, schedule: str = "cosine", patience: int = 100, ema_decay: float | None = None,
             seed: int = 0, format: str = "auto", options: Mapping[str, str] | None = None,
             allow_new_elements: bool = False, cache_dir: str | os.PathLike | None = None,
             threads: int | None = None, progress: bool = True, tensorboard: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``backbone`` on ``target`` of ``data``; write ``out`` (if given); return the metrics.

    See the module docstring for the steps and the returned keys, :mod:`matforge.finetune.strategies`
    for ``strategy``, :mod:`matforge.finetune.split_select` for ``split``/``train_size``,
    :mod:`matforge.finetune.model_setup` for ``backbone``/``arch``. ``units`` labels the target in
    the card, metrics and plot; ``threads`` sets torch's intra-op threads.
    """
    import torch

    from matforge.datasets.graphs import GraphConfig
    from matforge.finetune.data_source import prepare_data
    from matforge.finetune.graph_store import GraphStore
    from matforge.finetune.model_setup import (attach_head, check_elements, keep_new_embeddings_trainable,
                                               load_parent, model_energies_without_refs, record_training_elements,
                                               refit_element_references)
    from matforge.finetune.objective import TaskObjective
    from matforge.finetune.outputs import (check_target, json_safe, parity_plot, publish, staging_beside,
                                           write_history, write_json, write_predictions)
    from matforge.finetune.split_select import select_splits
    from matforge.finetune.strategies import Strategy, count_parameters
    from matforge.finetune.trainer import TrainOptions, train
    from matforge.models.fitting import view_elements
    from matforge.models.losses import LOSS_KINDS

    started = time.perf_counter()
    task = _task_of(str(target), task)
    if loss not in LOSS_KINDS:
        raise FinetuneError(f"loss {loss!r} is not one of {', '.join(LOSS_KINDS)}")
    plan = Strategy.parse(strategy, reinit_rest)
    train_options = TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                 warmup_epochs=warmup_epochs, schedule=schedule, patience=patience,
                                 ema_decay=ema_decay, seed=seed, progress=progress)
    train_options.check()
    out_path = check_target(out, overwrite) if out is not None else None
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)  # every random draw below (fresh heads, new embedding rows) repeats for a seed

    dataset = prepare_data(data, format, options, cache_dir, verbose=progress)
    views = select_splits(dataset, split, split_group, seed, train_size)
    model, parent = load_parent(backbone, arch, hyperparameters, seed)
    model = model.float()
    where = str(dataset.directory)
    data_elements = view_elements(dataset) or dataset.manifest.elements
    new_elements = check_elements(model, data_elements, allow_new_elements, where)
    record_training_elements(model, data_elements)
    dropped = attach_head(model, task, str(target), pooling, units)
    config = GraphConfig(cutoff=model.backbone.cutoff, max_neighbors=model.backbone.max_neighbors,
                         properties=() if task == "potential" else (str(target),), dtype="float32", on_isolated="flag")
    stores = {side: GraphStore(view, config, task, str(target), side) for side, view in views.items()}
    objective = TaskObjective(task, str(target), loss)
    if task == "potential":
        assert objective.energy_objective is not None
        if objective.energy_objective.needs_forces and not stores["train"].has_forces:
            raise FinetuneError(f"{where}: target {target!r} trains on forces, but no training record has forces")
        if objective.energy_objective.needs_stress and not stores["train"].has_stress:
            raise FinetuneError(f"{where}: target 'efs' trains on stress, but no training record has a stress; "
                                "use --target energy_forces")

    normaliser: dict[str, Any] = {}
    torch.manual_seed(seed)
    if task == "regression":
        values = stores["train"].values
        std = float(values.std())
        if not std > 1e-12:
            raise FinetuneError(f"{where}: target {target!r} is constant ({values[0]:g}) on the {len(values)} "
                                "training records: nothing to learn")
        normaliser = {"mean": float(values.mean()), "std": std}
        model.heads["properties"].set_normalization([normaliser["mean"]], [std])
        objective.std = std
    elif task == "classification":
        labels = stores["train"].values
        if labels.min() == labels.max():
            raise FinetuneError(f"{where}: every training record has class {labels[0]:g} for {target!r}: "
                                "a classifier needs both classes")
    else:
        train_store = stores["train"]
        has_energy = np.isfinite(train_store.energies)
        if "energy" in dropped or not parent.card.get("heads", {}).get("energy"):
            # a new energy head: scale and shift from the data, as pre-training does
            fitted = objective.energy_objective.fit(views["train"], model)  # type: ignore[union-attr]
            normaliser = {"energy_scale": fitted["energy_scale"], "energy_shift": fitted["energy_shift"]}
        model_e = model_energies_without_refs(model, (b for _, b in train_store.batches(256)))
        normaliser["refit"] = refit_element_references(
            model, [z for z, ok in zip(train_store.numbers, has_energy) if ok], train_store.energies[has_energy],
            model_e[has_energy])
    plan.apply(model, seed)
    extra = keep_new_embeddings_trainable(model) if new_elements else []
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise FinetuneError(f"strategy {plan} leaves no weight to train")

    staging = staging_beside(out_path) if out_path is not None else None
    try:
        writer = None
        if staging is not None and tensorboard:
            from matforge.training.tensorboard import open_writer

            writer = open_writer(staging / "tensorboard", required=False)
        try:
            result = train(model, objective, plan, stores["train"], stores["val"], train_options, writer, extra)
        finally:
            if writer is not None:
                writer.close()
        val = objective.metrics(stores["val"], objective.predict(model, stores["val"]))
        tested = objective.predict(model, stores["test"])
        test = objective.metrics(stores["test"], tested)
        metrics: dict[str, Any] = {
            "task": task, "target": str(target), "units": units, "backbone": str(backbone),
            "strategy": str(plan), **{f"test_{k}": v for k, v in test.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "train_size": len(stores["train"]), "val_size": len(stores["val"]), "test_size": len(stores["test"]),
            "skipped": {side: s.skipped for side, s in stores.items()},
            "trainable_parameters": trainable, "total_parameters": total,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "seed": seed,
            "new_elements": new_elements, "dropped_heads": dropped,
        }
        metrics["wall_s"] = time.perf_counter() - started
        if staging is not None and out_path is not None:
            from matforge.models.backbone_file import save

            from matforge.datasets.shards import file_sha256

            provenance = {
                "source": "matforge finetune", "parent": parent.provenance(), "strategy": str(plan),
                "task": task, "target": str(target), "units": units, "pooling": pooling, "loss": loss,
                "dropped_heads": dropped, "normaliser": normaliser,
                "data": {"directory": where, "manifest_sha256": file_sha256(Path(where) / "manifest.json")},
                "split": _split_description(split, split_group, seed, train_size, stores),
                "training": {k: v for k, v in vars(train_options).items() if k != "progress"},
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            }
            model.elements = sorted(set(model.elements))
            saved = save(model, staging / ".model", provenance=json_safe(provenance))
            for item in saved.iterdir():  # card.json and model.safetensors at the top of DIR
                os.replace(item, staging / item.name)
            saved.rmdir()
            write_json(staging / "metrics.json", metrics)
            write_json(staging / "split.json", {side: s.ids for side, s in stores.items()})
            write_predictions(staging / "predictions.csv", stores["test"].ids, stores["test"].values,
                              tested["prediction"])
            write_history(staging / "history.csv", result.history)
            what = "energy per atom" if task == "potential" else str(target)
            parity_plot(staging / "parity.png", stores["test"].values, tested["prediction"],
                        f"{what}: test MAE {test.get('mae', float('nan')):.4g} {units}".strip(), units)
            publish(staging, out_path)
            staging = None
        if progress:
            print(f"[matforge] {plan}: best epoch {result.best_epoch} of {result.epochs_run}, "
                  + ", ".join(f"test {k} {v:.4g}" for k, v in test.items()), file=sys.stderr, flush=True)
        return metrics
    finally:
        if staging is not None and staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
