"""Write the released backbone ``matforge-efs-small`` from a ``matforge bench science`` output directory.

Run from the repository root, once the science run has pre-trained (and, for the card's downstream
table, fine-tuned) its backbones::

    python finetune/backbones/make_efs_small.py --science runs/science [--label exp1-efs] [--out finetune/backbones]

It loads the exported backbone ``<science>/backbones/<label>`` (the energy + forces + stress pre-training
of experiment 1 by default), and writes ``<out>/matforge-efs-small/`` (``card.json`` + float32
``model.safetensors``, replacing an earlier copy) with the release record in the card's provenance:

    name, licence, trained_on     as for every released backbone (:mod:`matforge.finetune.registry`)
    corpus                        records, atoms, elements, the commands that made it (generation, then
                                  any filtered copy), where its labels come from and their licence
                                  (the manifests' model-label record, found through copies)
    leakage                       the corpus-vs-downstream overlap count of the science run, and the
                                  records a leakage check dropped from the corpus before training
    objective, steps, validation  the pre-training's objective, steps and last validation metrics
    downstream                    per task and training size: MAE mean ± std over seeds of this
                                  backbone and of the scratch baseline, and the % change
    good_for, not_for             what the backbone is and is not

Everything comes from the science run's files (``corpus.json``, ``leakage.json``,
``pretrain/<label>.json``, ``results.csv``); nothing is typed in. This script is not part of the
installed package; the directory it writes is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NAME = "matforge-efs-small"
LICENCE = ("MIT (the weights, trained by matforge); the training labels are CHGNet 0.3.0 predictions "
           "(chgnet package, Modified BSD licence)")
GOOD_FOR = ("a starting point for fine-tuning on small crystal property datasets (a few hundred labelled "
            "structures), and a fast, smooth, approximate energy/forces/stress model for screening, "
            "pre-relaxation and tests; an ASE calculator: MatforgeCalculator('matforge-efs-small')")
NOT_FOR = ("production molecular dynamics or relaxations where accuracy matters: it is a small model "
           "distilled from a universal potential (CHGNet) on a ~20,000-frame synthetic corpus, so its "
           "errors add to CHGNet's own; elements or chemistries absent from the corpus are extrapolation")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"make_efs_small: error: {path}: not found (has the science run got this far?)")
    return json.loads(path.read_text())


def downstream_table(science: Path, model: str) -> list[dict[str, Any]]:
    """Per (task, training size): this model's and scratch's MAE (mean, std over seeds) and % change."""
    from matforge.experiments.results import read_science_csv
    from matforge.experiments.tables import cell, percent_change, settings_of, summarize

    path = science / "results.csv"
    if not path.is_file():
        return []
    stats = summarize(read_science_csv(path))
    rows = []
    for setting in settings_of(stats, "exp1"):
        mine, scratch = cell(stats, setting, model), cell(stats, setting, "scratch")
        if mine is None or mine.mean is None:
            continue
        units = next((r["units"] for r in read_science_csv(path) if r["task"] == setting[1]), "")
        rows.append({"task": setting[1], "training_size": setting[2], "units": units,
                     "mae": mine.mean, "mae_std": mine.std, "seeds": len(mine.per_seed),
                     "scratch_mae": scratch.mean if scratch else None,
                     "change_percent": percent_change(mine.mean, scratch.mean if scratch else None)})
    return rows


def _leakage(science: Path, corpus_dir: Path) -> dict[str, Any] | None:
    """The science run's leakage check (``leakage.json``), run now for its tasks if it has not run."""
    from matforge.experiments.leakage_hook import leakage_overlap

    plan = _read_json(science / "plan.json")
    settings = plan.get("plan", plan)
    tasks = sorted({t["name"] for exp in ("exp1", "exp2") for t in settings.get(exp, {}).get("tasks", [])})
    return leakage_overlap(science, corpus_dir, tasks)


def release_provenance(science: Path, label: str) -> dict[str, Any]:
    """The release record (module docstring) from the science run's files."""
    from matforge.datasets.combine import history, model_labels
    from matforge.datasets.manifest import Manifest

    corpus = _read_json(science / "corpus.json")
    pretrain = _read_json(science / "pretrain" / f"{label}.json")
    leakage = _leakage(science, Path(corpus["path"]))
    manifest = Manifest.read(corpus["path"])
    labels_source = next(iter(model_labels(manifest.sources)), None)
    made_by = history(manifest)
    dropped_before = sum(step["records_dropped"] for step in made_by if "leakage" in step["filter"])
    metrics = pretrain.get("metrics") or {}
    labeller = (f"the {labels_source['model']} {labels_source.get('weights_version', '')} universal potential"
                if labels_source else "the corpus's calculator")
    trained_on = (f"{corpus['records']:,} non-equilibrium frames ({corpus['atoms']:,} atoms, "
                  f"{len(corpus.get('elements') or [])} elements) labelled with energy, forces and stress by "
                  f"{labeller} (`matforge data synth`; {dropped_before} records matching downstream structures "
                  f"dropped; the commands are in corpus.commands)")
    return {
        "name": NAME, "licence": LICENCE, "trained_on": trained_on,
        "corpus": {k: corpus.get(k) for k in ("records", "atoms", "elements", "created", "manifest_sha256")}
        | {"commands": [step["command"] for step in made_by], "labels_source": labels_source},
        "leakage": None if leakage is None else {
            "corpus_records_matching_downstream": leakage.get("overlap"), "method": leakage.get("method"),
            "records_dropped_before_training": dropped_before},
        "objective": pretrain.get("objective"), "steps": pretrain.get("steps"),
        "pretrain_wall_s": pretrain.get("wall_s"),
        "validation": {k: v for k, v in metrics.items() if k.startswith("val/")},
        "downstream": downstream_table(science, str(pretrain.get("objective"))),
        "good_for": GOOD_FOR, "not_for": NOT_FOR,
        "released_by": "matforge finetune/backbones/make_efs_small.py from a `matforge bench science` run",
    }


def make(science: Path, label: str, out: Path) -> Path:
    """Load ``<science>/backbones/<label>``, write ``<out>/matforge-efs-small`` with the release record."""
    import torch

    from matforge.models.backbone_file import load, read_card, save

    source = science / "backbones" / label
    model = load(source)
    wide = [k for k, p in model.named_parameters() if p.dtype != torch.float32]
    if wide:
        raise SystemExit(f"make_efs_small: {source}: parameters not float32: {', '.join(wide)}")
    provenance = dict(read_card(source).get("provenance") or {})
    provenance.pop("config", None)          # the run's full config stays with the run
    provenance.update(release_provenance(science, label))
    return save(model, out / NAME, provenance=provenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the released backbone matforge-efs-small.")
    parser.add_argument("--science", type=Path, required=True, help="the `matforge bench science --out` directory")
    parser.add_argument("--label", default="exp1-efs", help="which pre-training of that run (default exp1-efs)")
    parser.add_argument("--out", type=Path, default=HERE, help=f"where to write it (default {HERE})")
    args = parser.parse_args(argv)
    path = make(args.science, args.label, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
