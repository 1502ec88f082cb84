"""``matforge bench train DIR``: the EFS training step against the energy-only step, per backbone.

On the records of a shard directory, for each backbone (registry defaults, or the values given with
``--hyperparameter KEY=VALUE``, applied to every backbone that takes that argument), the pre-training
step of ``matforge pretrain`` with objective ``energy`` and with ``efs`` (forces −∂E/∂r and stress
(1/V) ∂E/∂ε by autograd with ``create_graph``, loss, backward, gradient clipping, AdamW) runs on the
same atom-budget batches (``--max-atoms``), built before timing so the data loader is not measured,
in alternating rounds (:mod:`matforge.cli.step_timing`). Reported per backbone: structures/s,
atoms/s and ms per step of each objective, EFS ms / energy ms, and the memory the autograd graph of
an EFS step holds when its backward starts (:func:`saved_graph_mb`), in total and per atom: with the
weights and optimiser state, what sets the atoms per batch a GPU can take.

Labels the dataset lacks (perov5 has no energies, forces or stress) are filled with fixed random
values: the cost of a step does not depend on them. ``cgcnn`` and ``cgcnn_attention`` are not EFS
backbones (BatchNorm couples the structures of a batch; nearest-k featurisation is discontinuous):
their ratio is shown but marked.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Callable, Sequence

BACKBONES = ("cgcnn_smooth", "painn", "cgcnn_attention", "cgcnn")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training-step throughput: the EFS step over the energy step, per backbone",
                       description="Benchmark the EFS and energy pre-training steps on a shard directory, e.g. "
                                   "`matforge data convert mlearn/Si/training.json --out DIR` (prints a table, or JSON).")
    p.add_argument("directory", nargs="?", default=None, help="shard directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per objective; the best is kept (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per objective first (default 2)")
    p.add_argument("--max-atoms", type=int, default=1280, help="atom budget per batch (default 1280)")
    p.add_argument("--batches", type=int, default=4, help="distinct batches built and cycled through (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--backbones", default=",".join(BACKBONES),
                   help=f"comma-separated backbones (default {','.join(BACKBONES)})")
    p.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone argument for every backbone that takes it, e.g. cutoff=8.0 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--kernels", default=None, choices=("auto", "compiled", "eager"),
                   help="the fused kernels of cgcnn_smooth and painn: compiled (torch.compile) or eager "
                        "(default: $MATFORGE_KERNELS, else auto = compiled where compiling works)")
    p.add_argument("--same-process", action="store_true",
                   help="measure every backbone in this process (default: each in a fresh one, so none "
                        "inherits another's memory allocator state)")
    p.add_argument("--docs", default=None, metavar="FILE",
                   help="also write the table into this markdown file (e.g. docs/benchmarks.md), between its markers")
    p.set_defaults(func=run)


def parse_hyperparameters(items: Sequence[str]) -> dict[str, Any]:
    """``["cutoff=8.0", "hidden=100"]`` → ``{"cutoff": 8.0, "hidden": 100}`` (values parsed as YAML scalars)."""
    import yaml

    from matforge.cli.data_convert import parse_options

    return {key: yaml.safe_load(value) for key, value in parse_options(list(items)).items()}


def backbone_arguments(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``given`` that backbone ``name`` accepts (its registry defaults name them)."""
    from matforge.models.registry import create

    accepted = set(create(name).hparams)
    return {k: v for k, v in given.items() if k in accepted}


def open_shards(directory: str | None):
    """The shard directory to benchmark, opened; a one-line exit when it is missing or empty."""
    from matforge.datasets.shard_dataset import open_dataset

    if not directory:
        raise SystemExit("matforge: error: bench train needs a shard directory, e.g. "
                         "`matforge data convert /work/shared/data/mlearn/Si/training.json --out /tmp/si`")
    if not os.path.isdir(directory):
        raise SystemExit(f"matforge: error: {directory}: no such shard directory")
    ds = open_dataset(directory)
    if len(ds) == 0:
        raise SystemExit(f"matforge: error: {directory} has no records to benchmark")
    return ds


