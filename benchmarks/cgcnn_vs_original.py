"""matforge's CGCNN training step against a re-implementation of the original CGCNN code's step.

    python benchmarks/cgcnn_vs_original.py PEROV5_SHARDS [--threads 1] [--malloc both] [--docs docs/benchmarks.md]

matforge's ``cgcnn`` backbone with its ``cgcnn`` head at the released hyper-parameters (atom_fea_len
64, n_conv 3, h_fea_len 128, n_h 1, 12 nearest neighbours within 8 Å, Gaussian step 0.2 Å) and the
original's training recipe (batches of ``--batch-size`` = 256 structures, MSE on the normalised
target, SGD lr 0.01 momentum 0.9) race the original code's model and batch layout, re-implemented
in ``original_cgcnn.py`` beside this script, on the very same structures and from the same weights.
A step is ``forward + loss + zero_grad + backward + optimizer.step``; matforge's step includes forming
edge vectors from positions, cell and shifts and the Gaussian expansion (it featurises in the model,
so gradients can reach geometry); the original's Gaussians are precomputed by its loader, as in its
code. Batches are built before timing; rounds alternate (:mod:`matforge.cli.step_timing`).

Allocator: glibc's ``malloc`` returns large freed blocks to the OS and page-faults them back each
step. With ``--malloc both`` (default) the race runs in two child processes, one with glibc's
defaults and one with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` raised
(:data:`TUNED_MALLOC_ENV`, which matforge itself never sets), and both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # original_cgcnn beside this script

CGCNN_RELEASED = {"atom_fea_len": 64, "n_conv": 3, "cutoff": 8.0, "max_neighbors": 12, "gaussian_step": 0.2,
                  "gaussian_dmin": 0.0}
CGCNN_HEAD = {"h_fea_len": 128, "n_h": 1}
TUNED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4000000000"}
DOCS_SECTION = "benchmarks/cgcnn_vs_original.py"


def race_cgcnn(directory: str, target: str | None = None, batch_size: int = 256, batches: int = 4, steps: int = 10,
               repeats: int = 3, warmup: int = 2, threads: int | None = None) -> dict[str, Any]:
    """Both steps on the same batches in this process; structures/s, atoms/s, ms per step and the speed-up."""
    import torch
    import torch.nn.functional as F

    from matforge.cli.step_timing import Contender, index_groups, race
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.models.cgcnn import CGCNN, CGCNNHead
    from matforge.models.model import AtomisticModel
    from original_cgcnn import (ORIGINAL_LR, ORIGINAL_MOMENTUM, OriginalCGCNN, OriginalTrainer, load_matforge_weights,
                                original_batch)

    torch.set_num_threads(threads or os.cpu_count() or 1)
    ds = open_dataset(directory)
    target = target or target_name(ds)
    hp = CGCNN_RELEASED
    graphs = GraphDataset(ds, GraphConfig(cutoff=hp["cutoff"], max_neighbors=hp["max_neighbors"],
                                          properties=(target,) if target else ()))
    groups = index_groups(len(ds), min(batch_size, len(ds)), batches)
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
    load = os.getloadavg()[0]
    results = race([Contender("original", trainer.step, orig_batches, sizes, atoms),
                    Contender("matforge", matforge_step, list(zip(mf_batches, targets)), sizes, atoms)],
                   steps, repeats, warmup)
    edges = sum(int(b.edge_index.shape[1]) for b in mf_batches) / max(1, sum(atoms))
    return {"directory": str(directory), "target": target, "batch_size": sizes[0], "batches": len(mf_batches),
            "edges_per_atom": edges, "threads": torch.get_num_threads(), "steps": steps, "repeats": repeats,
            "hyperparameters": {**hp, **CGCNN_HEAD}, "optimizer": f"SGD lr {ORIGINAL_LR} momentum {ORIGINAL_MOMENTUM}",
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "load_average_1min": [load, os.getloadavg()[0]],
            "original": results["original"], "matforge": results["matforge"],
            "speedup": results["matforge"]["structures_per_s"] / results["original"]["structures_per_s"]}


def target_name(ds) -> str | None:
    """The dataset's first labelled property (None: the race runs on zeros)."""
    labelled = [k for k, v in (ds.manifest.labels.get("properties") or {}).items() if int(v) > 0]
    return labelled[0] if labelled else None


def race_in_child(argv: list[str], setting: str) -> dict[str, Any]:
    """This script with ``argv --malloc current --json`` in a fresh process, glibc malloc ``setting``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if setting == "tuned":
        env.update(TUNED_MALLOC_ENV)
    proc = subprocess.run([sys.executable, __file__, *argv, "--malloc", "current", "--json"], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cgcnn_vs_original ({setting} malloc) failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(by_setting: dict[str, dict[str, Any]]) -> str:
    first = next(iter(by_setting.values()))
    lines = [f"{first['directory']}: batches of {first['batch_size']} structures ({first['edges_per_atom']:.1f} "
             f"edges/atom), target {first['target']}, {first['optimizer']}, MSE; {first['threads']} thread(s); best of "
             f"{first['repeats']} alternating rounds of {first['steps']} steps", "",
             "| step | malloc | structures/s | atoms/s | ms/step | load average before/after |", "|---|---|---|---|---|---|"]
    for setting, r in by_setting.items():
        for key, label in [("original", "original CGCNN (re-implemented)"), ("matforge", "matforge cgcnn")]:
            x = r[key]
            lines.append(f"| {label} | {setting} | {x['structures_per_s']:,.0f} | {x['atoms_per_s']:,.0f} | "
                         f"{x['step_ms']:.1f} | {r['load_average_1min'][0]:.2f}/{r['load_average_1min'][1]:.2f} |")
    lines.append("")
    lines += [f"- speed-up of matforge over the original, {s} malloc: {r['speedup']:.2f}×" for s, r in by_setting.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory", help="shard directory (perov5 converted with `matforge data convert`)")
    p.add_argument("--target", default=None, help="property trained (default: the dataset's first)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--malloc", choices=("both", "tuned", "default", "current"), default="both")
    p.add_argument("--json", action="store_true")
    p.add_argument("--docs", default=None, help="markdown file whose section of this script is replaced")
    args = p.parse_args(argv)
    if args.malloc == "current":
        by_setting = {"as started": race_cgcnn(args.directory, args.target, args.batch_size, args.batches, args.steps,
                                               args.repeats, args.warmup, args.threads)}
    else:
        passed = [args.directory, "--batch-size", str(args.batch_size), "--batches", str(args.batches),
                  "--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                  *(["--target", args.target] if args.target else []),
                  *(["--threads", str(args.threads)] if args.threads else [])]
        settings = ["default", "tuned"] if args.malloc == "both" else [args.malloc]
        by_setting = {s: race_in_child(passed, s) for s in settings}
    if args.json:
        print(json.dumps(by_setting["as started"] if args.malloc == "current" else by_setting))
        return 0
    table = format_table(by_setting)
    print(table)
    if args.docs:
        from matforge.training.docs_tables import printed_table_section, update_section

        update_section(args.docs, DOCS_SECTION, printed_table_section(
            "CGCNN training step against the original code's (re-implemented)", table, markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
