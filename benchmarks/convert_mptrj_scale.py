"""``matforge data convert`` of an MPtrj-format file of N frames (default 100,000): structures per
second and peak memory, the check that conversion streams with bounded memory at MPtrj scale.

    python benchmarks/convert_mptrj_scale.py [--frames 100000] [--workers 1,2] [--docs docs/benchmarks.md]

The file is generated from the frames of tests/fixtures/mptrj/mptrj_fixture.json (real DFT rows of
mlearn in MPtrj's layout), repeated under new material and frame ids (one material per fixture
material and repetition), written with ``json.dump`` into a temporary folder. Each conversion runs
as its own ``matforge data convert`` process; its peak resident memory is the maximum RSS of that
process and its pool workers (``getrusage(RUSAGE_CHILDREN)`` in a fresh parent of each run: the
largest single process). Prints a table; ``--docs`` writes it into that file between this script's markers.
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

# a fresh parent for each conversion, so RUSAGE_CHILDREN's maximum is that conversion's own
MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mptrj" / "mptrj_fixture.json"


def write_mptrj(path: Path, frames: int) -> int:
    """An MPtrj-format JSON of ``frames`` frames built from the fixture's; returns the count written."""
    source = json.loads(FIXTURE.read_text())
    rows = [(mp, fid, frame) for mp, material in source.items() for fid, frame in material.items()]
    written = 0
    with open(path, "w") as handle:
        handle.write("{")
        rep = 0
        while written < frames:
            for mp in source:
                material = {f"{fid}-r{rep}": {**frame, "mp_id": f"{mp}-r{rep}"}
                            for m, fid, frame in rows if m == mp}
                items = list(material.items())[: frames - written]
                if not items:
                    break
                handle.write(("," if written else "") + json.dumps(f"{mp}-r{rep}") + ":" + json.dumps(dict(items)))
                written += len(items)
                if written >= frames:
                    break
            rep += 1
        handle.write("}")
    return written








def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--workers", default="1,2", help="comma-separated conversion process counts")
    p.add_argument("--docs", help="markdown file whose section between this script's markers is replaced")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "mptrj.json"
        frames = write_mptrj(source, args.frames)
        size_mb = source.stat().st_size / 2**20
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"out{workers}"
            started = time.perf_counter()
            command = [sys.executable, "-m", "matforge", "data", "convert", str(source), "--out", str(out),
                       "--workers", str(workers), "--no-progress"]
            done = subprocess.run([sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            peak_mb = int(done.stdout.strip().splitlines()[-1]) / 1024
            records = json.loads((out / "manifest.json").read_text())["num_records"]
            rows.append((workers, records, seconds, records / seconds, peak_mb))
    lines = [f"- input: {frames:,} MPtrj-format frames ({size_mb:.0f} MB of JSON) built from the fixture's frames", "",
             "| workers | records written | wall time, s | structures/s | peak RSS of one process, MB |",
             "|---|---|---|---|---|"]
    lines += [f"| {w} | {n:,} | {s:.1f} | {r:,.0f} | {m:.0f} |" for w, n, s, r, m in rows]
    body = printed_table_section("MPtrj-format conversion at scale", "\n".join(lines), markdown=True)
    print(body)
    if args.docs:
        update_section(args.docs, "benchmarks/convert_mptrj_scale.py", body)


if __name__ == "__main__":
    main()
