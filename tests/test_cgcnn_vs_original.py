"""benchmarks/cgcnn_vs_original.py: the re-implemented original CGCNN computes the original's function,
and the script runs on tiny inputs (both malloc settings in child processes). No timing assertions."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark_scripts import load_benchmark
from matforge.datasets.graphs import GraphConfig
from matforge.datasets.loader import GraphDataset
from matforge.datasets.shard_dataset import open_dataset
from matforge.models.cgcnn import CGCNN, CGCNNHead
from matforge.models.model import AtomisticModel

import cgcnn_reference as reference

original_cgcnn = load_benchmark("original_cgcnn")
race_script = load_benchmark("cgcnn_vs_original")
OriginalCGCNN, OriginalTrainer = original_cgcnn.OriginalCGCNN, original_cgcnn.OriginalTrainer
load_matforge_weights, original_batch = original_cgcnn.load_matforge_weights, original_cgcnn.original_batch

TINY = ["--steps", "1", "--repeats", "1", "--warmup", "0", "--batches", "1"]


def _cgcnn_batch(directory: Path):
    graphs = GraphDataset(open_dataset(directory), GraphConfig(cutoff=8.0, max_neighbors=12, properties=("heat_all",)))
    return graphs, graphs.collate(list(range(len(graphs))))


def test_original_layout_matches_an_independent_featurisation(perov5_dir):
    """Dense (N, 12) table, distance order, Gaussians and atom features equal what the reference
    re-implementation of CIFData computes with pymatgen's neighbour search."""
    from pymatgen.core import Lattice, Structure

    graphs, batch = _cgcnn_batch(perov5_dir)
    ob = original_batch(batch, batch.y[:, 0])
    atom_init = reference.read_atom_init(Path(__file__).parents[1] / "models" / "data" / "atom_init.json")
    ptr = batch.ptr.tolist()
    assert [len(c) for c in ob.crystal_atom_idx] == [5, 5, 5]
    for k in range(batch.num_graphs):
        record = graphs.records[k]
        structure = Structure(Lattice(record.cell), record.numbers.tolist(), record.positions, coords_are_cartesian=True)
        atom_fea, nbr_fea, nbr_idx = reference.featurise(structure, atom_init)
        rows = slice(ptr[k], ptr[k + 1])
        assert torch.equal(ob.atom_fea[rows], atom_fea)
        assert torch.equal(ob.crystal_atom_idx[k], torch.arange(ptr[k], ptr[k + 1]))
        # same distances in the same (ascending) order: the Gaussians agree slot by slot
        assert torch.allclose(ob.nbr_fea[rows], nbr_fea, atol=1e-5)
        # same neighbours at each distance (the slots' distances agree, so pair both tables' indices
        # with the reference's distance per slot), except at the 12th distance when it is tied and
        # either of the tied neighbours may be kept
        for r, neighbours in enumerate(structure.get_all_neighbors(8.0, include_index=True)):
            dist = [round(n.nn_distance, 4) for n in sorted(neighbours, key=lambda n: n.nn_distance)[:12]]
            ours = ob.nbr_fea_idx[ptr[k] + r].tolist()
            theirs = (nbr_idx[r] + ptr[k]).tolist()
            inner = [s for s in range(12) if dist[s] < dist[11]]
            assert sorted((dist[s], ours[s]) for s in inner) == sorted((dist[s], theirs[s]) for s in inner)
    assert torch.equal(ob.target[:, 0], batch.y[:, 0])


def test_padding_rule_of_the_original():
    """A centre with fewer than 12 neighbours is padded with index 0 of its crystal at radius + 1."""
    from matforge.datasets.graphs import GraphBuilder
    from matforge.datasets.record import Record

    cell = np.eye(3) * 20.0
    dimer = Record(id="d", numbers=np.array([6, 8]), positions=np.array([[0.0, 0, 0], [1.2, 0, 0]]), cell=cell,
                   pbc=np.array([True, True, True]))
    builder = GraphBuilder(GraphConfig(cutoff=8.0, max_neighbors=12))
    batch = builder.collate([builder.parts(dimer), builder.parts(dimer)])
    ob = original_batch(batch, torch.zeros(2))
    assert ob.nbr_fea_idx.tolist() == [[1] + [0] * 11, [0] * 12, [3] + [2] * 11, [2] * 12]
    step = 0.2
    centres = torch.arange(0.0, 8.0 + step / 2, step, dtype=torch.float64)
    expected_pad = torch.exp(-(9.0 - centres) ** 2 / step ** 2).float()
    assert torch.allclose(ob.nbr_fea[0, 1], expected_pad)
    assert torch.allclose(ob.nbr_fea[0, 0], torch.exp(-(1.2 - centres) ** 2 / step ** 2).float(), atol=1e-6)


