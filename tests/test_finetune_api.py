"""``matforge.finetune.finetune`` and ``matforge finetune`` end to end on small generated data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_data import write_property_set
from matforge.finetune.api import finetune
from matforge.finetune.errors import FinetuneError

TINY_CGCNN = {"atom_fea_len": 8, "n_conv": 2}
FAST = {"epochs": 4, "batch_size": 16, "progress": False, "tensorboard": False, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def props(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_property_set(tmp_path_factory.mktemp("ft") / "props", n=60)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_released_backbone_full_run_writes_everything(props: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = finetune("cgcnn-formation-energy", props, "vpa", out, units="Å³/atom", strategy="freeze:1", **FAST)
    for name in ("card.json", "model.safetensors", "metrics.json", "predictions.csv", "split.json", "history.csv",
                 "parity.png"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".out.partial-*"))
    written = json.loads((out / "metrics.json").read_text())
    assert written["test_mae"] == pytest.approx(m["test_mae"])
    for key in ("test_mae", "val_mae", "test_rmse", "test_r2", "train_size", "trainable_parameters",
                "total_parameters", "best_epoch", "wall_s"):
        assert key in m, key
    split = json.loads((out / "split.json").read_text())
    assert m["train_size"] == len(split["train"]) and m["test_size"] == len(split["test"])
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 60
    # freeze:1 trains the second and third convolutions and the head only
    assert m["trainable_parameters"] < m["total_parameters"]
    # predictions: the test ids with their targets, and MAE recomputed from them
    rows = _read_csv(out / "predictions.csv")
    assert [r["id"] for r in rows] == split["test"]
    err = np.mean([abs(float(r["prediction"]) - float(r["target"])) for r in rows])
    assert err == pytest.approx(m["test_mae"], rel=1e-9)
    card = json.loads((out / "card.json").read_text())
    prov = card["provenance"]
    assert prov["parent"]["kind"] == "released" and len(prov["parent"]["sha256"]) == 64
    assert prov["strategy"] == "freeze:1" and prov["dropped_heads"] == ["cgcnn"]
    assert len(prov["data"]["manifest_sha256"]) == 64 and prov["split"]["sizes"]["train"] == m["train_size"]
    # the regression normaliser is the training split's mean and (population) std
    from matforge.datasets.shard_dataset import open_dataset

    ds = open_dataset(props)
    values = {ds[i].id: ds[i].properties["vpa"] for i in range(len(ds))}
    train = np.array([values[i] for i in split["train"]])
    head = card["heads"]["properties"]
    assert head["mean"] == pytest.approx(train.mean(), rel=1e-6) and head["std"] == pytest.approx(train.std(), rel=1e-6)


def test_predict_and_load_use_the_result(props: Path, tmp_path: Path) -> None:
    from matforge.cli.main import main
    from matforge.models import load

    out = tmp_path / "model"
    finetune("none", props, "vpa", out, arch="cgcnn", hyperparameters=TINY_CGCNN, **FAST)
    model = load(out)
    assert model.card["provenance"]["parent"]["kind"] == "none"
    assert main(["predict", str(out), str(props), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = {r["id"]: float(r["prediction"]) for r in _read_csv(tmp_path / "p.csv")}
    tested = {r["id"]: float(r["prediction"]) for r in _read_csv(out / "predictions.csv")}
    assert len(predicted) == 60
    for record_id, value in tested.items():
        assert predicted[record_id] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_best_epoch_is_restored(props: Path, tmp_path: Path) -> None:
    m = finetune("none", props, "vpa", tmp_path / "o", arch="cgcnn", hyperparameters=TINY_CGCNN, lr=3e-2,
                 **{**FAST, "epochs": 12})
    history = _read_csv(tmp_path / "o" / "history.csv")
    maes = [float(r["val_mae"]) for r in history]
    assert m["best_epoch"] == int(np.argmin(maes)) + 1
    assert m["val_mae"] == pytest.approx(min(maes), rel=1e-5)


def test_early_stopping_stops_after_patience(props: Path) -> None:
    m = finetune("none", props, "vpa", None, arch="cgcnn", hyperparameters=TINY_CGCNN, lr=1e-9, patience=2,
                 **{**FAST, "epochs": 50})
    assert m["epochs_run"] <= m["best_epoch"] + 2 < 50


def test_graphs_are_built_once(props: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matforge.datasets import graphs

    calls = []
    original = graphs.GraphBuilder.parts

    def counting(self, record, index, extras=None):
        calls.append(record.id)
        return original(self, record, index, extras)

    monkeypatch.setattr(graphs.GraphBuilder, "parts", counting)
    finetune("none", props, "vpa", None, arch="cgcnn", hyperparameters=TINY_CGCNN, **{**FAST, "epochs": 5})
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 60


def test_seeded_runs_repeat_exactly(props: Path) -> None:
    a = finetune("none", props, "vpa", None, arch="cgcnn", hyperparameters=TINY_CGCNN, seed=3, **FAST)
    b = finetune("none", props, "vpa", None, arch="cgcnn", hyperparameters=TINY_CGCNN, seed=3, **FAST)
    assert a["test_mae"] == b["test_mae"] and a["best_epoch"] == b["best_epoch"]


def test_explicit_ids_and_train_size(props: Path, tmp_path: Path) -> None:
    ids = [f"r{i:03d}" for i in range(60)]
    split = {"train": ids[:40], "val": ids[40:50], "test": ids[50:]}
    m = finetune("none", props, "vpa", tmp_path / "o", arch="cgcnn", hyperparameters=TINY_CGCNN, split=split,
                 train_size=12, **FAST)
    written = json.loads((tmp_path / "o" / "split.json").read_text())
    assert m["train_size"] == 12 and set(written["train"]) < set(ids[:40])
    assert written["val"] == ids[40:50] and written["test"] == ids[50:]
    with pytest.raises(FinetuneError, match="'nope' is not a record"):
        finetune("none", props, "vpa", None, arch="cgcnn", split={**split, "test": ["nope"]}, **FAST)
    with pytest.raises(FinetuneError, match="in both the train and the test"):
        finetune("none", props, "vpa", None, arch="cgcnn", split={**split, "test": ids[:2]}, **FAST)


def test_composition_groups_stay_on_one_side(props: Path, tmp_path: Path) -> None:
    finetune("none", props, "vpa", tmp_path / "o", arch="cgcnn", hyperparameters=TINY_CGCNN,
             split="0.5,0.25,0.25", split_group="composition", **FAST)
    from matforge.datasets.shard_dataset import open_dataset

    ds = open_dataset(props)
    symbol = {ds[i].id: int(ds[i].numbers[0]) for i in range(len(ds))}
    split = json.loads((tmp_path / "o" / "split.json").read_text())
    sides = [{symbol[i] for i in split[s]} for s in ("train", "val", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])


def test_classification(props: Path, tmp_path: Path) -> None:
    m = finetune("cgcnn-formation-energy", props, "dense", tmp_path / "c", task="classification", **FAST)
    assert 0.0 <= m["test_roc_auc"] <= 1.0 and 0.0 <= m["test_accuracy"] <= 1.0
    rows = _read_csv(tmp_path / "c" / "predictions.csv")
    probs = np.array([float(r["prediction"]) for r in rows])
    assert ((probs >= 0) & (probs <= 1)).all()
    assert {float(r["target"]) for r in rows} <= {0.0, 1.0}
    # a property-head backbone (painn) classifies too, through one logit
    m = finetune("none", props, "dense", None, arch="painn", task="classification",
                 hyperparameters={"hidden": 8, "num_interactions": 1, "cutoff": 4.0}, **FAST)
    assert "test_roc_auc" in m


def test_extensive_target_sums_over_atoms(props: Path, tmp_path: Path) -> None:
    from matforge.models import load

    finetune("none", props, "vpa", tmp_path / "o", arch="painn", pooling="sum",
             hyperparameters={"hidden": 8, "num_interactions": 1, "cutoff": 4.0}, **FAST)
    head = load(tmp_path / "o").card["heads"]["properties"]
    assert head["kind"] == "property" and head["pooling"] == "sum"


def test_bad_input_is_one_clear_error_and_leaves_nothing(props: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        (dict(target="nothing"), "none of the .* records of the train split has the target 'nothing'"),
        (dict(target="const"), "target 'const' is constant"),
        (dict(target="vpa", task="classification"), "labels must be 0 or 1"),
        (dict(target="vpa", split="0.9,0.1,0.0"), "the test split is empty"),
        (dict(target="vpa", strategy="freeze:9"), "has only 4 interaction block"),
        (dict(target="vpa", strategy="sideways"), "is not one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FinetuneError, match=message):
            finetune("cgcnn-formation-energy", props, out=out, **kwargs, **FAST)
        assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_missing_targets_are_skipped_and_counted(props: Path) -> None:
    m = finetune("none", props, "half", None, arch="cgcnn", hyperparameters=TINY_CGCNN, **FAST)
    skipped = m["skipped"]
    assert sum(skipped.values()) == 30
    assert m["train_size"] + m["val_size"] + m["test_size"] == 30


def test_existing_out_needs_overwrite(props: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FinetuneError, match="pass --overwrite"):
        finetune("none", props, "vpa", out, arch="cgcnn", hyperparameters=TINY_CGCNN, **FAST)
    assert (out / "keep.txt").read_text() == "mine"
    finetune("none", props, "vpa", out, arch="cgcnn", hyperparameters=TINY_CGCNN, overwrite=True, **FAST)
    assert (out / "card.json").is_file() and not (out / "keep.txt").exists()


def test_newer_backbone_format_is_refused(props: Path, tmp_path: Path) -> None:
    from matforge.finetune.registry import released_path
    import shutil

    copy = tmp_path / "newer"
    shutil.copytree(released_path("cgcnn-formation-energy"), copy)
    card = json.loads((copy / "card.json").read_text())
    card["format_version"] = 99
    (copy / "card.json").write_text(json.dumps(card))
    from matforge.models.backbone_file import BackboneFileError

    with pytest.raises(BackboneFileError, match="newer than this"):
        finetune(str(copy), props, "vpa", None, **FAST)


def test_unseen_elements_refused_or_given_fresh_embeddings(tmp_path: Path) -> None:
    from matforge.models import load

    cu_ag = write_property_set(tmp_path / "cuag", n=24, elements=("Cu", "Ag"))
    with_ni = write_property_set(tmp_path / "ni", n=24, elements=("Cu", "Ni"))
    painn = {"hidden": 8, "num_interactions": 1, "cutoff": 4.0}
    finetune("none", cu_ag, "vpa", tmp_path / "parent", arch="painn", hyperparameters=painn, **FAST)
    assert load(tmp_path / "parent").elements == [29, 47]
    with pytest.raises(FinetuneError, match=r"element\(s\) Ni never seen by the backbone"):
        finetune(str(tmp_path / "parent"), with_ni, "vpa", None, **FAST)
    parent = load(tmp_path / "parent")
    m = finetune(str(tmp_path / "parent"), with_ni, "vpa", tmp_path / "child", allow_new_elements=True,
                 strategy="freeze:0", **FAST)
    assert m["new_elements"] == [28]
    child = load(tmp_path / "child")
    assert child.elements == [28, 29, 47]
    before, after = parent.backbone.embedding.weight, child.backbone.embedding.weight
    assert torch.equal(before[29], after[29]) and torch.equal(before[47], after[47])  # frozen, known rows
    assert not torch.equal(before[28], after[28])  # the new element's row was drawn afresh and trained


def test_cli_runs_and_prints_metrics(props: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from matforge.cli.main import main

    code = main(["finetune", "--backbone", "none", "--arch", "cgcnn", "--hyperparameter", "atom_fea_len=8",
                 "--hyperparameter", "n_conv=1", "--data", str(props), "--target", "vpa", "--out",
                 str(tmp_path / "o"), "--epochs", "2", "--no-progress", "--strategy", "lrdecay:0.5"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["strategy"] == "lrdecay:0.5" and printed["train_size"] > 0
    code = main(["finetune", "--backbone", "cgcnn-formation-energy", "--data", str(props), "--target", "nothing",
                 "--out", str(tmp_path / "x"), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "matforge: error:" in err and "nothing" in err and "Traceback" not in err


def test_source_is_converted_once_into_the_cache(tmp_path: Path) -> None:
    from finetune_data import property_records

    source = tmp_path / "set.json"  # MatDeepLearn's JSON layout, values as strings as its writer stores them
    source.write_text(json.dumps([
        {"structure_id": r.id, "positions": json.dumps(r.positions.tolist()), "cell": json.dumps(r.cell.tolist()),
         "atomic_numbers": json.dumps(r.numbers.tolist()), "y": json.dumps([r.properties["vpa"]])}
        for r in property_records(30)]))
    cache = tmp_path / "cache"
    kwargs = dict(arch="cgcnn", hyperparameters=TINY_CGCNN, cache_dir=cache, **FAST)
    a = finetune("none", source, "y", None, **kwargs)
    converted = list((cache / "datasets").iterdir())
    assert len(converted) == 1
    stamp = (converted[0] / "manifest.json").stat().st_mtime_ns
    b = finetune("none", source, "y", None, **kwargs)
    assert (converted[0] / "manifest.json").stat().st_mtime_ns == stamp and a["test_mae"] == b["test_mae"]


RAY_FREE = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray.") or name.startswith("matforge.pretrain"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
try:
    import ray
except ImportError:
    pass
else:
    raise SystemExit("ray is still importable")
from matforge.cli.main import main
code = main(["finetune", "--backbone", "cgcnn-formation-energy", "--data", sys.argv[1], "--target", "vpa",
             "--out", sys.argv[2], "--epochs", "2", "--no-progress", "--strategy", "probe"])
assert code == 0, code
leaked = [m for m in sys.modules if m == "ray" or m.startswith("ray.") or m.startswith("matforge.pretrain")]
assert not leaked, leaked
print("RAY-FREE-OK")
"""


def test_finetune_runs_where_ray_cannot_be_imported(props: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", RAY_FREE, str(props), str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RAY-FREE-OK" in result.stdout
    assert (tmp_path / "o" / "card.json").is_file()
