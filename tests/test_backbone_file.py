"""Backbone file: exact save/load round trips, the card, atomic writes, and every refusal of ``load``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from matforge.datasets.graphs import GraphBuilder, GraphConfig
from matforge.datasets.readers.structures import from_pymatgen
from matforge.datasets.record import Record
from matforge.models import load, save
from matforge.models.backbone_file import FORMAT_VERSION, BackboneFileError, read_card
from matforge.models.cgcnn import CGCNN, CGCNNHead
from matforge.models.cgcnn_attention import AttentionCGCNN
from matforge.models.model import AtomisticModel


def structures() -> list[Structure]:
    a = Structure(Lattice.from_parameters(3.9, 4.0, 4.1, 88, 91, 93), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.52, 0.49], [0.5, 0.5, 0.03], [0.48, 0.0, 0.5], [0.01, 0.5, 0.5]])
    b = Structure(Lattice.from_parameters(4.2, 4.2, 4.3, 90, 90, 120), ["Cs", "Cl"], [[0, 0, 0], [0.34, 0.66, 0.52]])
    return [a, b]


def batch(dtype: str = "float32") -> Batch:
    builder = GraphBuilder(GraphConfig(cutoff=8.0, max_neighbors=12, dtype=dtype))
    graphs = []
    for k, s in enumerate(structures()):
        numbers, positions, cell, pbc = from_pymatgen(s)
        graphs.append(builder(Record(id=str(k), numbers=numbers, positions=positions, cell=cell, pbc=pbc)))
    return Batch.from_data_list(graphs)


def randomised(model: AtomisticModel, seed: int = 0) -> AtomisticModel:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name or name.endswith(".std")
                        else torch.randn(t.shape, generator=g) * 0.3)
            else:  # num_batches_tracked
                t.fill_(7)
    return model.eval()


def cgcnn_model(n_conv: int = 2, atom_fea_len: int = 16, elements: list[int] | None = None) -> AtomisticModel:
    head = CGCNNHead(in_dim=atom_fea_len, h_fea_len=8, n_h=2, mean=1.0, std=2.0, target="gap", units="eV")
    return randomised(AtomisticModel(CGCNN(atom_fea_len=atom_fea_len, n_conv=n_conv), {"cgcnn": head},
                                     elements=elements))


def outputs(model: AtomisticModel, dtype: str = "float32") -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(batch(dtype))


def assert_same_model(a: AtomisticModel, b: AtomisticModel, dtype: str = "float32") -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    oa, ob = outputs(a, dtype), outputs(b, dtype)
    assert set(oa) == set(ob)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


# --- round trips -----------------------------------------------------------------------------------

def test_cgcnn_round_trip_is_exact_and_the_card_describes_the_model(tmp_path: Path) -> None:
    model = cgcnn_model(elements=[8, 17, 22, 38, 55])
    model.element_refs[8] = -4.25
    provenance = {"dataset_manifest_sha256": "ab" * 32, "objective": "property", "steps": 12, "metrics": {"mae": 0.1}}
    assert save(model, tmp_path / "bb", provenance=provenance) == tmp_path / "bb"
    assert sorted(p.name for p in (tmp_path / "bb").iterdir()) == ["card.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["bb"]  # no temporary directory left behind
    loaded = load(tmp_path / "bb")
    assert not loaded.training
    assert_same_model(model, loaded)
    assert loaded.elements == [8, 17, 22, 38, 55] and float(loaded.element_refs[8]) == -4.25
    card = json.loads((tmp_path / "bb" / "card.json").read_text())
    assert card["format"] == "matforge-backbone" and card["format_version"] == FORMAT_VERSION
    assert card["architecture"] == "cgcnn" and card["hyperparameters"] == model.backbone.hparams
    assert (card["cutoff"], card["max_neighbors"]) == (8.0, 12)
    assert card["featurisation"] == {"cutoff": 8.0, "max_neighbors": 12, "dtype": "float32"}
    assert card["heads"]["cgcnn"]["kind"] == "cgcnn" and card["heads"]["cgcnn"]["target"] == "gap"
    assert card["normalizers"]["cgcnn"] == {"mean": float(model.heads["cgcnn"].mean), "std": float(model.heads["cgcnn"].std)}
    assert len(card["element_refs"]) == 101 and card["element_refs"][8] == -4.25
    assert card["provenance"] == provenance and card["dtype"] == "float32"
    assert loaded.card["weights"]["file"] == "model.safetensors"


def test_attention_and_float64_round_trips_are_exact(tmp_path: Path) -> None:
    head = CGCNNHead(in_dim=8, h_fea_len=4, n_h=1)
    model = randomised(AtomisticModel(AttentionCGCNN(atom_fea_len=8, n_conv=2), {"cgcnn": head})).double()
    save(model, tmp_path / "att")
    assert read_card(tmp_path / "att")["dtype"] == "float64"
    loaded = load(tmp_path / "att" / "card.json")  # the card's path works too
    assert next(loaded.parameters()).dtype == torch.float64
    assert_same_model(model, loaded, "float64")


def test_save_replaces_a_backbone_but_not_other_directories(tmp_path: Path) -> None:
    first, second = cgcnn_model(), randomised(cgcnn_model(), seed=1)
    save(first, tmp_path / "bb")
    save(second, tmp_path / "bb")
    assert_same_model(second, load(tmp_path / "bb"))
    assert [p.name for p in tmp_path.iterdir()] == ["bb"]
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BackboneFileError, match="refusing to overwrite"):
        save(first, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


# --- refusals --------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save(cgcnn_model(n_conv=2, atom_fea_len=16), tmp_path / "bb")


def edit_card(path: Path, **changes) -> None:
    card = json.loads((path / "card.json").read_text())
    for key, value in changes.items():
        if value is None:
            del card[key]
        else:
            card[key] = value
    (path / "card.json").write_text(json.dumps(card))


def test_newer_format_version_is_refused(saved: Path) -> None:
    edit_card(saved, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BackboneFileError, match=f"format version {FORMAT_VERSION + 1}, newer .*upgrade matforge"):
        load(saved)


def test_unknown_architecture_is_refused(saved: Path) -> None:
    edit_card(saved, architecture="schnet")
    with pytest.raises(BackboneFileError, match=r"unknown architecture 'schnet' \(this matforge knows cgcnn, "):
        load(saved)


def test_weights_of_another_architecture_are_refused_naming_the_tensors(saved: Path, tmp_path: Path) -> None:
    hp = read_card(saved)["hyperparameters"]
    edit_card(saved, hyperparameters={**hp, "n_conv": 3})
    with pytest.raises(BackboneFileError, match=r"missing 12 tensor\(s\): backbone\.convs\.2\.bn1\.bias"):
        load(saved)
    edit_card(saved, hyperparameters={**hp, "n_conv": 1})
    with pytest.raises(BackboneFileError, match=r"12 unexpected tensor\(s\): backbone\.convs\.1\.bn1\.bias"):
        load(saved)
    edit_card(saved, hyperparameters={**hp, "n_conv": 2, "atom_fea_len": 8})
    with pytest.raises(BackboneFileError, match=r"mis-shaped tensor\(s\) \(file vs architecture\): "
                                                r"backbone\.convs\.0\.bn1\.bias \(32,\) vs \(16,\)"):
        load(saved)
    # an attention card over CGCNN weights: names on both sides
    other = save(randomised(AtomisticModel(AttentionCGCNN(atom_fea_len=16, n_conv=2), {"cgcnn": CGCNNHead(16, 8, 2)})),
                 tmp_path / "att")
    edit_card(other, architecture="cgcnn", hyperparameters={**hp, "n_conv": 2, "atom_fea_len": 16})
    with pytest.raises(BackboneFileError, match=r"missing 4 tensor\(s\): backbone\.convs\.0\.fc_full\.bias.*"
                                                r"4 unexpected tensor\(s\): backbone\.convs\.0\.fc_core\.bias.*"
                                                r"backbone\.convs\.0\.bn1\.bias \(16,\) vs \(32,\)"):
        load(other)


def test_weights_replaced_after_saving_are_refused(saved: Path, tmp_path: Path) -> None:
    other = save(cgcnn_model(n_conv=3), tmp_path / "other")
    (saved / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(BackboneFileError, match="sha256 mismatch"):
        load(saved)
    edit_card(saved, weights=None)  # without a checksum the key check still catches it
    with pytest.raises(BackboneFileError, match=r"unexpected tensor\(s\): backbone\.convs\.2\."):
        load(saved)
    (saved / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(BackboneFileError, match="cannot read the weights"):
        load(saved)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "card.json").write_text('{"format": "matforge-backbone", "format_ver'), "corrupt card: not valid JSON"),
    (lambda p: (p / "card.json").write_text("[1, 2]"), "expected a JSON object"),
    (lambda p: edit_card(p, heads=None), "corrupt card: no 'heads' field"),
    (lambda p: edit_card(p, hyperparameters=[64, 3]), "'hyperparameters' is list, expected dict"),
    (lambda p: edit_card(p, element_refs=[0.0] * 100), "'element_refs' must be 101 finite numbers"),
    (lambda p: edit_card(p, elements=[0, 200]), "'elements' must be atomic numbers"),
    (lambda p: edit_card(p, format="something-else"), "not a matforge backbone card"),
    (lambda p: edit_card(p, heads={"cgcnn": {"kind": "cgcnn", "colour": "red"}}), "cannot rebuild head 'cgcnn'"),
    (lambda p: edit_card(p, hyperparameters={"depth": 3}), "hyper-parameters do not fit architecture 'cgcnn'"),
    (lambda p: (p / "card.json").unlink(), "no card.json; not a matforge backbone"),
    (lambda p: (p / "model.safetensors").unlink(), "no model.safetensors"),
])
def test_corrupt_cards_are_refused_with_a_clear_message(saved: Path, damage, message: str) -> None:
    damage(saved)
    with pytest.raises(BackboneFileError, match=message) as err:
        load(saved)
    assert str(saved) in str(err.value)


def test_load_of_a_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(BackboneFileError, match="no such backbone directory"):
        load(tmp_path / "nowhere")


def test_load_works_without_ray_or_the_pretraining_package(saved: Path, tmp_path: Path) -> None:
    b = batch()
    fields = {k: getattr(b, k) for k in ("z", "pos", "cell", "shifts", "edge_index", "batch")}
    torch.save(fields, tmp_path / "batch.pt")
    expected = outputs(load(saved))["properties"].view(-1).tolist()
    script = textwrap.dedent(f"""
        import json, sys, types
        sys.modules["ray"] = None                # `import ray` now raises ImportError
        sys.modules["matforge.pretrain"] = None
        import torch
        from matforge.models import load
        model = load({str(saved)!r})
        fields = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
        with torch.no_grad():
            out = model(types.SimpleNamespace(**fields, num_graphs=2))
        assert sys.modules["ray"] is None
        assert not [m for m in sys.modules if m.startswith(("ray.", "matforge.pretrain."))]
        print(json.dumps([type(model).__name__, out["properties"].view(-1).tolist()]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    name, values = json.loads(done.stdout.strip().splitlines()[-1])
    assert name == "AtomisticModel" and values == expected
