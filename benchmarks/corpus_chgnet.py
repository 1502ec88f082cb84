"""``matforge data synth --calculator chgnet`` throughput: N frames (default 2,000) with 1 and 2
workers, frames per second and the projected minutes for a 20,000-frame corpus.

    python benchmarks/corpus_chgnet.py [--frames 2000] [--workers 1,2] [--docs docs/benchmarks.md]

Each run is its own ``matforge data synth --calculator chgnet`` process (default seed structures:
every source found, default ``--max-atoms 32``) writing into a temporary folder. The wall time
includes the start (loading the ~2,400 seed structures, mostly parsing carbon24's CIFs, and
CHGNet in each worker) and the final write of the shards; the projection for 20,000 frames
scales the generation part only and adds the measured fixed part once. Needs the corpus extra
(``pip install "matforge[corpus]"``). Prints a table; ``--docs`` writes it into that file between
this script's markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from matforge.training.docs_tables import printed_table_section, update_section

TARGET = 20_000


def run(frames: int, workers: int, folder: Path) -> dict:
    """One ``matforge data synth --calculator chgnet`` run; wall time, records and atoms written."""
    out = folder / f"corpus-w{workers}"
    command = [sys.executable, "-m", "matforge", "data", "synth", "--calculator", "chgnet", "--structures",
               str(frames), "--out", str(out), "--workers", str(workers), "--seed", "0", "--no-progress"]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": seconds, "records": manifest["num_records"], "atoms": manifest["num_atoms"],
            "skipped": manifest["num_skipped"], "stdout": done.stdout}


def fixed_seconds(folder: Path, workers: int) -> float:
    """The start and finish of a run without generation: a 1-frame corpus (one chunk)."""
    return run(1, workers, folder / "fixed")["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--docs", help="markdown file whose section between this script's markers is replaced")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fixed = fixed_seconds(folder, 1)
        for workers in [int(w) for w in args.workers.split(",")]:
            r = run(args.frames, workers, folder)
            generating = max(r["seconds"] - fixed, 1e-9)
            rate = args.frames / generating
            projected = (fixed + TARGET / rate) / 60
            rows.append((workers, r["records"], r["skipped"], r["atoms"] / max(r["records"], 1), r["seconds"],
                         rate, projected))
    lines = [f"- {args.frames:,} frames attempted per run (seed 0, all seed sources found, --max-atoms 32); "
             f"fixed start + finish of a run: {fixed:.0f} s (1-frame run)", "",
             "| workers | records written | frames dropped | mean atoms | wall time, s | frames/s (generation) "
             f"| projected minutes for {TARGET:,} frames |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {w} | {n:,} | {d} | {a:.1f} | {s:.0f} | {rate:.2f} | {m:.0f} |" for w, n, d, a, s, rate, m in rows]
    body = printed_table_section("CHGNet corpus generation (`matforge data synth --calculator chgnet`)",
                                 "\n".join(lines), markdown=True)
    print(body)
    if args.docs:
        update_section(args.docs, "benchmarks/corpus_chgnet.py", body)


if __name__ == "__main__":
    main()
