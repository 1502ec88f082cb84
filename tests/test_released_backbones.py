"""Released backbones shipped in ``finetune/backbones``: found by scanning, loadable, described,
packaged, listed by ``matforge backbones``, and still the original CGCNN models.

Predictions are checked against the original code's outputs stored in
``tests/fixtures/cgcnn_reference/predictions.csv`` on the three fixture CIFs (no shared data needed);
the re-import check reads the released checkpoints from the shared data folder (``MATFORGE_SHARED_DATA``,
default ``../shared/data`` beside the repository) or, where it is absent, from ``tests/fixtures/cgcnn_release``.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch

from matforge.cli.main import main
from matforge.finetune import registry
from matforge.finetune.registry import describe, is_released, list_backbones, released_names, released_path
from matforge.models import load
from matforge.models.backbone_file import BackboneFileError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MATFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))
RELEASED_CKPTS = SHARED / "cgcnn" / "pre-trained" if (SHARED / "cgcnn" / "pre-trained").is_dir() else \
    Path(__file__).parent / "fixtures" / "cgcnn_release" / "pre-trained"  # the four shipped ones are there too
CGCNN_FOLDER = Path(__file__).parent / "fixtures" / "cgcnn"  # KCl 1000050, C 9000046, CsCl 9009743
REFERENCE = Path(__file__).parent / "fixtures" / "cgcnn_reference" / "predictions.csv"

# released name -> (original checkpoint stem, target, units)
CGCNN = {
    "cgcnn-formation-energy": ("formation-energy-per-atom", "formation_energy_per_atom", "eV/atom"),
    "cgcnn-band-gap": ("band-gap", "band_gap", "eV"),
    "cgcnn-bulk-moduli": ("bulk-moduli", "bulk_moduli", "log10(GPa)"),
    "cgcnn-shear-moduli": ("shear-moduli", "shear_moduli", "log10(GPa)"),
}
LICENCE = "MIT (github.com/txie-93/cgcnn, Copyright (c) 2018 Tian Xie)"
FIELDS = {"name", "architecture", "parameters", "elements", "target", "units", "trained_on", "licence", "path"}


def reference_predictions(model: str) -> dict[str, float]:
    """{id: prediction} of the original code for ``model`` on the fixture CIFs."""
    ids = {row[0] for row in csv.reader(open(CGCNN_FOLDER / "id_prop.csv"))}
    with open(REFERENCE, newline="") as f:
        return {r["id"]: float(r["prediction"]) for r in csv.DictReader(f) if r["model"] == model and r["id"] in ids}


def test_the_four_cgcnn_backbones_are_released() -> None:
    names = released_names()
    assert set(CGCNN) <= set(names) and names == sorted(names)
    assert all(is_released(name) for name in CGCNN)
    assert not is_released("nope") and not is_released("README.md")


@pytest.mark.parametrize("name", sorted(CGCNN))
def test_every_released_backbone_loads_and_is_described(name: str) -> None:
    path = released_path(name)
    model = load(path)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    info = describe(name)
    assert set(info) == FIELDS
    _, target, units = CGCNN[name]
    assert (info["name"], info["architecture"], info["target"], info["units"]) == (name, "cgcnn", target, units)
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) > 50_000
    assert info["elements"] == "all (CGCNN element features)"
    assert info["licence"] == LICENCE
    assert "Materials Project" in info["trained_on"] and units in info["trained_on"]
    assert Path(info["path"]) == path
    assert describe(path) == info  # by path as by name
    provenance = model.card["provenance"]
    assert provenance["name"] == name and provenance["source_file"] == f"{CGCNN[name][0]}.pth.tar"
    assert "Xie" in provenance["released_by"]
    # small files: float32 weights of a ~100k-parameter model
    assert (path / "model.safetensors").stat().st_size < 600_000


@pytest.mark.parametrize("name", sorted(CGCNN))
def test_released_backbones_reproduce_the_original_predictions(name: str, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert main(["predict", str(released_path(name)), str(CGCNN_FOLDER), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        ours = {r["id"]: float(r["prediction"]) for r in csv.DictReader(f)}
    expected = reference_predictions(CGCNN[name][0])
    assert len(expected) == 3 and set(ours) == set(expected)
    for cif_id, value in expected.items():
        # 1e-4 relative; 1e-6 absolute for the formation energy of carbon (0.005 eV/atom), which is
        # mean + std * output with |mean| ~ 1.7 in float32
        assert ours[cif_id] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, cif_id)


def test_unknown_name_is_refused_naming_the_known_ones() -> None:
    for call in (released_path, describe):
        with pytest.raises(BackboneFileError) as err:
            call("nope")
        message = str(err.value)
        assert "'nope'" in message and "\n" not in message
        assert all(name in message for name in released_names())


def test_backbones_are_discovered_by_scanning_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(released_path("cgcnn-band-gap"), tmp_path / "my-backbone")
    (tmp_path / "not-a-backbone").mkdir()
    (tmp_path / "notes.md").write_text("a file, not a backbone\n")
    monkeypatch.setattr(registry, "RELEASED_DIR", tmp_path)
    assert released_names() == ["my-backbone"]
    assert released_path("my-backbone") == tmp_path / "my-backbone"
    assert [b["path"] for b in list_backbones()] == [str(tmp_path / "my-backbone")]


def test_list_backbones_is_sorted_and_complete() -> None:
    rows = list_backbones()
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    assert set(CGCNN) <= {r["name"] for r in rows}


def test_backbones_command_lists_them(capsys: pytest.CaptureFixture) -> None:
    assert main(["backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(CGCNN) <= {r["name"] for r in rows}
    for r in rows:
        assert set(r) == FIELDS and Path(r["path"]).is_dir()
    assert main(["backbones"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "architecture", "parameters"]
    for name in CGCNN:
        line = next(line for line in table if line.startswith(name + " "))
        assert "96,641" in line and "MIT" in line and "Materials Project" in line


def test_backbone_files_are_package_data() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
        import tomli as tomllib
    package = resources.files("matforge.finetune") / "backbones"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["matforge.finetune"]
    for name in CGCNN:
        for file in ("card.json", "model.safetensors"):
            assert (package / name / file).is_file(), (name, file)
            assert any(fnmatch.fnmatch(f"backbones/{name}/{file}", p) for p in patterns), (name, file, patterns)
    # everything a backbone directory holds ships in the wheel
    for directory in registry.RELEASED_DIR.iterdir():
        for file in directory.iterdir() if directory.is_dir() else []:
            assert any(fnmatch.fnmatch(f"backbones/{directory.name}/{file.name}", p) for p in patterns), file


@pytest.mark.parametrize("name", sorted(CGCNN))
def test_shipped_weights_equal_a_fresh_import(name: str) -> None:
    from safetensors.torch import load_file

    from matforge.models.cgcnn_import import convert_checkpoint

    fresh, provenance = convert_checkpoint(RELEASED_CKPTS / f"{CGCNN[name][0]}.pth.tar")
    shipped = load_file(str(released_path(name) / "model.safetensors"))
    expected = fresh.state_dict()
    assert sorted(shipped) == sorted(expected)
    for key, tensor in expected.items():
        assert shipped[key].dtype == tensor.dtype and torch.equal(shipped[key], tensor), key
    card = json.loads((released_path(name) / "card.json").read_text())
    assert card["provenance"]["source_sha256"] == provenance["source_sha256"]
