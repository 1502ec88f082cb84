"""``matforge data synth --calculator emt|chgnet --structures N --out DIR --seed S``.

``emt``: offline fcc-metal frames labelled by ASE's EMT (:mod:`matforge.datasets.synth`).
``chgnet``: a pre-training corpus of non-equilibrium crystal frames labelled by the CHGNet universal
potential (:mod:`matforge.datasets.corpus_writer`; needs ``pip install "matforge[corpus]"``).
"""

from __future__ import annotations

import argparse
import shlex
import sys

CALCULATORS = ("emt", "chgnet")
DEFAULT_ELEMENTS = "Cu,Ag,Au,Ni,Pd,Pt,Al"
CHGNET_HELP = (
    "With --calculator chgnet: seed crystals (pymatgen's AFLOW prototypes, ASE's reference crystals, the "
    "CGCNN sample CIFs and carbon24 from $MATFORGE_DATA_ROOT or ../shared/data, plus --seed-structures files; "
    "missing sources are skipped with a note), same-group element substitutions, then rattles (0.02-0.15 A), "
    "strains (+-5% with shear), short MD and FIRE relaxation trajectories, labelled with CHGNet 0.3.0's total "
    "energy (eV), forces (eV/A) and stress (eV/A^3, ASE sign). Frames with |F| > 50 eV/A, |sigma| > 200 GPa or "
    "energy outside [-15, 5] eV/atom are dropped, counted and listed in skipped.jsonl; N counts frames attempted. "
    "The manifest names the model, its versions and licence (labels are a model's, not DFT). Parallel "
    "(--workers) and resumable: finished chunks persist in DIR.partial/; rerun the same command after an "
    "interrupt to continue (a changed setting is refused); DIR appears only when complete. --elements, "
    "when given, restricts the elements the corpus may contain (substitution targets)."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate labelled off-equilibrium structures (EMT fcc metals, or a CHGNet-labelled crystal corpus)",
        description="EMT (default): relaxed, rattled, strained, vacancy, binary-alloy and short-MD fcc cells "
                    "labelled with EMT energy (eV), forces (eV/A) and 3x3 stress (eV/A^3, ASE sign). "
                    + CHGNET_HELP + " Output is written like `matforge data convert` output. Deterministic for "
                    "a seed.",
    )
    p.add_argument("--calculator", choices=CALCULATORS, default="emt", help="labelling calculator (default emt)")
    p.add_argument("--structures", type=int, required=True, metavar="N", help="number of records (chgnet: frames attempted)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--elements", default=None,
                   help=f"comma-separated symbols; EMT metals (default {DEFAULT_ELEMENTS}); for chgnet the "
                        "elements the corpus may contain (default: all 89 of CHGNet's)")
    p.add_argument("--max-atoms", type=int, default=32, help="largest cell in atoms (default 32, at least 4)")
    p.add_argument("--workers", type=int, default=1, help="chgnet: labelling processes, one torch thread each (default 1)")
    p.add_argument("--seed-structures", nargs="+", default=[], metavar="FILE",
                   help="chgnet: extra seed crystals (CIF, extxyz, any ASE-readable file; every frame is used)")
    p.add_argument("--chunk-frames", type=int, default=50, help="chgnet: frames per resumable chunk (default 50)")
    p.add_argument("--shard-size", type=int, default=50_000, help="records per shard (default 50000)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR once the new dataset is complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = "matforge " + shlex.join(sys.argv[1:])
    progress = not args.no_progress and sys.stderr.isatty()
    if args.calculator == "chgnet":
        return _run_chgnet(args, command, progress)
    from matforge.datasets.synth import write_synth

    try:
        report = write_synth(
            args.out, args.structures, seed=args.seed, elements=(args.elements or DEFAULT_ELEMENTS).split(","),
            max_atoms=args.max_atoms, shard_size=args.shard_size, overwrite=args.overwrite,
            progress=progress, command=command,
        )
    except ValueError as exc:
        raise SystemExit(f"matforge: error: {exc}") from None
    print(f"wrote {report.num_records} {args.calculator.upper()}-labelled records ({report.num_atoms} atoms) "
          f"in {report.num_shards} shard(s) to {report.out}")
    if report.num_skipped:
        print(f"skipped {report.num_skipped} record(s); see {report.out}/skipped.jsonl")
    return 0


def _run_chgnet(args: argparse.Namespace, command: str, progress: bool) -> int:
    from matforge.datasets.chgnet_labels import MissingExtraError, require_chgnet

    try:
        require_chgnet()
    except MissingExtraError as exc:
        raise SystemExit(f"matforge: error: {exc}") from None
    from matforge.datasets.corpus_frames import CorpusSettings
    from matforge.datasets.corpus_writer import write_corpus

    try:
        elements = None if not args.elements else _atomic_numbers(args.elements)
        settings = CorpusSettings(structures=args.structures, seed=args.seed, max_atoms=args.max_atoms,
                                  chunk_frames=args.chunk_frames, elements=elements)
        report = write_corpus(args.out, settings, workers=args.workers, seed_files=args.seed_structures,
                              shard_size=args.shard_size, overwrite=args.overwrite, progress=progress, command=command)
    except ValueError as exc:
        raise SystemExit(f"matforge: error: {exc}") from None
    print(f"wrote {report.num_records} CHGNET-labelled records ({report.num_atoms} atoms) in {report.num_shards} "
          f"shard(s) to {report.out} in {report.seconds:.0f} s ({report.chunks_generated} chunk(s) generated, "
          f"{report.chunks_reused} resumed)")
    print("seed structures: " + ", ".join(f"{k} {v}" for k, v in report.seed_sources.items()))
    if report.num_skipped:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped_reasons.items()))
        print(f"dropped {report.num_skipped} frame(s) ({reasons}); see {report.out}/skipped.jsonl")
    return 0


def _atomic_numbers(text: str) -> tuple[int, ...]:
    from ase.data import atomic_numbers

    symbols = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in symbols if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"unknown element symbol(s): {', '.join(unknown)}")
    return tuple(sorted({atomic_numbers[s] for s in symbols}))
