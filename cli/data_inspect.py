"""``matforge data inspect DIR [--json]``: what a shard directory holds."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="counts, elements, labels and their statistics, shards, schema")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="also check every shard's sha256 against the manifest")
    p.set_defaults(func=run)


def summary(directory: str, verify: bool = False) -> dict:
    """The inspect report as a dict (``num_records``, ``num_atoms``, ``elements``, ``labels``, ...)."""
    from ase.data import chemical_symbols

    from matforge.datasets.shard_dataset import open_dataset

    ds = open_dataset(directory, verify_checksums=verify)
    m = ds.manifest
    return {
        "directory": str(ds.directory),
        "format": m.format,
        "schema_version": m.schema_version,
        "dataset_id": m.dataset_id,
        "num_records": m.num_records,
        "num_atoms": m.num_atoms,
        "num_skipped": m.num_skipped,
        "elements": [chemical_symbols[z] for z in m.elements],
        "labels": m.labels,
        "statistics": m.statistics,
        "units": m.units,
        "shards": [vars(s) for s in m.shards],
        "sources": m.sources,
        "command": m.command,
        "created": m.created,
        "checksums_verified": verify,
    }


def _fmt_stats(st: dict) -> str:
    if not st.get("count"):
        return "-"
    return f"n={st['count']:<9d} mean={st['mean']:<12.5g} std={st['std']:<12.5g} min={st['min']:<12.5g} max={st['max']:.5g}"


def run(args: argparse.Namespace) -> int:
    info = summary(args.directory, args.verify)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['directory']}  ({info['format']} schema {info['schema_version']})")
    print(f"  records   {info['num_records']}   atoms {info['num_atoms']}   skipped at conversion {info['num_skipped']}")
    print(f"  elements  {len(info['elements'])}: {' '.join(info['elements'])}")
    labels = info["labels"]
    print(f"  labels    energy {labels['energy']}  forces {labels['forces']}  stress {labels['stress']}")
    for name, count in labels.get("properties", {}).items():
        print(f"            property {name}: {count}")
    stats = info["statistics"]
    print("  statistics")
    for key in ["natoms", "energy_per_atom", "forces", "stress"] + [k for k in stats if k.startswith("property:")]:
        if key in stats:
            print(f"    {key:<28s} {_fmt_stats(stats[key])}")
    eq = stats.get("equilibrium", {})
    print(f"  frames    relaxed {eq.get('relaxed', 0)}  off-equilibrium {eq.get('off_equilibrium', 0)}"
          f"  unknown {eq.get('unknown', 0)}  trajectories {stats.get('num_trajectories', 0)}")
    print(f"  shards    {len(info['shards'])}")
    for s in info["shards"]:
        print(f"    {s['file']}  {s['num_records']} records  {s['num_atoms']} atoms  {s['bytes'] / 1e6:.1f} MB")
    for src in info["sources"]:
        _print_source(src, "  ")
    if args.verify:
        print("  checksums verified")
    return 0


def _print_source(src: dict, indent: str) -> None:
    """One manifest source line (and its conversions, the model its labels come from, and the sources
    of a merged or filtered dataset, indented below it)."""
    if "records_kept" in src:   # a dataset copied by data merge / leakage --drop-to
        counts = f"kept {src['records_kept']} of {src.get('records_read', '?')}  filter {src.get('filter', 'none')}"
    else:
        counts = f"written {src.get('records_written', 0)}  skipped {src.get('records_skipped', 0)}"
    print(f"{indent}source    {src.get('path', '?')} [{src.get('format', '?')}]  {counts}")
    labels = src.get("labels") if src.get("labels_from_model") else None
    if isinstance(labels, dict):
        print(f"{indent}          labels from {labels.get('model', '?')} {labels.get('weights_version', '')} "
              f"({labels.get('licence', 'licence not given')}), not measured")
    for c in src.get("conversions", []):
        print(f"{indent}          converted {c}")
    for inner in src.get("sources") or []:
        if isinstance(inner, dict):
            _print_source(inner, indent + "  ")