def fill_missing_labels(batch, seed: int) -> bool:
    """Give a batch energy/forces/stress labels where it has none (in place); True if it filled any."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    filled = False
    if not bool(batch.has_energy.all()):
        batch.energy.copy_(torch.randn(batch.energy.shape, generator=gen) * batch.natoms)
        batch.has_energy.fill_(True)
        filled = True
    if not bool(batch.has_forces.all()):
        batch.forces.copy_(torch.randn(batch.forces.shape, generator=gen) * 0.1)
        batch.has_forces.fill_(True)
        filled = True
    if not bool(batch.has_stress.all()):
        stress = torch.randn(batch.stress.shape, generator=gen) * 0.01
        batch.stress.copy_(0.5 * (stress + stress.transpose(-1, -2)))
        batch.has_stress.fill_(True)
        filled = True
    return filled


def saved_graph_mb(model, objective, batch) -> float:
    """MB the autograd graph of one training step holds when its backward starts (the step's peak
    beyond weights and optimiser state): the distinct storages autograd saved for backward, counted
    by ``torch.autograd.graph.saved_tensors_hooks`` during the forward, forces/stress and loss."""
    import torch

    seen: dict[tuple[int, str], int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = objective.loss(model(batch, **objective.forward_options(training=True)), batch)
    del loss   # frees the graph
    return sum(seen.values()) / 2**20


def bench_efs_ratio(ds, name: str, max_atoms: int, batches: int, steps: int, repeats: int, warmup: int,
                    hyperparameters: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Energy and EFS steps of backbone ``name`` on the same batches; their figures and ratio."""
    import torch

    from matforge.cli.step_timing import Contender, race
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create
    from matforge.training.weight_gradients import backward_to_weights, trainable_weights

    torch.manual_seed(0)
    backbone = create(name, **(hyperparameters or {}))
    graphs = GraphDataset(ds, GraphConfig(cutoff=backbone.cutoff, max_neighbors=backbone.max_neighbors))
    groups = list(AtomBudgetBatchSampler(graphs.natoms, max_atoms, shuffle=True, seed=0))[:max(1, batches)]
    built = [graphs.collate(g) for g in groups]
    placeholder = False
    for k, b in enumerate(built):
        placeholder |= fill_missing_labels(b, seed=k)
    target = torch.device(device)
    built = [b.to(target) for b in built]
    energy, efs = build_objective("energy"), build_objective("efs")
    model = AtomisticModel(backbone, efs.build_heads(backbone)).to(target)  # one EnergyHead for both objectives
    sync = torch.cuda.synchronize if target.type == "cuda" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    weights = trainable_weights(model)

    def step_of(objective) -> Callable[[Any], None]:
        options = objective.forward_options(training=True)

        def step(batch) -> None:
            out = model(batch, **options)
            loss = objective.loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            backward_to_weights(loss, weights)
            torch.nn.utils.clip_grad_norm_(weights, 10.0)
            optimizer.step()
        return step

    sizes = [b.num_graphs for b in built]
    atoms = [int(b.num_nodes) for b in built]
    graph_mb = {name: saved_graph_mb(model, objective, built[0]) for name, objective in (("energy", energy), ("efs", efs))}
    results = race([Contender("energy", step_of(energy), built, sizes, atoms, sync),
                    Contender("efs", step_of(efs), built, sizes, atoms, sync)], steps, repeats, warmup)
    peak_mb = None
    if target.type == "cuda":  # the device's own count, for one EFS step from a clean start
        torch.cuda.reset_peak_memory_stats(target)
        step_of(efs)(built[0])
        peak_mb = torch.cuda.max_memory_allocated(target) / 2**20
    return {"efs_backbone": bool(backbone.smooth), "hyperparameters": backbone.hparams,
            "parameters": sum(p.numel() for p in model.parameters()), "batches": len(built),
            "atoms_per_batch": sum(atoms) / len(atoms),
            "edges_per_atom": sum(int(b.edge_index.shape[1]) for b in built) / sum(atoms),
            "placeholder_labels": placeholder, "energy": results["energy"], "efs": results["efs"],
            "graph_mb": graph_mb, "efs_graph_kb_per_atom": 1024 * graph_mb["efs"] / atoms[0],
            "device": str(target), "cuda_peak_mb": peak_mb,
            "ratio": results["efs"]["step_ms"] / results["energy"]["step_ms"]}