def test_original_model_equals_matforge_cgcnn_and_the_reference(perov5_dir):
    """Same weights: the baseline's training-mode output equals matforge's cgcnn + cgcnn head and the
    reference's functional forward; one SGD step of each gives the same weights."""
    _, batch = _cgcnn_batch(perov5_dir)
    torch.manual_seed(3)
    backbone = CGCNN()
    model = AtomisticModel(backbone, {"target": CGCNNHead(64, 128, 1, mean=1.5, std=0.7)})
    original = OriginalCGCNN(nbr_fea_len=backbone.expansion.num_features)
    load_matforge_weights(original, model, "target")
    ob = original_batch(batch, batch.y[:, 0])
    model.train()
    original.train()
    ours = model(batch)["properties_normalized"]
    theirs = copy.deepcopy(original)(*ob.inputs)  # the original's BatchNorm statistics stay as loaded
    assert torch.allclose(ours, theirs, atol=1e-5)
    crystals = [(ob.atom_fea[c], ob.nbr_fea[c], ob.nbr_fea_idx[c] - int(c[0])) for c in ob.crystal_atom_idx]
    ref = reference.forward({k: v.detach() for k, v in original.state_dict().items()}, 3, 1, crystals, training=True)
    assert torch.allclose(theirs, ref, atol=1e-5)

    # one training step of each from the same start
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    loss = torch.nn.functional.mse_loss(ours, ((batch.y[:, :1] - 1.5) / 0.7))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    OriginalTrainer(original, 1.5, 0.7).step(ob)
    after = original.state_dict()
    compared = 0
    for name, value in model.state_dict().items():
        for prefix in ("backbone.", "heads.target."):
            if name.startswith(prefix) and name[len(prefix):] in after:
                assert torch.allclose(value.float(), after[name[len(prefix):]].float(), atol=1e-5), name
                compared += 1
    assert compared == len(after)  # every weight and BatchNorm statistic of the original


def test_original_batch_rejects_more_than_max_neighbours(perov5_dir):
    graphs = GraphDataset(open_dataset(perov5_dir), GraphConfig(cutoff=8.0))
    batch = graphs.collate([0])
    with pytest.raises(ValueError, match="more than max_num_nbr=12"):
        original_batch(batch, torch.zeros(1))


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_race_report_in_this_process(perov5_dir, capsys):
    assert race_script.main([str(perov5_dir), "--malloc", "current", "--json", *TINY, "--batch-size", "3",
                             "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for side in ("original", "matforge"):
        assert _positive(report[side]["structures_per_s"]) and _positive(report[side]["step_ms"]), side
        assert report[side]["atoms_per_s"] == pytest.approx(5 * report[side]["structures_per_s"])  # 5-atom cells
    assert report["speedup"] == pytest.approx(report["matforge"]["structures_per_s"] / report["original"]["structures_per_s"])
    assert report["batch_size"] == 3 and report["target"] == "heat_all" and report["threads"] == 1
    assert report["hyperparameters"]["max_neighbors"] == 12


def test_both_malloc_settings_in_children_and_the_docs_section(perov5_dir, tmp_path, capsys):
    """The "tuned" child starts with the MALLOC_* variables, the "default" child without; --docs writes
    the printed table between the script's markers and keeps the rest of the file."""
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nkept\n")
    assert race_script.main([str(perov5_dir), *TINY, "--batch-size", "3", "--threads", "1", "--docs", str(docs)]) == 0
    table = capsys.readouterr().out
    assert "| original CGCNN (re-implemented) | default |" in table and "| matforge cgcnn | tuned |" in table
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and "<!-- benchmarks/cgcnn_vs_original.py -->" in text
    assert "speed-up of matforge over the original, tuned malloc" in text and "- machine: " in text
    children = race_script.race_in_child([str(perov5_dir), *TINY, "--batch-size", "3", "--threads", "1"], "tuned")
    assert children["malloc_env"] == race_script.TUNED_MALLOC_ENV
