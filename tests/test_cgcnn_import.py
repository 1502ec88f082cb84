"""Released CGCNN models: every checkpoint imports, and ``matforge predict`` reproduces the original
code's predictions on its sample CIFs (the key acceptance test).

The original repository cannot be installed here; ``tests/cgcnn_reference.py`` re-implements its
data pipeline and forward pass independently (pymatgen neighbours, dense (N, M) tables, no matforge
code). The released checkpoints and sample CIFs are read from the shared data folder
(``MATFORGE_SHARED_DATA``, default ``../shared/data`` beside the repository: all 8 models) or, where it
is absent, from ``tests/fixtures/cgcnn_release`` (5 of them, the sample CIFs): the same tests run in a
clone. The 80 reference predictions are stored in ``tests/fixtures/cgcnn_reference/predictions.csv``
so a change in either implementation shows.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cgcnn_reference as ref
from matforge.cli.main import main
from matforge.models.cgcnn_import import CgcnnImportError, convert_checkpoint, read_checkpoint

SHARED = Path(os.environ.get("MATFORGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RELEASE = SHARED / "cgcnn" if (SHARED / "cgcnn" / "pre-trained").is_dir() else \
    Path(__file__).parent / "fixtures" / "cgcnn_release"
RELEASED = RELEASE / "pre-trained"
SAMPLE = RELEASE / "sample-regression"
FIXTURE = Path(__file__).parent / "fixtures" / "cgcnn_reference" / "predictions.csv"
ALL_MODELS = ["band-gap", "bulk-moduli", "efermi", "final-energy-per-atom", "formation-energy-per-atom",
              "poisson-ratio", "semi-metal-classification", "shear-moduli"]
MODELS = [name for name in ALL_MODELS if (RELEASED / f"{name}.pth.tar").is_file()]  # 8 shared, 5 in the fixture


def original_checkpoint(name: str) -> dict:
    """The checkpoint as the tests read it, independently of matforge's importer."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar

    with torch.serialization.safe_globals([(scalar, "numpy.core.multiarray.scalar"), np.dtype,
                                           type(np.dtype(np.float64))]):
        return torch.load(RELEASED / f"{name}.pth.tar", weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All 8 released models imported with ``matforge import-cgcnn``."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in MODELS:
        assert main(["import-cgcnn", str(RELEASED / f"{name}.pth.tar"), "--out", str(root / name)]) == 0
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def reference_predictions() -> dict[str, dict[str, float]]:
    """{model: {id: prediction}} of the independent re-implementation of the original code."""
    atom_init = ref.read_atom_init(SAMPLE / "atom_init.json")
    cifs = sorted(SAMPLE.glob("*.cif"))
    crystals = [ref.featurise_cif(cif, atom_init) for cif in cifs]
    out = {}
    for name in MODELS:
        c = original_checkpoint(name)
        values = ref.predict(c["state_dict"], c["args"], c["normalizer"], crystals)
        out[name] = {cif.stem: v for cif, v in zip(cifs, values)}
    return out


def read_predictions(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "prediction"]
    return {row[0]: float(row[1]) for row in rows[1:]}


@pytest.mark.parametrize("name", MODELS)
def test_every_released_model_imports_with_its_card(imported: dict[str, Path], name: str) -> None:
    from safetensors.torch import load_file

    original = original_checkpoint(name)
    card = json.loads((imported[name] / "card.json").read_text())
    args = original["args"]
    assert card["architecture"] == "cgcnn"
    assert card["hyperparameters"]["n_conv"] == args["n_conv"] and card["hyperparameters"]["atom_fea_len"] == args["atom_fea_len"]
    assert card["featurisation"] == {"cutoff": 8.0, "max_neighbors": 12, "dtype": "float32"}
    head = card["heads"]["cgcnn"]
    assert (head["h_fea_len"], head["n_h"], head["task"]) == (args["h_fea_len"], args["n_h"], args["task"])
    assert head["target"] == args["data_options"][2]
    if args["task"] == "regression":
        assert card["normalizers"]["cgcnn"] == {"mean": original["normalizer"]["mean"], "std": original["normalizer"]["std"]}
    provenance = card["provenance"]
    assert provenance["source_sha256"] == hashlib.sha256((RELEASED / f"{name}.pth.tar").read_bytes()).hexdigest()
    assert provenance["original_args"] == json.loads(json.dumps(args))
    assert provenance["epoch"] == original["epoch"]
    weights = load_file(str(imported[name] / "model.safetensors"))
    for key, tensor in original["state_dict"].items():
        prefix = "backbone." if key.startswith(("embedding", "convs")) else "heads.cgcnn."
        assert torch.equal(weights[prefix + key], tensor), key


@pytest.mark.parametrize("name", MODELS)
def test_predict_reproduces_the_original_code_on_its_sample_cifs(imported: dict[str, Path], name: str,
                                                                 reference_predictions: dict, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(imported[name]), str(SAMPLE), "--out", str(out), "--batch-size", "4"]) == 0
    ours = read_predictions(out)
    expected = reference_predictions[name]
    assert list(ours) == [row[0] for row in csv.reader(open(SAMPLE / "id_prop.csv"))]  # every crystal, in file order
    for cif_id, value in expected.items():
        assert abs(ours[cif_id] - value) <= 1e-3, (name, cif_id, ours[cif_id], value)
    # in practice the two implementations agree to float32 round-off
    assert max(abs(ours[k] - v) for k, v in expected.items()) < 1e-4