def measure(directory: str | None, *, steps: int = 10, repeats: int = 3, warmup: int = 2, max_atoms: int = 1280,
            batches: int = 4, threads: int | None = None, backbones: Sequence[str] = BACKBONES,
            hyperparameters: dict[str, Any] | None = None, device: str = "cpu", isolate: bool = True,
            kernels: str | None = None) -> dict[str, Any]:
    """The report (see the module docstring) as one JSON-ready dict.

    ``isolate``: each backbone in a fresh process (spawned), so no backbone inherits another's allocator
    state, compiled kernels or warm caches; ``kernels`` is the kernel mode the processes use."""
    import torch

    from matforge.models.registry import ARCHITECTURES

    unknown = [b for b in backbones if b not in ARCHITECTURES]
    if unknown:
        raise SystemExit(f"matforge: error: unknown backbone(s) {unknown}; known: {', '.join(ARCHITECTURES)}")
    for flag, value in [("--steps", steps), ("--repeats", repeats), ("--max-atoms", max_atoms), ("--batches", batches)]:
        if value < 1:
            raise SystemExit(f"matforge: error: {flag} must be >= 1, got {value}")
    given = dict(hyperparameters or {})
    per_backbone = {name: backbone_arguments(name, given) for name in backbones}
    unused = set(given) - {k for args in per_backbone.values() for k in args}
    if unused:
        raise SystemExit(f"matforge: error: --hyperparameter {', '.join(sorted(unused))}: no backbone among "
                         f"{', '.join(backbones)} takes it")
    ds = open_shards(directory)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    report: dict[str, Any] = {
        "directory": str(ds.directory), "records": len(ds), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1min_at_start": os.getloadavg()[0],
        "steps": steps, "repeats": repeats, "warmup": warmup, "max_atoms": max_atoms, "device": device,
        "kernels": _kernel_mode(),
    }
    try:
        if isolate:
            per = {name: _in_fresh_process(str(ds.directory), name, max_atoms, batches, steps, repeats, warmup,
                                           per_backbone[name], device, torch.get_num_threads(), kernels)
                   for name in backbones}
        else:
            per = {name: bench_efs_ratio(ds, name, max_atoms, batches, steps, repeats, warmup, per_backbone[name],
                                         device) for name in backbones}
    except TypeError as err:  # a value of the wrong kind for a backbone argument
        raise SystemExit(f"matforge: error: --hyperparameter: {err}") from None
    report["efs"] = per
    report["efs_over_energy"] = {name: r["ratio"] for name, r in per.items()}
    report["efs_backbones"] = [name for name, r in per.items() if r["efs_backbone"]]
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    return report


def _bench_child(directory: str, name: str, max_atoms: int, batches: int, steps: int, repeats: int, warmup: int,
                 hyperparameters: dict[str, Any], device: str, threads: int, kernels: str | None) -> dict[str, Any]:
    """:func:`bench_efs_ratio` in a fresh process: its own threads and kernel mode."""
    import torch

    from matforge.models.kernel_mode import current_kernel_mode, set_kernel_mode

    torch.set_num_threads(threads)
    set_kernel_mode(kernels)
    result = bench_efs_ratio(open_shards(directory), name, max_atoms, batches, steps, repeats, warmup,
                             hyperparameters, device)
    result["kernels"] = current_kernel_mode()
    return result


