"""``matforge predict MODEL SOURCE... [--out FILE.csv] [--batch-size N]``: predictions of a backbone.

Reads every source with the dataset readers (any format ``matforge data convert`` accepts, e.g. a
CGCNN folder of CIFs + ``id_prop.csv``), builds each structure's graph at the model's featurisation
(the card's cutoff and neighbour limit), runs the model in eval mode and writes a CSV with one row
per structure, in source order:

* ``id,prediction`` for a model with one property head output (a CGCNN head gives the target in
  its units; a classifier the probability of class 1);
* ``id,<name>,...`` for a property head with several named targets;
* ``id,energy`` (eV, total) for a model with only an energy head.

A record that cannot be used (unreadable structure, element the model never saw...) is reported on
stderr as ``SOURCE: RECORD: reason`` and left out; a source that cannot be read at all stops the
command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Iterator


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict with a backbone (e.g. an imported CGCNN model) on structures from any source",
        description="Write id,prediction rows (CSV) for every structure of the sources, in order. Records that "
                    "fail are reported on stderr and left out.",
    )
    p.add_argument("model", help="backbone directory (matforge export / import-cgcnn output)")
    p.add_argument("sources", nargs="+", help="files or folders the readers accept (e.g. a CGCNN folder)")
    p.add_argument("--out", help="CSV file to write (default: print to stdout)")
    p.add_argument("--batch-size", type=int, default=64, help="structures per forward pass (default 64)")
    p.add_argument("--format", default="auto", help="reader of the sources (default: auto-detect)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option (repeatable), as in 'matforge data convert'")
    p.set_defaults(func=run)


def output_columns(model: Any) -> tuple[str, list[str]]:
    """(output key, CSV column names after ``id``) for ``model``'s heads."""
    specs = {name: head.spec() for name, head in model.heads.items()}
    for spec in specs.values():
        if spec.get("kind") == "cgcnn":
            return "properties", ["prediction"]
        if spec.get("kind") == "property":
            names = list(spec.get("names", []))
            return "properties", ["prediction"] if len(names) == 1 else names
    if "energy" in model.heads:
        return "energy", ["energy"]
    raise SystemExit(f"matforge: error: the model has no property or energy head (heads: {sorted(specs)}); "
                     "nothing to predict")


def iter_graphs(readers: list[tuple[str, Any]], builder: Any, model: Any,
                report: Callable[[str, str, str], None]) -> Iterator[tuple[str, Any]]:
    """Yield ``(record id, graph)`` for every usable record of the ``(source, reader)`` pairs;
    ``report(source, record, reason)`` the others."""
    import torch

    from matforge.datasets.errors import RecordError
    from matforge.datasets.record import validate

    for source, reader in readers:
        for item in reader.items():
            try:
                record = validate(reader.to_record(item))
                model.check_elements(torch.from_numpy(record.numbers))
                graph = builder(record)
            except (RecordError, ValueError) as exc:
                report(source, item.locator, getattr(exc, "reason", None) or str(exc))
                continue
            yield record.id, graph


def predict(model: Any, graphs: Iterator[tuple[str, Any]], key: str, batch_size: int) -> Iterator[tuple[str, list[float]]]:
    """Run ``model`` on batches of ``graphs``; yield ``(id, values)`` in input order."""
    import torch
    from torch_geometric.data import Batch

    def flush(ids: list[str], data: list[Any]) -> Iterator[tuple[str, list[float]]]:
        with torch.inference_mode():
            out = model(Batch.from_data_list(data))[key]
        values = out.reshape(len(ids), -1).double().cpu().tolist()
        yield from zip(ids, values)

    ids: list[str] = []
    data: list[Any] = []
    for record_id, graph in graphs:
        ids.append(record_id)
        data.append(graph)
        if len(ids) == batch_size:
            yield from flush(ids, data)
            ids, data = [], []
    if ids:
        yield from flush(ids, data)


def run(args: argparse.Namespace) -> int:
    import os

    from matforge.cli.data_convert import parse_options
    from matforge.datasets.graphs import GraphBuilder, GraphConfig
    from matforge.datasets.readers import make_reader
    from matforge.models.backbone_file import load

    if args.batch_size < 1:
        raise SystemExit(f"matforge: error: --batch-size must be >= 1, got {args.batch_size}")
    model = load(args.model)
    featurisation = model.card["featurisation"]
    builder = GraphBuilder(GraphConfig(cutoff=featurisation["cutoff"], max_neighbors=featurisation["max_neighbors"],
                                       dtype=featurisation.get("dtype", "float32"), on_isolated="flag"))
    key, columns = output_columns(model)
    options = parse_options(args.option)
    readers = [(source, make_reader(source, args.format, options)) for source in args.sources]  # fail before writing

    failures: list[str] = []

    def report(source: str, record: str, reason: str) -> None:
        failures.append(record)
        print(f"{source}: {record}: {reason}", file=sys.stderr)

    rows = predict(model, iter_graphs(readers, builder, model, report), key, args.batch_size)
    written = 0
    if args.out:  # write beside the target, then rename: no half-written CSV after an error
        partial = f"{args.out}.partial"
        try:
            with open(partial, "w", newline="", encoding="utf-8") as handle:
                written = write_csv(handle, columns, rows)
            os.replace(partial, args.out)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        print(f"wrote {written} prediction(s) to {args.out}", file=sys.stderr)
    else:
        written = write_csv(sys.stdout, columns, rows)
    if failures:
        print(f"{len(failures)} record(s) failed and were left out (see above)", file=sys.stderr)
    return 1 if failures and not written else 0


def write_csv(handle: Any, columns: list[str], rows: Iterator[tuple[str, list[float]]]) -> int:
    """Write the header and the rows (values as shortest round-tripping decimals); return the count."""
    import csv

    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(["id", *columns])
    count = 0
    for record_id, values in rows:
        writer.writerow([record_id, *(repr(v) for v in values)])
        count += 1
    return count