def test_stored_reference_predictions_are_reproduced(reference_predictions: dict) -> None:
    with open(FIXTURE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 80 and {r["model"] for r in rows} == set(ALL_MODELS)
    assert len(MODELS) >= 5
    for r in (r for r in rows if r["model"] in MODELS):
        assert float(r["prediction"]) == pytest.approx(reference_predictions[r["model"]][r["id"]], abs=1e-6)


def test_checkpoint_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):  # would copy a file if the loader ran pickled code
            return shutil.copyfile, (str(FIXTURE), str(marker))

    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "args": Payload(), "normalizer": {"mean": 0.0, "std": 1.0}}, evil)
    with pytest.raises(CgcnnImportError, match="refused to unpickle") as err:
        read_checkpoint(evil)
    assert "shutil.copyfile" in str(err.value) and str(evil) in str(err.value)
    assert not marker.exists()


def test_not_a_checkpoint_and_missing_keys_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CgcnnImportError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(junk)
    partial = tmp_path / "partial.pth.tar"
    torch.save({"args": {"task": "regression"}}, partial)
    with pytest.raises(CgcnnImportError, match="no 'state_dict'"):
        read_checkpoint(partial)
    with pytest.raises(CgcnnImportError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pth.tar")


def synthetic_checkpoint(path: Path) -> dict:
    """A checkpoint in the released files' layout (reference parameter names, args, normaliser,
    epoch), with small random weights: atom_fea_len 8, n_conv 4, h_fea_len 16 (no shared data needed)."""
    from matforge.models.cgcnn import CGCNN, CGCNNHead

    torch.manual_seed(3)
    backbone, head = CGCNN(atom_fea_len=8, n_conv=4), CGCNNHead(in_dim=8, h_fea_len=16)
    state = {**backbone.state_dict(), **{k: v for k, v in head.state_dict().items() if k not in ("mean", "std")}}
    checkpoint = {"state_dict": state, "normalizer": {"mean": -1.5, "std": 0.75}, "epoch": 7,
                  "args": {"task": "regression", "atom_fea_len": 8, "n_conv": 4, "h_fea_len": 16, "n_h": 1,
                           "data_options": ["root", 0, "band_gap"]}}
    torch.save(checkpoint, path)
    return checkpoint


def test_state_dict_that_does_not_fit_the_hyperparameters_is_named(tmp_path: Path) -> None:
    original = synthetic_checkpoint(tmp_path / "original.pth.tar")
    fewer = tmp_path / "fewer.pth.tar"
    torch.save({**original, "args": {**original["args"], "n_conv": 3}}, fewer)
    with pytest.raises(CgcnnImportError, match=r"unexpected: .*backbone\.convs\.3\.fc_full\.weight"):
        convert_checkpoint(fewer)
    wider = tmp_path / "wider.pth.tar"
    torch.save({**original, "args": {**original["args"], "h_fea_len": 64}}, wider)
    with pytest.raises(CgcnnImportError, match=r"mis-shaped .*heads\.cgcnn\.conv_to_fc\.weight \(16, 8\) vs \(64, 8\)"):
        convert_checkpoint(wider)


def test_namespace_args_and_dataparallel_names_import_to_the_same_model(tmp_path: Path) -> None:
    original = synthetic_checkpoint(tmp_path / "original.pth.tar")
    variant = tmp_path / "variant.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in original["state_dict"].items()},
                "normalizer": original["normalizer"], "args": argparse.Namespace(**original["args"])}, variant)
    model, provenance = convert_checkpoint(variant)
    reference_model, _ = convert_checkpoint(tmp_path / "original.pth.tar")
    assert provenance["original_args"]["n_conv"] == 4
    for (k, a), (k2, b) in zip(model.state_dict().items(), reference_model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