def _in_fresh_process(*args: Any) -> dict[str, Any]:
    """:func:`_bench_child` in a spawned process of its own; its exceptions are raised here."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_bench_child, *args).result()


def _kernel_mode() -> str:
    """How the fused kernels of cgcnn_smooth and painn run in this process (models.kernel_mode)."""
    from matforge.models.kernel_mode import current_kernel_mode

    return current_kernel_mode()


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['directory']}: {report['records']} records; {report['threads']} threads, "
             f"{report['cpu_count']} CPUs, load average {report['load_average_1min_at_start']:.2f} at start, "
             f"{report['load_average_1min_at_end']:.2f} at end; best of {report['repeats']} rounds of "
             f"{report['steps']} steps after {report['warmup']} warm-up steps; batches of <= {report['max_atoms']} atoms; "
             f"device {report['device']}; kernels {report['kernels']}",
             "",
             f"{'backbone':16s} {'atoms/batch':>11s} {'edges/atom':>10s} {'energy ms':>9s} {'efs ms':>8s} "
             f"{'efs structs/s':>13s} {'efs atoms/s':>11s} {'efs/energy':>10s} {'efs graph MB':>12s} {'kB/atom':>7s}"]
    for name, e in report["efs"].items():
        tag = "" if e["efs_backbone"] else "  (not an EFS backbone)"
        lines.append(f"{name:16s} {e['atoms_per_batch']:11.0f} {e['edges_per_atom']:10.1f} {e['energy']['step_ms']:9.1f} "
                     f"{e['efs']['step_ms']:8.1f} {e['efs']['structures_per_s']:13.1f} {e['efs']['atoms_per_s']:11.0f} "
                     f"{e['ratio']:10.2f} {e['graph_mb']['efs']:12.1f} {e['efs_graph_kb_per_atom']:7.1f}{tag}")
    changed = {name: {k: v for k, v in e["hyperparameters"].items()} for name, e in report["efs"].items()}
    lines.append("hyper-parameters: " + "; ".join(f"{n} {h}" for n, h in changed.items()))
    peaks = {n: e["cuda_peak_mb"] for n, e in report["efs"].items() if e.get("cuda_peak_mb") is not None}
    if peaks:
        lines.append("CUDA peak MB of one EFS step: " + ", ".join(f"{n} {v:.0f}" for n, v in peaks.items()))
    lines.append("efs graph MB: memory the autograd graph of one EFS step holds when its backward starts (the "
                 "first batch; the step's peak beyond weights and optimiser state), kB/atom: the same per atom")
    cpu = {n: e for n, e in report["efs"].items() if "kernel_s_per_step" in e["efs"]}
    if cpu and report["device"] == "cpu":
        lines.append("CPU time per step (best round), user + kernel (OS) s, and memory first touched (page faults):")
        for name, e in cpu.items():
            lines.append("  " + name + ": " + "; ".join(
                f"{step} {e[step]['user_s_per_step']:.2f} + {e[step]['kernel_s_per_step']:.2f} s, "
                f"{e[step]['faulted_mb_per_step'] / 1024:.1f} GB" for step in ("energy", "efs")))
    if any(e["placeholder_labels"] for e in report["efs"].values()):
        lines.append("(the dataset lacks energy/forces/stress labels: fixed random labels were used)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.kernels:
        from matforge.models.kernel_mode import set_kernel_mode

        set_kernel_mode(args.kernels)
    report = measure(args.directory, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
                     max_atoms=args.max_atoms, batches=args.batches, threads=args.threads,
                     backbones=[b for b in args.backbones.split(",") if b],
                     hyperparameters=parse_hyperparameters(args.hyperparameter), device=args.device,
                     isolate=not args.same_process, kernels=args.kernels)
    table = format_table(report)
    print(json.dumps(report) if args.json else table)
    if args.docs:
        from matforge.training.docs_tables import printed_table_section, update_section

        setting = " ".join(args.hyperparameter + ([f"kernels={args.kernels}"] if args.kernels else []))  # one per setting
        update_section(args.docs, "matforge bench train" + (f" {setting}" if setting else ""),
                       printed_table_section("Training step: EFS over energy" + (f", {setting}" if setting else ""), table))
    return 0
