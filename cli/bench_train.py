"""``matforge bench train DIR``: training-step throughput, CGCNN against the original, EFS over energy.

Two measurements on the records of a shard directory (perov5 in the issue), each over batches
built once before timing, so the data loader is not measured:

1. **CGCNN-exact against the original CGCNN.** matforge's ``cgcnn`` backbone with its ``cgcnn``
   head at the released hyper-parameters (atom_fea_len 64, n_conv 3, h_fea_len 128, n_h 1, 12
   nearest neighbours within 8 Å, Gaussian step 0.2 Å) and the original's training recipe
   (batches of ``--batch-size`` = 256 structures, MSE on the normalised target, SGD lr 0.01
   momentum 0.9), against the original code's model and batch layout re-implemented in
   :mod:`matforge.cli.bench_original_cgcnn`, on the very same structures. A step is
   ``forward + loss + zero_grad + backward + optimizer.step``; matforge's step includes forming
   edge vectors from positions, cell and shifts and the Gaussian expansion (it featurises in the
   model, so gradients can reach geometry); the original's Gaussians are precomputed by its
   loader, as in its code. Reported: structures/s and atoms/s of each, and their ratio.
2. **EFS step over energy step, per backbone** (``cgcnn_smooth``, ``painn``, ``cgcnn_attention``,
   ``cgcnn``, each at its registry defaults, except ``cgcnn`` at the hyper-parameters above): the
   pre-training step of ``matforge pretrain`` (objective ``energy`` vs ``efs``: forces and stress by
   autograd with ``create_graph``, loss, backward, grad-norm clipping, AdamW) on the same batches
   (atom budget ``--max-atoms``). Labels the dataset lacks (perov5 has no energies, forces or
   stress) are filled with fixed random values: the cost of a step does not depend on them.
   ``cgcnn`` and ``cgcnn_attention`` are not EFS backbones (BatchNorm couples the structures of a
   batch; nearest-k featurisation is discontinuous); their ratio is reported but marked.

Timing: after ``--warmup`` steps each, the contenders run ``--repeats`` rounds of ``--steps``
steps, alternating (so a load change on a shared machine hits both); each keeps its best round.
``--threads`` sets ``torch.set_num_threads`` (default: all cores).

Allocator: glibc's default ``malloc`` returns large freed blocks to the OS and page-faults them
back each step; the Ray trainer's workers run with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` raised (:func:`matforge.pretrain.launcher.worker_env`). These are read
when a process starts, so with ``--malloc both`` (the default) the command runs the measurement in
two child processes, one per setting, and reports both; the headline figures are the trainer's
setting ("tuned"). ``--malloc current`` measures in this process as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

BACKBONES = ("cgcnn_smooth", "painn", "cgcnn_attention", "cgcnn")
CGCNN_RELEASED = {"atom_fea_len": 64, "n_conv": 3, "cutoff": 8.0, "max_neighbors": 12, "gaussian_step": 0.2,
                  "gaussian_dmin": 0.0}
CGCNN_HEAD = {"h_fea_len": 128, "n_h": 1}
ORIGINAL_STRUCTURES_PER_S_ISSUE = 1600.0   # issue 3: the original CGCNN measured on this machine
TARGET_STRUCTURES_PER_S = 2400.0           # issue 3 target for matforge's CGCNN
TARGET_EFS_RATIO = 3.0                     # issue 3 target for EFS step / energy step
MALLOC_MODES = ("both", "tuned", "default", "current")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training-step throughput: CGCNN vs the original, EFS/energy step time",
                       description="Benchmark training steps on a shard directory, e.g. perov5 converted with "
                                   "`matforge data convert perov5/val.csv --out DIR` (prints a table, or one JSON object).")
    p.add_argument("directory", nargs="?", default=None, help="shard directory (e.g. perov5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per contender; the best is kept (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first (default 2)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="structures per batch of the CGCNN comparison (default 256, the original's default)")
    p.add_argument("--max-atoms", type=int, default=1280,
                   help="atom budget per batch of the EFS/energy comparison (default 1280 = 256 perov5 cells)")
    p.add_argument("--batches", type=int, default=4, help="distinct batches built and cycled through (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--backbones", default=",".join(BACKBONES),
                   help=f"comma-separated backbones for the EFS/energy ratio (default {','.join(BACKBONES)})")
    p.add_argument("--target", default=None, help="property trained in the CGCNN comparison (default: the "
                                                  "dataset's first property)")
    p.add_argument("--skip-cgcnn", action="store_true", help="skip the CGCNN vs original comparison")
    p.add_argument("--skip-efs", action="store_true", help="skip the EFS/energy ratios")
    p.add_argument("--malloc", choices=MALLOC_MODES, default="both",
                   help="glibc malloc settings: both (two child processes, default), tuned, default, or current "
                        "(this process as started)")
    p.set_defaults(func=run)


# --- setup ------------------------------------------------------------------------------------------

def tuned_malloc_env() -> dict[str, str]:
    """The glibc ``MALLOC_*`` variables the Ray trainer sets for its workers."""
    from matforge.pretrain.config import PretrainConfig
    from matforge.pretrain.launcher import worker_env

    return {k: v for k, v in worker_env(PretrainConfig()).items() if k.startswith("MALLOC_")}


def _open(directory: str | None):
    from matforge.datasets.shard_dataset import open_dataset

    if not directory:
        raise SystemExit("matforge: error: bench train needs a shard directory, e.g. perov5 converted with "
                         "`matforge data convert /work/shared/data/perov5/val.csv --out /tmp/perov5`")
    if not os.path.isdir(directory):
        raise SystemExit(f"matforge: error: {directory}: no such shard directory")
    ds = open_dataset(directory)
    if len(ds) == 0:
        raise SystemExit(f"matforge: error: {directory} has no records to benchmark")
    return ds


def _target_name(ds, requested: str | None) -> str | None:
    labelled = {k: int(v) for k, v in (ds.manifest.labels.get("properties") or {}).items() if int(v) > 0}
    if requested is not None:
        if requested not in labelled:
            raise SystemExit(f"matforge: error: {ds.directory}: no property {requested!r} "
                             f"(labelled: {', '.join(labelled) or 'none'})")
        return requested
    return next(iter(labelled), None)


def _index_groups(count: int, size: int, batches: int, seed: int = 0) -> list[list[int]]:
    """Up to ``batches`` disjoint groups of ``size`` shuffled record indices (fewer if data is short)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(count)
    full = max(1, count // size)
    return [order[k * size:(k + 1) * size].tolist() for k in range(min(batches, full))]


# --- timing -----------------------------------------------------------------------------------------

class Contender:
    """A step function and the batches it cycles through; ``structures``/``atoms`` per batch."""

    def __init__(self, name: str, step: Callable[[Any], Any], batches: Sequence[Any],
                 structures: Sequence[int], atoms: Sequence[int]) -> None:
        self.name, self.step, self.batches = name, step, list(batches)
        self.structures, self.atoms = list(structures), list(atoms)
        self.next = 0
        self.rounds: list[dict[str, float]] = []

    def run(self, steps: int) -> dict[str, float]:
        structures = atoms = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            k = self.next % len(self.batches)
            self.step(self.batches[k])
            structures += self.structures[k]
            atoms += self.atoms[k]
            self.next += 1
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "steps": steps, "structures": structures, "atoms": atoms}

    def best(self) -> dict[str, float]:
        r = min(self.rounds, key=lambda r: r["seconds"] / r["steps"])
        s = max(r["seconds"], 1e-12)
        return {"step_ms": 1e3 * s / r["steps"], "structures_per_s": r["structures"] / s, "atoms_per_s": r["atoms"] / s,
                "rounds_step_ms": [1e3 * x["seconds"] / x["steps"] for x in self.rounds]}


