"""``matforge bench train DIR``: training-step throughput, CGCNN against the original, EFS over energy.

Two measurements on the records of a shard directory (perov5 in the issue), each over batches
built once before timing, so the data loader is not measured:

1. CGCNN-exact against the original CGCNN (structures/s of each, same structures, same recipe);
2. EFS step over energy step, per backbone;

both defined and timed in :mod:`matforge.cli.train_step_race`.

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
from typing import Any, Sequence

BACKBONES = ("cgcnn_smooth", "painn", "cgcnn_attention", "cgcnn")
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

TUNED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4000000000"}
"""glibc settings this benchmark compares with the default: keep large freed blocks instead of
returning them to the OS and page-faulting them back every step (the double backward of force
training allocates big tensors). matforge itself never sets them; a user may, in the environment."""


def tuned_malloc_env() -> dict[str, str]:
    """The glibc ``MALLOC_*`` variables of the benchmark's "tuned" setting (:data:`TUNED_MALLOC_ENV`)."""
    return dict(TUNED_MALLOC_ENV)


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


# --- the report -------------------------------------------------------------------------------------

def measure(directory: str | None, *, steps: int = 10, repeats: int = 3, warmup: int = 2, batch_size: int = 256,
            max_atoms: int = 1280, batches: int = 4, threads: int | None = None, backbones: Sequence[str] = BACKBONES,
            target: str | None = None, skip_cgcnn: bool = False, skip_efs: bool = False) -> dict[str, Any]:
    """Both measurements in this process (see the module docstring); the JSON report."""
    import torch

    from matforge.cli.train_step_race import bench_cgcnn, bench_efs_ratio
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