def race(contenders: Sequence[Contender], steps: int, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Warm up each, then ``repeats`` alternating rounds of ``steps``; the best round of each."""
    for c in contenders:
        c.run(warmup)
    for _ in range(max(1, repeats)):
        for c in contenders:
            c.rounds.append(c.run(max(1, steps)))
    return {c.name: c.best() for c in contenders}


# --- 1. CGCNN against the original -----------------------------------------------------------------

def bench_cgcnn(ds, target: str | None, batch_size: int, batches: int, steps: int, repeats: int,
                warmup: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from matforge.cli.bench_original_cgcnn import (ORIGINAL_LR, ORIGINAL_MOMENTUM, OriginalCGCNN, OriginalTrainer,
                                                   load_matforge_weights, original_batch)
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.models.cgcnn import CGCNN, CGCNNHead
    from matforge.models.model import AtomisticModel

    hp = CGCNN_RELEASED
    graphs = GraphDataset(ds, GraphConfig(cutoff=hp["cutoff"], max_neighbors=hp["max_neighbors"],
                                          properties=(target,) if target else ()))
    groups = _index_groups(len(ds), min(batch_size, len(ds)), batches)
    mf_batches = [graphs.collate(g) for g in groups]
    targets = [b.y[:, 0].clone() if target else torch.zeros(b.num_graphs) for b in mf_batches]
    every = torch.cat(targets)
    mean, std = float(every.mean()), float(every.std()) if every.numel() > 1 else 1.0
    std = std if std > 0 else 1.0

    torch.manual_seed(0)
    backbone = CGCNN(**hp)
    model = AtomisticModel(backbone, {"target": CGCNNHead(backbone.embedding_dim, **CGCNN_HEAD, mean=mean, std=std)})
    original = OriginalCGCNN(nbr_fea_len=backbone.expansion.num_features, atom_fea_len=hp["atom_fea_len"],
                             n_conv=hp["n_conv"], **CGCNN_HEAD)
    load_matforge_weights(original, model, "target")  # same starting point
    orig_batches = [original_batch(b, t, radius=hp["cutoff"], max_num_nbr=hp["max_neighbors"],
                                   dmin=hp["gaussian_dmin"], step=hp["gaussian_step"]) for b, t in zip(mf_batches, targets)]
    optimizer = torch.optim.SGD(model.parameters(), ORIGINAL_LR, momentum=ORIGINAL_MOMENTUM)
    model.train()

    def matforge_step(batch_and_target) -> None:
        batch, t = batch_and_target
        out = model(batch)
        loss = F.mse_loss(out["properties_normalized"], ((t - mean) / std).unsqueeze(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trainer = OriginalTrainer(original, mean, std)
    sizes = [b.num_graphs for b in mf_batches]
    atoms = [int(b.num_nodes) for b in mf_batches]
    results = race([Contender("original", trainer.step, orig_batches, sizes, atoms),
                    Contender("matforge", matforge_step, list(zip(mf_batches, targets)), sizes, atoms)],
                   steps, repeats, warmup)
    edges = sum(int(b.edge_index.shape[1]) for b in mf_batches) / max(1, sum(atoms))
    return {"target": target, "batch_size": sizes[0], "batches": len(mf_batches), "edges_per_atom": edges,
            "hyperparameters": {**hp, **CGCNN_HEAD}, "optimizer": f"SGD lr {ORIGINAL_LR} momentum {ORIGINAL_MOMENTUM}",
            "original": results["original"], "matforge": results["matforge"],
            "speedup": results["matforge"]["structures_per_s"] / results["original"]["structures_per_s"]}


# --- 2. EFS over energy ----------------------------------------------------------------------------

def _fill_missing_labels(batch, seed: int) -> bool:
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


def bench_efs_ratio(ds, name: str, max_atoms: int, batches: int, steps: int, repeats: int, warmup: int) -> dict[str, Any]:
    import torch

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.models.model import AtomisticModel
    from matforge.models.objectives import build_objective
    from matforge.models.registry import create

    torch.manual_seed(0)
    backbone = create(name, **(CGCNN_RELEASED if name == "cgcnn" else {}))
    graphs = GraphDataset(ds, GraphConfig(cutoff=backbone.cutoff, max_neighbors=backbone.max_neighbors))
    groups = list(AtomBudgetBatchSampler(graphs.natoms, max_atoms, shuffle=True, seed=0))[:max(1, batches)]
    built = [graphs.collate(g) for g in groups]
    placeholder = False
    for k, b in enumerate(built):
        placeholder |= _fill_missing_labels(b, seed=k)
    energy, efs = build_objective("energy"), build_objective("efs")
    model = AtomisticModel(backbone, efs.build_heads(backbone))  # the same EnergyHead for both objectives
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step_of(objective) -> Callable[[Any], None]:
        options = objective.forward_options(training=True)

        def step(batch) -> None:
            out = model(batch, **options)
            loss = objective.loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        return step

    sizes = [b.num_graphs for b in built]
    atoms = [int(b.num_nodes) for b in built]
    results = race([Contender("energy", step_of(energy), built, sizes, atoms),
                    Contender("efs", step_of(efs), built, sizes, atoms)], steps, repeats, warmup)
    return {"smooth": bool(backbone.smooth), "efs_backbone": bool(backbone.smooth), "hyperparameters": backbone.hparams,
            "parameters": sum(p.numel() for p in model.parameters()), "batches": len(built),
            "atoms_per_batch": sum(atoms) / len(atoms), "edges_per_atom": sum(int(b.edge_index.shape[1]) for b in built) / sum(atoms),
            "placeholder_labels": placeholder, "energy": results["energy"], "efs": results["efs"],
            "ratio": results["efs"]["step_ms"] / results["energy"]["step_ms"]}


# --- the report -------------------------------------------------------------------------------------

def measure(directory: str | None, *, steps: int = 10, repeats: int = 3, warmup: int = 2, batch_size: int = 256,
            max_atoms: int = 1280, batches: int = 4, threads: int | None = None, backbones: Sequence[str] = BACKBONES,
            target: str | None = None, skip_cgcnn: bool = False, skip_efs: bool = False) -> dict[str, Any]:
    """Both measurements in this process (see the module docstring); the JSON report."""
    import torch

    from matforge.models.registry import ARCHITECTURES

    unknown = [b for b in backbones if b not in ARCHITECTURES]
    if unknown:
        raise SystemExit(f"matforge: error: unknown backbone(s) {unknown}; known: {', '.join(ARCHITECTURES)}")
    for flag, value in [("--steps", steps), ("--repeats", repeats), ("--batch-size", batch_size),
                        ("--max-atoms", max_atoms), ("--batches", batches)]:
        if value < 1:
            raise SystemExit(f"matforge: error: {flag} must be >= 1, got {value}")
    ds = _open(directory)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    load = os.getloadavg()
    report: dict[str, Any] = {
        "directory": str(ds.directory), "records": len(ds), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1min_at_start": load[0],
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "steps": steps, "repeats": repeats, "warmup": warmup,
    }
    if not skip_cgcnn:
        c = bench_cgcnn(ds, _target_name(ds, target), batch_size, batches, steps, repeats, warmup)
        report["cgcnn"] = c
        report["cgcnn_structures_per_s"] = c["matforge"]["structures_per_s"]
        report["cgcnn_atoms_per_s"] = c["matforge"]["atoms_per_s"]
        report["original_cgcnn_structures_per_s"] = c["original"]["structures_per_s"]
        report["original_cgcnn_atoms_per_s"] = c["original"]["atoms_per_s"]
        report["cgcnn_speedup"] = c["speedup"]
    if not skip_efs:
        per = {name: bench_efs_ratio(ds, name, max_atoms, batches, steps, repeats, warmup) for name in backbones}
        report["efs"] = per
        report["efs_over_energy"] = {name: r["ratio"] for name, r in per.items()}
        report["efs_backbones"] = [name for name, r in per.items() if r["efs_backbone"]]
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    return report


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "matforge.cli.main", "bench", "train", args.directory, "--json", "--malloc", "current",
            "--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
            "--batch-size", str(args.batch_size), "--max-atoms", str(args.max_atoms), "--batches", str(args.batches),
            "--backbones", args.backbones]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.target:
        argv += ["--target", args.target]
    argv += ["--skip-cgcnn"] * args.skip_cgcnn + ["--skip-efs"] * args.skip_efs
    return argv


def measure_in_child(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    """Run the measurement in a fresh process with glibc malloc ``setting`` ("default" or "tuned")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if setting == "tuned":
        env.update(tuned_malloc_env())
    proc = subprocess.run(_child_argv(args), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"matforge: error: bench train ({setting} malloc) failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEADLINE_KEYS = ("cgcnn_structures_per_s", "cgcnn_atoms_per_s", "original_cgcnn_structures_per_s",
                 "original_cgcnn_atoms_per_s", "cgcnn_speedup", "efs_over_energy", "efs_backbones", "cgcnn", "efs")


def combine_settings(by_setting: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One report: the headline keys from the "tuned" run (the trainer's setting) if present."""
    main = by_setting.get("tuned") or next(iter(by_setting.values()))
    report = {k: v for k, v in main.items()}
    report["malloc"] = "tuned" if "tuned" in by_setting else next(iter(by_setting))
    report["by_malloc"] = {s: {k: r[k] for k in HEADLINE_KEYS if k in r} | {
        "load_average_1min_at_start": r["load_average_1min_at_start"], "malloc_env": r["malloc_env"]}
        for s, r in by_setting.items()}
    if "efs_over_energy" in main:
        report["efs_over_energy_by_malloc"] = {s: r.get("efs_over_energy", {}) for s, r in by_setting.items()}
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['directory']}: {report['records']} records; {report['threads']} threads, "
             f"{report['cpu_count']} CPUs, load average {report['load_average_1min_at_start']:.2f} at start, "
             f"{report['load_average_1min_at_end']:.2f} at end; malloc {report.get('malloc', 'current')} "
             f"{report['malloc_env'] or '(glibc defaults)'}",
             f"best of {report['repeats']} rounds of {report['steps']} steps (after {report['warmup']} warm-up steps)"]
    settings = report.get("by_malloc") or {report.get("malloc", "current"): report}
    if "cgcnn" in report:
        c = report["cgcnn"]
        lines += ["", f"CGCNN training step (batch {c['batch_size']} structures, {c['edges_per_atom']:.1f} edges/atom, "
                      f"target {c['target']}, {c['optimizer']}, MSE)",
                  f"{'model':50s} {'structures/s':>12s} {'atoms/s':>10s} {'ms/step':>8s}"]
        for setting, r in settings.items():
            if "cgcnn" not in r:
                continue
            for key, label in [("original", "original CGCNN (re-implemented)"), ("matforge", "matforge cgcnn")]:
                x = r["cgcnn"][key]
                lines.append(f"{label + ' [' + setting + ' malloc]':50s} {x['structures_per_s']:12.0f} "
                             f"{x['atoms_per_s']:10.0f} {x['step_ms']:8.1f}")
            lines.append(f"{'  speed-up matforge / original':50s} {r['cgcnn_speedup']:12.2f}x")
        lines.append(f"issue 3: original ~{ORIGINAL_STRUCTURES_PER_S_ISSUE:.0f}/s on this machine; target for matforge "
                     f">= {TARGET_STRUCTURES_PER_S:.0f}/s -> {'met' if report['cgcnn_structures_per_s'] >= TARGET_STRUCTURES_PER_S else 'NOT met'} "
                     f"({report['cgcnn_structures_per_s']:.0f}/s with {report['threads']} thread(s); compare with the "
                     f"original measured here at the same threads)")
    if "efs" in report:
        names = list(report["efs"])
        lines += ["", "EFS step (forces + stress, create_graph) over energy step, same batches (atom budget)",
                  f"{'backbone':30s} {'atoms/batch':>11s} {'edges/atom':>10s} {'energy ms':>9s} {'efs ms':>8s} {'ratio':>6s}"]
        for setting, r in settings.items():
            for name in names:
                e = r["efs"][name]
                tag = "" if e["efs_backbone"] else "  (not an EFS backbone)"
                lines.append(f"{name + ' [' + setting + ']':30s} {e['atoms_per_batch']:11.0f} {e['edges_per_atom']:10.1f} "
                             f"{e['energy']['step_ms']:9.1f} {e['efs']['step_ms']:8.1f} {e['ratio']:6.2f}{tag}")
        if any(report["efs"][n]["placeholder_labels"] for n in names):
            lines.append("(the dataset has no energy/forces/stress labels: fixed random labels were used)")
        lines.append(f"target: ratio <= {TARGET_EFS_RATIO:.1f} for EFS backbones")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.malloc == "current":
        report = measure(args.directory, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
                         batch_size=args.batch_size, max_atoms=args.max_atoms, batches=args.batches,
                         threads=args.threads, backbones=[b for b in args.backbones.split(",") if b],
                         target=args.target, skip_cgcnn=args.skip_cgcnn, skip_efs=args.skip_efs)
        report["malloc"] = "current"
    else:
        _open(args.directory)  # a clear error here rather than in a child
        settings = ["default", "tuned"] if args.malloc == "both" else [args.malloc]
        report = combine_settings({s: measure_in_child(args, s) for s in settings})
    print(json.dumps(report) if args.json else format_table(report))
    return 0
